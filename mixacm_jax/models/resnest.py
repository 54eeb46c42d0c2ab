"""ResNeSt (Zhang et al. 2022, "ResNeSt: Split-Attention Networks") as RobustBench's
`resnest.py` builds it for CIFAR (Sehwag et al. 2022's ResNeSt-152 teacher): ResNet
bottlenecks whose 3x3 convolution is a split-attention convolution, no stem max-pool.

The reference's choices, kept: the deep stem is three 3x3 stride-1 convolutions (the last to
twice its width) and the plain one a 3x3 convolution with a padding of 3; with `avd` the
stride of a block's 3x3 sits on a 3x3 average pool (zeros counted) after it (before it with
`avd_first`); with `avg_down` a shortcut pools (stride x stride, ceil mode, zeros not counted)
before its 1x1 convolution. A split-attention convolution of radix r makes r splits by one
grouped convolution, pools their sum, and weighs each split by a softmax over the r splits
(a sigmoid when r = 1) of two 1x1 convolutions of that summary.

Sows `stem` (after the stem's norm and activation), `stage{i}` (after each block group, NHWC)
and `features` (the pooled vector the classifier reads).
"""
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from mixacm_jax.models.layers import ConvBNModule, ModelBase, conv, conv_kernel_init, sow

REDUCTION = 4  # the attention's inner width is max(input width * radix / 4, 32)
MIN_INNER = 32
STAGE_PLANES = (64, 128, 256, 512)  # a bottleneck's output is 4x its planes
EXPANSION = 4


class SplitAttentionConv(ConvBNModule):
  """RobustBench's SplAtConv2d with a BatchNorm: `features` output channels from `radix`
  splits of one 3x3 convolution in `groups` * `radix` groups."""
  features: int = 64
  stride: int = 1
  radix: int = 2
  groups: int = 1

  @nn.compact
  def __call__(self, x, train: bool):
    batch, r, c = x.shape[0], self.radix, self.features
    inner = max(x.shape[-1] * r // REDUCTION, MIN_INNER)
    x = self.conv(c * r, 3, self.stride, name="conv", groups=self.groups * r)(x)
    x = self.act(self.bn(train, "bn0")(x))
    splits = jnp.split(x, r, axis=-1) if r > 1 else [x]
    gap = jnp.mean(sum(splits), axis=(1, 2), keepdims=True)
    gap = self.act(self.bn(train, "bn1")(
        self.conv(inner, 1, name="fc1", use_bias=True, groups=self.groups)(gap)))
    atten = self.conv(c * r, 1, name="fc2", use_bias=True, groups=self.groups)(gap)
    if r == 1:
      return jax.nn.sigmoid(atten) * x
    # fc2's channels are (group, split, channel): softmax over the splits, then split-major.
    atten = jax.nn.softmax(atten.reshape(batch, self.groups, r, -1), axis=2)
    atten = jnp.swapaxes(atten, 1, 2).reshape(batch, 1, 1, r, c)
    return sum(atten[..., i, :] * s for i, s in enumerate(splits))


def avg_pool_ceil(x: jnp.ndarray, stride: int) -> jnp.ndarray:
  """torch's AvgPool2d(stride, stride, ceil_mode=True, count_include_pad=False): a last
  partial window averages only the pixels it holds."""
  pads = [(0, -size % stride) for size in x.shape[1:3]]
  return nn.avg_pool(x, (stride, stride), strides=(stride, stride), padding=pads,
                     count_include_pad=False)


class ResNeStBottleneck(ConvBNModule):
  """act(shortcut(x) + bn3(conv3(split-attention conv2(act(bn1(conv1(x))))))), the stride on
  conv2 or, with `avd`, on an average pool beside it."""
  planes: int = 64
  stride: int = 1
  radix: int = 2
  groups: int = 1
  bottleneck_width: int = 64
  avd: bool = False
  avd_first: bool = False
  avg_down: bool = False

  @nn.compact
  def __call__(self, x, train: bool):
    width = int(self.planes * (self.bottleneck_width / 64.0)) * self.groups
    pool = self.avd and self.stride > 1
    avd = lambda y: nn.avg_pool(y, (3, 3), strides=(self.stride,) * 2, padding=((1, 1),) * 2)
    out = self.act(self.bn(train, "bn1")(self.conv(width, 1, name="conv1")(x)))
    if pool and self.avd_first:
      out = avd(out)
    out = SplitAttentionConv(features=width, stride=1 if pool else self.stride,
                             radix=self.radix, groups=self.groups, dtype=self.dtype,
                             bn_axis_name=self.bn_axis_name, activation=self.activation,
                             name="conv2")(out, train)
    if pool and not self.avd_first:
      out = avd(out)
    out = self.bn(train, "bn3")(self.conv(self.planes * EXPANSION, 1, name="conv3")(out))
    if self.stride != 1 or x.shape[-1] != self.planes * EXPANSION:
      shortcut = avg_pool_ceil(x, self.stride) if self.avg_down else x
      shortcut = self.conv(self.planes * EXPANSION, 1, 1 if self.avg_down else self.stride,
                           name="downsample_conv")(shortcut)
      x = self.bn(train, "downsample_bn")(shortcut)
    return self.act(x + out)


class ResNeSt(ModelBase):
  """Defaults: RobustBench's ResNest152 (stages of 3, 8, 36, 3 bottlenecks of 64-512 planes,
  radix 4, one group, a deep stem of width 64, avg_down and avd, SiLU)."""
  stage_sizes: Sequence[int] = (3, 8, 36, 3)
  radix: int = 4
  groups: int = 1  # the cardinality
  bottleneck_width: int = 64
  deep_stem: bool = True
  stem_width: int = 64
  avg_down: bool = True
  avd: bool = True
  avd_first: bool = False
  activation: str = "swish"

  def stem(self, x, train):
    if not self.deep_stem:  # the reference's padding of 3 on a 3x3: 4 pixels wider
      x = nn.Conv(64, (3, 3), padding=((3, 3), (3, 3)), use_bias=False,
                  kernel_init=conv_kernel_init, dtype=self.dtype, param_dtype=jnp.float32,
                  name="stem_conv")(x)
    else:
      for i, width in enumerate((self.stem_width, self.stem_width, 2 * self.stem_width)):
        if i:
          x = self.act(self.bn(train, f"stem_bn{i}")(x))
        x = conv(width, 3, dtype=self.dtype, name=f"stem_conv{i + 1}")(x)
    return self.act(self.bn(train, "stem_bn")(x))

  @nn.compact
  def __call__(self, x, train: bool = False):
    if len(self.stage_sizes) != len(STAGE_PLANES) or self.radix < 1:
      raise ValueError(f"ResNeSt: {len(STAGE_PLANES)} stages and a radix of at least 1, not "
                       f"{tuple(self.stage_sizes)} and {self.radix}")
    x = self.stem(self.prepare(x), train)
    sow(self, "stem", x)
    block = dict(radix=self.radix, groups=self.groups, bottleneck_width=self.bottleneck_width,
                 avd=self.avd, avd_first=self.avd_first, avg_down=self.avg_down,
                 **self.block_kwargs())
    for i, (planes, size) in enumerate(zip(STAGE_PLANES, self.stage_sizes)):
      for j in range(size):
        x = ResNeStBottleneck(planes=planes, stride=2 if (i > 0 and j == 0) else 1,
                              name=f"layer{i + 1}_{j}", **block)(x, train)
      sow(self, f"stage{i + 1}", x)
    return self.head(x)
