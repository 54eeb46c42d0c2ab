"""BiT's ResNetV2 (Kolesnikov et al. 2020) as RobustBench's `bit_rn_v2.py` builds it, the
accurate member of Bai et al. 2024's MixedNUTS (BiT-M-R152x2): pre-activation bottleneck
blocks of weight-standardised convolutions and GroupNorm(32), no batch statistics.

The reference's quirks, kept: its forward resizes every input to 128x128 (bilinear, PyTorch's
half-pixel centres, no antialiasing) before anything else; the root is a 7x7 stride-2
convolution, a zero padding of 1 and a 3x3 stride-2 max-pool without padding (zeros, not
-inf, at the border of a map that has no ReLU before it); the stride sits on each first
unit's 3x3 convolution, and the projection shortcut takes the pre-activated input. Its
normalisation, (x - mean) / (std + 1e-8) with mean and std saved in the state_dict, is
ModelBase's mean/std (the port takes them out of the file; 1e-8 is below float32's
resolution at its std of 0.5). The classifier is a 1x1 convolution of the pooled features.

Sows `stem` (after the max-pool), `stage{i}` (after each block group, NHWC) and `features`
(the pooled vector the classifier reads).
"""
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from mixacm_jax.models.layers import ModelBase, conv_kernel_init, sow

STD_CONV_EPS = 1e-10  # StdConv2d's: w - mean over sqrt(biased variance + 1e-10)
GROUP_NORM_EPS = 1e-5  # torch's nn.GroupNorm default
GROUPS = 32


class StdConv(nn.Module):
  """BiT's StdConv2d, bias-free: each output channel's kernel standardised (minus its mean,
  over the square root of its biased variance plus 1e-10) in float32 on every call, so that
  training updates the raw kernel as PyTorch's does."""
  features: int
  kernel: int
  stride: int = 1
  padding: int = 0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    k = self.param("kernel", conv_kernel_init,
                   (self.kernel, self.kernel, x.shape[-1], self.features), jnp.float32)
    mean = jnp.mean(k, axis=(0, 1, 2), keepdims=True)
    var = jnp.mean(jnp.square(k - mean), axis=(0, 1, 2), keepdims=True)
    k = (k - mean) / jnp.sqrt(var + STD_CONV_EPS)
    pad = ((self.padding, self.padding),) * 2
    return jax.lax.conv_general_dilated(
        x, k.astype(self.dtype), (self.stride, self.stride), pad,
        dimension_numbers=("NHWC", "HWIO", "NHWC"))


def group_norm(dtype: Any, name: str) -> nn.GroupNorm:
  """torch's GroupNorm(32, C): eps 1e-5, the variance as the mean squared deviation."""
  return nn.GroupNorm(num_groups=GROUPS, epsilon=GROUP_NORM_EPS, dtype=dtype,
                      param_dtype=jnp.float32, use_fast_variance=False, name=name)


class PreActBottleneck(nn.Module):
  """relu(gn1(x)) feeds the 1x1 conv1 and, when the shape changes, the 1x1 projection
  shortcut; then gn2-relu-3x3 conv2 (the stride), gn3-relu-1x1 conv3, plus the shortcut."""
  cout: int
  cmid: int
  stride: int = 1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    out = nn.relu(group_norm(self.dtype, "gn1")(x))
    residual = x
    if self.stride != 1 or x.shape[-1] != self.cout:
      residual = StdConv(self.cout, 1, self.stride, dtype=self.dtype, name="downsample")(out)
    out = StdConv(self.cmid, 1, dtype=self.dtype, name="conv1")(out)
    out = nn.relu(group_norm(self.dtype, "gn2")(out))
    out = StdConv(self.cmid, 3, self.stride, 1, dtype=self.dtype, name="conv2")(out)
    out = nn.relu(group_norm(self.dtype, "gn3")(out))
    out = StdConv(self.cout, 1, dtype=self.dtype, name="conv3")(out)
    return out + residual


def resize_bilinear(x: jnp.ndarray, side: int) -> jnp.ndarray:
  """NHWC images to side x side as torch's F.interpolate(..., mode='bilinear') (half-pixel
  centres, no antialiasing)."""
  return jax.image.resize(x, (x.shape[0], side, side, x.shape[3]), "bilinear", antialias=False)


class BiTResNetV2(ModelBase):
  """ResNetV2 of `block_units` per stage at `width_factor` times ResNet's widths (64, 256,
  512, 1024, 2048 at 1); BiT-M-R152x2 is (3, 8, 36, 3) at 2."""
  block_units: Sequence[int] = (3, 8, 36, 3)
  width_factor: int = 2
  input_side: int = 128  # the reference resizes every input to 128x128 first; 0: keep it

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train  # GroupNorm: no batch statistics, no dropout
    if self.cosine_head:
      raise ValueError("BiTResNetV2 has a 1x1-convolution classifier, no cosine head")
    x = self.prepare(x)  # mean/std commute with the resize (its weights sum to 1)
    if self.input_side:
      x = resize_bilinear(x, self.input_side)
    wf = self.width_factor
    x = StdConv(64 * wf, 7, 2, 3, dtype=self.dtype, name="root_conv")(x)
    x = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))  # nn.ConstantPad2d(1, 0)
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding="VALID")
    sow(self, "stem", x)
    for i, units in enumerate(self.block_units):
      cmid = 64 * wf * 2**i
      for j in range(units):
        x = PreActBottleneck(4 * cmid, cmid, stride=2 if (i > 0 and j == 0) else 1,
                             dtype=self.dtype, name=f"block{i + 1}_unit{j + 1:02d}")(x)
      sow(self, f"stage{i + 1}", x)
    features = jnp.mean(nn.relu(group_norm(self.dtype, "head_gn")(x)), axis=(1, 2))
    sow(self, "features", features)
    logits = nn.Conv(self.num_classes, (1, 1), kernel_init=conv_kernel_init, dtype=self.dtype,
                     param_dtype=jnp.float32, name="head_conv")(features[:, None, None, :])
    return logits[:, 0, 0, :].astype(jnp.float32)
