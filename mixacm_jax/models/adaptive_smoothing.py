"""Adaptive smoothing (Bai et al. 2023, RobustBench's `CompositeModel`, the Bai2023Improving
entries): an accurate and a robust classifier mixed in probability space with a weight that a
small mixing network computes per input from both members' first two stages:

    out = log((1 - a) softmax(s_acc f_acc(x')) + a softmax(s_rob f_rob(x)))
    a = alpha_bias + alpha_scale * sigmoid(gamma_bias + gamma_scale * BN(m(stages)))

x' is x resized to `accurate_side` (BiT's 128x128). The whole output is differentiable, the
mixing network included, as RobustBench's is. Evaluation only: the members and the mixing
network are frozen (RobustBench's file holds them trained).
"""
from typing import Any, Dict, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from mixacm_jax.models.bit_resnet import resize_bilinear
from mixacm_jax.models.layers import ModelBase, batch_norm, conv, dense, mixing_dtype


def call_with_stages(member: nn.Module, x, train: bool, stages: Sequence[int]
                     ) -> Tuple[jnp.ndarray, Tuple[jnp.ndarray, ...]]:
  """(logits, the outputs of `stages`) of a member whose blocks are named `block{stage}_...`
  (the ResNets here): a stage's output is its last block's, as the member sows it."""
  outputs: Dict[int, jnp.ndarray] = {}

  def record(call, args, kwargs, context):
    out = call(*args, **kwargs)
    module = context.module
    if (context.method_name == "__call__" and module.path[:-1] == member.path
        and module.name.startswith("block")):
      outputs[int(module.name[5:].split("_")[0])] = out  # the last block of a stage wins
    return out

  with nn.intercept_methods(record):
    logits = member(x, train)
  missing = [s for s in stages if s not in outputs]
  if missing:
    raise ValueError(f"{type(member).__name__} has no blocks named block{missing[0]}_...: the "
                     "mixing network reads stages of the ResNets only")
  return logits, tuple(outputs[s] for s in stages)


class PreActBlock(nn.Module):
  """The mixing network's block: relu(bn1(x)) feeds both the convolutions and a 1x1 strided
  shortcut; without a shortcut convolution the sum takes relu(bn1(x)) itself."""
  planes: int
  stride: int = 1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    out = nn.relu(batch_norm(train, dtype=self.dtype, name="bn1")(x))
    shortcut = out
    if self.stride != 1 or x.shape[-1] != self.planes:
      shortcut = conv(self.planes, 1, self.stride, dtype=self.dtype, name="shortcut")(out)
    out = conv(self.planes, 3, self.stride, dtype=self.dtype, name="conv1")(out)
    out = nn.relu(batch_norm(train, dtype=self.dtype, name="bn2")(out))
    return shortcut + conv(self.planes, 3, dtype=self.dtype, name="conv2")(out)


class MixingNet(nn.Module):
  """Bai et al.'s MixingNetV4: two strided pre-activation blocks per width, the second
  stages (through a 1x1 convolution) added after the first width, a global average pool, a
  Linear to one logit and a BatchNorm without affine parameters."""
  widths: Sequence[int] = (512, 768, 1024)
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, first: Sequence[jnp.ndarray], second: Sequence[jnp.ndarray],
               train: bool = False):
    x, y = jnp.concatenate(first, -1), jnp.concatenate(second, -1)
    for i, width in enumerate(self.widths):
      for j in range(2):
        x = PreActBlock(width, 2 if j == 0 else 1, self.dtype, name=f"layer{i}_{j}")(x, train)
      if i == 0:
        x = x + conv(self.widths[0], 1, dtype=self.dtype, name="conv1x1")(y)
    gamma = dense(1, self.dtype, "linear", use_bias=False)(jnp.mean(x, axis=(1, 2)))
    wide = mixing_dtype(self.dtype)
    return nn.BatchNorm(use_running_average=not train, momentum=0.99, epsilon=1e-5,
                        use_scale=False, use_bias=False, dtype=wide,
                        name="bn")(gamma.astype(wide))[:, 0]


class AdaptiveSmoothing(ModelBase):
  accurate: Any = None  # the accurate member (BiT), on inputs resized to accurate_side
  robust: Any = None  # the robust member (a DM WideResNet)
  mixing: Any = None  # a MixingNet
  accurate_side: int = 128
  gamma_scale: float = 1.0
  gamma_bias: float = 0.0
  alpha_scale: float = 1.0
  alpha_bias: float = 0.0
  accurate_scale: float = 1.0
  robust_scale: float = 1.0

  @nn.compact
  def __call__(self, x, train: bool = False):
    if self.accurate is None or self.robust is None or self.mixing is None:
      raise ValueError("AdaptiveSmoothing is built from its members and mixing network (a "
                       "RobustBench entry, by name)")
    if train:
      raise ValueError("AdaptiveSmoothing is frozen (evaluation and distillation only)")
    x = self.prepare(x)
    resized = resize_bilinear(x, self.accurate_side) if self.accurate_side else x
    acc, (acc1, acc2) = call_with_stages(self.accurate, resized, False, (1, 2))
    rob, (rob1, rob2) = call_with_stages(self.robust, x, False, (1, 2))
    gamma = self.mixing((acc1, rob1), (acc2, rob2)) * self.gamma_scale + self.gamma_bias
    alpha = (jax.nn.sigmoid(gamma) * self.alpha_scale + self.alpha_bias)[:, None]
    wide = mixing_dtype(self.dtype)
    acc_part = jnp.log1p(-alpha) + jax.nn.log_softmax(acc.astype(wide) * self.accurate_scale, -1)
    rob_part = jnp.log(alpha) + jax.nn.log_softmax(rob.astype(wide) * self.robust_scale, -1)
    return jnp.logaddexp(acc_part, rob_part)
