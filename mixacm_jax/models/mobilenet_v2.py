"""MobileNetV2 (Sandler et al. 2018) in two forms. "cifar": the student of the robust
distillation papers (ARD, RSLAD, AdaAD, IGDM), the CIFAR adaptation in kuangliu's
pytorch-cifar `mobilenetv2.py` that their code uses: stride-1 stem and second group, ReLU, an
expansion conv even where the ratio is 1, a conv shortcut where the stride is 1 and the widths
differ. "imagenet": torchvision's `mobilenet_v2` (stride-2 stem, ReLU6, the inverted residual
only where the widths agree).

Sows `stem`, `stage1` (after the 24-wide group), `stage2` (32), `stage3` (96), `stage4` (the
1x1 head conv, the last spatial map) and `features`: at 32 px (cifar) and 224 px (imagenet)
the stages sit at the resolutions of a ResNet's, so MixACM pairs them with a ResNet teacher
as they are.
"""
from typing import Sequence, Tuple

import flax.linen as nn

from mixacm_jax.models.layers import ConvBNModule, ModelBase, sow

# (expansion t, width c, blocks n, stride s) per group, the paper's table 2.
GROUPS: Tuple[Tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
    (6, 320, 1, 1))
STAGE_ENDS = {1: "stage1", 2: "stage2", 4: "stage3"}  # group index -> the name sown after it
# form -> (stem stride, second group's stride, expansion conv at t = 1, conv shortcut)
FORMS = {"cifar": (1, 1, True, True), "imagenet": (2, 2, False, False)}


def make_divisible(v: float, divisor: int = 8) -> int:
  """torchvision's channel rounding for width multipliers."""
  new = max(divisor, int(v + divisor / 2) // divisor * divisor)
  return new + divisor if new < 0.9 * v else new


class InvertedResidual(ConvBNModule):
  """1x1 expansion conv-bn-act, 3x3 depthwise conv (the stride)-bn-act, 1x1 projection
  conv-bn, plus the input (or its conv-bn) where the stride is 1."""
  width: int = 16
  expansion: int = 6
  stride: int = 1
  expand_always: bool = False
  conv_shortcut: bool = False

  @nn.compact
  def __call__(self, x, train: bool):
    inner = x.shape[-1] * self.expansion
    out = x
    if self.expansion != 1 or self.expand_always:
      out = self.act(self.bn(train, "bn1")(self.conv(inner, 1, 1, "conv1")(out)))
    out = self.act(self.bn(train, "bn2")(
        self.conv(inner, 3, self.stride, "conv2", groups=inner)(out)))
    out = self.bn(train, "bn3")(self.conv(self.width, 1, 1, "conv3")(out))
    if self.stride != 1:
      return out
    if x.shape[-1] == self.width:
      return out + x
    if self.conv_shortcut:
      return out + self.bn(train, "shortcut_bn")(self.conv(self.width, 1, 1, "shortcut_conv")(x))
    return out


class MobileNetV2(ModelBase):
  """Blocks are `block1`... `block17` (torchvision's `features.1`... `features.17`)."""
  form: str = "cifar"
  width_mult: float = 1.0
  last_width: int = 1280
  groups: Sequence[Tuple[int, int, int, int]] = GROUPS

  @nn.compact
  def __call__(self, x, train: bool = False):
    if self.form not in FORMS:
      raise ValueError(f"unknown MobileNetV2 form {self.form!r}; known: {sorted(FORMS)}")
    stem_stride, second_stride, expand_always, conv_shortcut = FORMS[self.form]
    x = self.prepare(x)
    x = self.act(self.bn(train, "bn1")(
        self.conv(make_divisible(32 * self.width_mult), 3, stem_stride, "conv1")(x)))
    sow(self, "stem", x)
    index = 1
    for g, (t, c, n, s) in enumerate(self.groups):
      for j in range(n):
        stride = (second_stride if g == 1 else s) if j == 0 else 1
        x = InvertedResidual(width=make_divisible(c * self.width_mult), expansion=t,
                             stride=stride, expand_always=expand_always,
                             conv_shortcut=conv_shortcut, name=f"block{index}",
                             **self.block_kwargs())(x, train)
        index += 1
      if g in STAGE_ENDS:
        sow(self, STAGE_ENDS[g], x)
    x = self.act(self.bn(train, "bn2")(self.conv(self.last_width, 1, 1, "conv2")(x)))
    sow(self, "stage4", x)
    return self.head(x)
