"""RobustArch's ImageNet RaResNet (Peng et al. 2023, "Robust Principles"), as RobustBench's
`robustarch_wide_resnet.py` defines it (`ConfigurableModel`, `get_model('ra_wrn101_2')`):
a conv-bn-relu stem, then stages of post-activation bottleneck blocks x + F(x) whose branch is
1x1, grouped kxk, squeeze-and-excitation, 1x1, each conv followed by its norm, with the
activation after the sum."""
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from mixacm_jax.models.layers import ConvBNModule, ModelBase, activation, conv_kernel_init, sow


def torch_conv(features: int, kernel: int, stride: int = 1, *, groups: int = 1,
               dilation: int = 1, use_bias: bool = False, dtype: Any = jnp.float32,
               name: Optional[str] = None) -> nn.Conv:
  """torchvision's Conv2dNormActivation conv: padding (k - 1) // 2 * dilation on every side
  (not k // 2: a patchify stem of even k pads (k - 2) / 2)."""
  pad = (kernel - 1) // 2 * dilation
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                 padding=((pad, pad), (pad, pad)), kernel_dilation=(dilation, dilation),
                 feature_group_count=groups, use_bias=use_bias, kernel_init=conv_kernel_init,
                 dtype=dtype, param_dtype=jnp.float32, name=name)


class SqueezeExcitation(nn.Module):
  """torchvision's SqueezeExcitation: x * sigmoid(fc2(act(fc1(spatial mean of x))))."""
  squeeze: int
  activation: str = "relu"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    s = jnp.mean(x, axis=(1, 2), keepdims=True)
    s = activation(self.activation)(torch_conv(self.squeeze, 1, use_bias=True, dtype=self.dtype,
                                               name="fc1")(s))
    s = torch_conv(x.shape[-1], 1, use_bias=True, dtype=self.dtype, name="fc2")(s)
    return x * jax.nn.sigmoid(s)


class RaBottleneckBlock(ConvBNModule):
  """RobustArch's BottleneckBlock with Conv2dNormActivation: act(proj(x) + F(x)), F = 1x1
  conv-[bn]-act, kxk grouped conv (the stride)-bn-act, SE, 1x1 conv-bn; proj = 1x1 conv (the
  stride)-bn when the width or size changes, else the identity."""
  width: int = 512
  stride: int = 1
  kernel: int = 3
  dilation: int = 1
  inner_width: int = 128  # round(width * bottleneck multiplier)
  groups: int = 1
  se_width: int = 0  # SE squeeze width (0: no SE)
  se_activation: str = "relu"
  norms: Sequence[bool] = (False, True, True)  # a BatchNorm after the 1x1, kxk, 1x1 convs

  def conv_norm(self, x, features, kernel, stride, part, train, groups=1, dilation=1):
    x = torch_conv(features, kernel, stride, groups=groups, dilation=dilation,
                   dtype=self.dtype, name=f"conv_{part}")(x)
    return self.bn(train, f"bn_{part}")(x) if self.norms["abc".index(part)] else x

  @nn.compact
  def __call__(self, x, train: bool):
    out = self.act(self.conv_norm(x, self.inner_width, 1, 1, "a", train))
    out = self.act(self.conv_norm(out, self.inner_width, self.kernel, self.stride, "b", train,
                                  self.groups, self.dilation))
    if self.se_width:
      out = SqueezeExcitation(self.se_width, self.se_activation, self.dtype, name="se")(out)
    out = self.conv_norm(out, self.width, 1, 1, "c", train)
    if self.stride != 1 or x.shape[-1] != self.width:
      x = self.bn(train, "proj_bn")(torch_conv(self.width, 1, self.stride, dtype=self.dtype,
                                               name="proj_conv")(x))
    return self.act(x + out)


class RaResNet(ModelBase):
  """Sows `stem`, `stage{i}` (each stage's output, after its last block's activation) and
  `features`. Defaults: ra_wrn101_2 (RobustBench's Peng2023Robust, ImageNet). The stem is
  RobustArch's Stem: kxk stride-2 conv-bn-relu (ReLU whatever `activation` is), then a 3x3
  max-pool of stride factor / 2 when `stem_downsample_factor` > 2; or a patchify conv of
  `stem_patch_size` (no max-pool). The SE squeeze width is `se_ratio` times each block's
  input width (not its inner width), as the reference computes it."""
  activation: str = "swish"
  stem_width: int = 96
  stem_kernel: int = 7
  stem_downsample_factor: int = 2
  stem_patch_size: int = 0  # 0: no patchify stem
  stage_widths: Sequence[int] = (512, 1024, 2016, 4032)
  depths: Sequence[int] = (7, 11, 18, 1)
  strides: Sequence[int] = (2, 2, 2, 2)
  # Each stage's kxk conv has round(width * multiplier) / group width groups.
  group_widths: Sequence[int] = (64, 128, 252, 504)
  bottleneck_multipliers: Sequence[float] = (0.25, 0.25, 0.25, 0.25)
  kernel: int = 3
  dilation: int = 1
  branch_norms: Sequence[bool] = (False, True, True)  # BatchNorm after each branch conv
  se_ratio: float = 0.25  # 0: no squeeze-and-excitation
  se_activation: str = "relu"

  def stem(self, x, train):
    patch = self.stem_patch_size
    x = torch_conv(self.stem_width, patch or self.stem_kernel, patch or 2, dtype=self.dtype,
                   name="stem_conv")(x)
    x = nn.relu(self.bn(train, "stem_bn")(x))
    pool = self.stem_downsample_factor // 2
    if not patch and pool > 1:
      x = nn.max_pool(x, (3, 3), strides=(pool, pool), padding=((1, 1), (1, 1)))
    return x

  @nn.compact
  def __call__(self, x, train: bool = False):
    per_stage = (self.depths, self.strides, self.group_widths, self.bottleneck_multipliers)
    if any(len(f) != len(self.stage_widths) for f in per_stage):
      raise ValueError("RaResNet: stage_widths, depths, strides, group_widths and "
                       "bottleneck_multipliers need one entry per stage")
    if self.stem_downsample_factor % 2 or self.stem_downsample_factor < 2:
      raise ValueError(f"RaResNet: stem_downsample_factor {self.stem_downsample_factor} is "
                       "not an even number >= 2")
    x = self.stem(self.prepare(x), train)
    sow(self, "stem", x)
    for i, (width, depth, stride, group_width, mult) in enumerate(
        zip(self.stage_widths, *per_stage)):
      inner = int(round(width * mult))
      groups = inner // group_width
      if groups < 1 or inner % groups:
        raise ValueError(f"RaResNet stage {i + 1}: inner width {inner} does not split into "
                         f"groups of {group_width}")
      for j in range(depth):
        x = RaBottleneckBlock(
            width=width, stride=stride if j == 0 else 1, kernel=self.kernel,
            dilation=self.dilation, inner_width=inner, groups=groups,
            se_width=int(round(self.se_ratio * x.shape[-1])) if self.se_ratio else 0,
            se_activation=self.se_activation, norms=tuple(self.branch_norms),
            name=f"stage{i + 1}_block{j}", **self.block_kwargs())(x, train)
      sow(self, f"stage{i + 1}", x)
    return self.head(x)
