"""Adaptive-attack wrappers around a model's logits function, usable with every attack, with
`run_autoattack` and with `mixacm_jax.evaluate`:

- `eot(logits_fn, n)`: expectation over transformation (Athalye et al. 2018) for a randomised
  model `logits_fn(x, rng=key)`: the logits (and so every gradient and the final decision) are
  the mean over `n` draws of the model's randomness.
- `bpda(forward, backward)`: backward-pass differentiable approximation (Athalye et al. 2018)
  for a non-differentiable or gradient-masking input transform: `forward`'s values with
  `backward`'s gradient (the identity by default: the straight-through estimator).
"""
from typing import Callable, Optional

import jax
import jax.numpy as jnp


def eot(logits_fn: Callable, n: int, key: Optional[jax.Array] = None) -> Callable:
  """f(x, rng=None) = mean over n draws of logits_fn(x, rng=draw). Attacks that pass an rng
  (AutoAttack's `rand` version) get fresh draws each call; others get the draws of `key`."""
  if n < 1:
    raise ValueError(f"eot needs n >= 1 draws, got {n}")
  base = jax.random.PRNGKey(0) if key is None else key

  def averaged(x, rng=None):
    keys = jax.random.split(base if rng is None else rng, n)
    return jnp.mean(jax.vmap(lambda k: logits_fn(x, rng=k))(keys), axis=0)
  return averaged


def bpda(forward: Callable, backward: Callable = lambda x: x) -> Callable:
  """t(x) with forward(x)'s value and the vector-Jacobian product of backward at x."""

  @jax.custom_vjp
  def transform(x):
    return forward(x)

  def fwd(x):
    return forward(x), x

  def bwd(x, cotangent):
    return jax.vjp(backward, x)[1](cotangent)

  transform.defvjp(fwd, bwd)
  return transform
