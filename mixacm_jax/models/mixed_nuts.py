"""MixedNUTS (Bai et al. 2024, RobustBench's `NonLinMixedClassifier`): an accurate classifier
and a robust one, mixed in probability space after a nonlinear map of the robust logits.

    out = log((1 - alpha) * onehot(argmax f_acc(x)) + alpha * softmax(g(LN_k(f_rob(x)))))

LN_k standardises the logits by the mean and (unbiased) variance of the k largest;
g(z) = scale * sign(h) |h|^power with h = GELU(z + clamp_bias). The accurate member's hard max
passes no gradient (RobustBench's smooth stand-in for it under autograd, a softmax at
temperature 1e-6, has none either off ties). The output is log-probabilities, as RobustBench's;
it is computed in log space, so classes far below the top stay finite in float32.

Each member normalises its own input; a member's stages are sown under its name.
"""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mixacm_jax.models.layers import ModelBase, mixing_dtype


def standardize_top_k(logits: jnp.ndarray, k: int) -> jnp.ndarray:
  """(logits - mean) / sqrt(var + 1e-8), mean and unbiased var over the k largest logits."""
  top = jax.lax.top_k(logits, min(k, logits.shape[-1]))[0]
  mean = jnp.mean(top, axis=-1, keepdims=True)
  var = jnp.var(top, axis=-1, keepdims=True, ddof=1)
  return (logits - mean) / jnp.sqrt(var + 1e-8)


def clamp_power_scale(z: jnp.ndarray, scale: float, power: float, clamp_bias: float):
  """MixedNUTS's map of the robust member's standardised logits."""
  h = jax.nn.gelu(z + clamp_bias, approximate=False)
  return scale * jnp.sign(h) * jnp.abs(h) ** power


class MixedNUTS(ModelBase):
  accurate: Any = None  # the accurate (standard) member: any registered architecture
  robust: Any = None
  alpha: float = 1.0  # the robust member's weight
  scale: float = 1.0
  power: float = 1.0
  clamp_bias: float = 0.0
  ln_k: int = 250

  @nn.compact
  def __call__(self, x, train: bool = False):
    if self.accurate is None or self.robust is None:
      raise ValueError("MixedNUTS is built from its two members (a RobustBench entry, by name)")
    if train:
      raise ValueError("MixedNUTS is frozen (evaluation and distillation only)")
    x = self.prepare(x)
    wide = mixing_dtype(self.dtype)
    acc = self.accurate(x, False).astype(wide)
    rob = self.robust(x, False).astype(wide)
    mapped = clamp_power_scale(standardize_top_k(rob, self.ln_k), self.scale, self.power,
                               self.clamp_bias)
    robust_part = jnp.log(self.alpha) + jax.nn.log_softmax(mapped, axis=-1)
    top = jax.nn.one_hot(jnp.argmax(jax.lax.stop_gradient(acc), -1), acc.shape[-1], dtype=bool)
    return jnp.where(top, jnp.logaddexp(jnp.log1p(-self.alpha), robust_part), robust_part)
