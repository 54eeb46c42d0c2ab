"""ResNets: the CIFAR form (3x3 stem, no max-pool) as RobustBench's `resnet.py` defines it and
the ImageNet form (7x7 stride-2 stem and max-pool) as torchvision's `resnet.py`; basic blocks
(ResNet-18/34) or bottleneck blocks (ResNet-50 and up, expansion 4, the stride on the 3x3
convolution as in torchvision's v1.5, wider inside for Wide-ResNet-50-2, grouped for ResNeXt;
also with a pre-activation bn0); and the softmax ensemble of several (RobustBench's
Chen2020Adversarial)."""
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from mixacm_jax.models.layers import ConvBNModule, ModelBase, sow


class BasicBlock(ConvBNModule):
  """conv-bn-relu-conv-bn + shortcut, then relu. Returns (output, output before the relu)."""
  planes: int = 64
  stride: int = 1
  width: int = 0  # a bottleneck's inner width (0: planes)
  groups: int = 1  # a bottleneck's 3x3 in groups (ResNeXt's cardinality)
  expansion = 1

  @nn.compact
  def __call__(self, x, train: bool):
    out = nn.relu(self.bn(train, "bn1")(self.conv(self.planes, 3, self.stride, "conv1")(x)))
    out = self.bn(train, "bn2")(self.conv(self.planes, 3, 1, "conv2")(out))
    return self.add_shortcut(x, out, train)

  def add_shortcut(self, x, out, train):
    width = self.planes * self.expansion
    if self.stride != 1 or x.shape[-1] != width:
      x = self.bn(train, "shortcut_bn")(self.conv(width, 1, self.stride, "shortcut_conv")(x))
    preact = out + x
    return nn.relu(preact), preact


class BottleneckBlock(BasicBlock):
  """1x1 conv-bn-relu, 3x3 conv (the stride)-bn-relu, 1x1 conv to 4x planes-bn + shortcut,
  then relu."""
  expansion = 4

  @nn.compact
  def __call__(self, x, train: bool):
    width = self.width or self.planes
    out = nn.relu(self.bn(train, "bn1")(self.conv(width, 1, 1, "conv1")(x)))
    out = nn.relu(self.bn(train, "bn2")(self.conv(width, 3, self.stride, "conv2",
                                                  groups=self.groups)(out)))
    out = self.bn(train, "bn3")(self.conv(self.planes * self.expansion, 1, 1, "conv3")(out))
    return self.add_shortcut(x, out, train)


class PreActBottleneckBlock(BasicBlock):
  """bn0-relu first (Chen et al. 2020's branches): 1x1 conv-bn-relu, 3x3 conv-bn-relu, 1x1
  conv to 4x planes, plus the identity or a conv-bn of the pre-activation; no final relu."""
  expansion = 4

  @nn.compact
  def __call__(self, x, train: bool):
    pre = nn.relu(self.bn(train, "bn0")(x))
    out = nn.relu(self.bn(train, "bn1")(self.conv(self.planes, 1, 1, "conv1")(pre)))
    out = nn.relu(self.bn(train, "bn2")(self.conv(self.planes, 3, self.stride, "conv2")(out)))
    out = self.conv(self.planes * self.expansion, 1, 1, "conv3")(out)
    width = self.planes * self.expansion
    if self.stride != 1 or x.shape[-1] != width:
      x = self.bn(train, "shortcut_bn")(self.conv(width, 1, self.stride, "shortcut_conv")(pre))
    return out + x, out + x


BLOCKS = {"basic": BasicBlock, "bottleneck": BottleneckBlock,
          "preact_bottleneck": PreActBottleneckBlock}


def cifar_stem(model, x, train):
  """3x3 stride-1 conv-bn-relu: 32x32 inputs keep their size."""
  return nn.relu(model.bn(train, "bn1")(model.conv(model.base_width, 3, 1, "conv1")(x)))


def imagenet_stem(model, x, train):
  """7x7 stride-2 conv-bn-relu, then a 3x3 stride-2 max-pool (padded with -inf): /4."""
  x = nn.relu(model.bn(train, "bn1")(model.conv(model.base_width, 7, 2, "conv1")(x)))
  return nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))


STEMS = {"cifar": cifar_stem, "imagenet": imagenet_stem}


class ResNet(ModelBase):
  """Sows `stem` (the stem's output), `stage{i}` (after the final relu), `stage{i}_preact`
  (before it), `features`: the same names for both stems, so a MixACM config moves from CIFAR
  to ImageNet unchanged. Any input size works (global average pooling)."""
  stage_sizes: Sequence[int] = (2, 2, 2, 2)
  base_width: int = 64
  block: str = "basic"
  stem: str = "cifar"
  # torchvision's width_per_group and groups: a bottleneck is base_width * 2**i *
  # width_per_group / 64 * groups wide inside (128 for Wide-ResNet-50-2; ResNeXt-29 4x32d's
  # 3x3 in 4 groups of 32 at 64 planes); the other blocks take only 64 and 1.
  width_per_group: int = 64
  groups: int = 1

  @nn.compact
  def __call__(self, x, train: bool = False):
    if self.block not in BLOCKS:
      raise ValueError(f"unknown ResNet block {self.block!r}; known: {sorted(BLOCKS)}")
    if self.stem not in STEMS:
      raise ValueError(f"unknown ResNet stem {self.stem!r}; known: {sorted(STEMS)}")
    if self.block != "bottleneck" and (self.width_per_group, self.groups) != (64, 1):
      raise ValueError(f"{self.block} blocks take width_per_group=64 and groups=1 only, not "
                       f"{self.width_per_group} and {self.groups}")
    x = STEMS[self.stem](self, self.prepare(x), train)
    sow(self, "stem", x)
    for i, blocks in enumerate(self.stage_sizes):
      planes = self.base_width * 2**i
      for j in range(blocks):
        stride = 2 if (i > 0 and j == 0) else 1
        x, preact = BLOCKS[self.block](planes=planes, stride=stride,
                                       width=planes * self.width_per_group // 64 * self.groups,
                                       groups=self.groups, name=f"layer{i + 1}_{j}",
                                       **self.block_kwargs())(x, train)
      sow(self, f"stage{i + 1}", x)
      sow(self, f"stage{i + 1}_preact", preact)
    return self.head(x)


class SoftmaxEnsemble(ModelBase):
  """The mean of its members' softmax outputs (probabilities, as RobustBench's ensemble
  returns), after one shared input normalisation."""
  members: Sequence[Any] = ()

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = self.prepare(x)
    probs = [jax.nn.softmax(m(x, train).astype(jnp.float32), -1) for m in self.members]
    return sum(probs) / len(probs)
