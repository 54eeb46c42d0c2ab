"""CIFAR ResNets (3x3 stem, no max-pool) as RobustBench's `resnet.py` defines them: basic
blocks (ResNet-18/34) or bottleneck blocks (ResNet-50, expansion 4, also with a
pre-activation bn0); and the softmax ensemble of several (RobustBench's Chen2020Adversarial)."""
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from mixacm_jax.models.layers import ConvBNModule, ModelBase, sow


class BasicBlock(ConvBNModule):
  """conv-bn-relu-conv-bn + shortcut, then relu. Returns (output, output before the relu)."""
  planes: int = 64
  stride: int = 1
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
    out = nn.relu(self.bn(train, "bn1")(self.conv(self.planes, 1, 1, "conv1")(x)))
    out = nn.relu(self.bn(train, "bn2")(self.conv(self.planes, 3, self.stride, "conv2")(out)))
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


class ResNet(ModelBase):
  """Sows `stem`, `stage{i}` (after the final relu), `stage{i}_preact` (before it), `features`."""
  stage_sizes: Sequence[int] = (2, 2, 2, 2)
  base_width: int = 64
  block: str = "basic"

  @nn.compact
  def __call__(self, x, train: bool = False):
    if self.block not in BLOCKS:
      raise ValueError(f"unknown ResNet block {self.block!r}; known: {sorted(BLOCKS)}")
    x = nn.relu(self.bn(train, "bn1")(self.conv(self.base_width, 3, 1, "conv1")(self.prepare(x))))
    sow(self, "stem", x)
    for i, blocks in enumerate(self.stage_sizes):
      for j in range(blocks):
        stride = 2 if (i > 0 and j == 0) else 1
        x, preact = BLOCKS[self.block](planes=self.base_width * 2**i, stride=stride,
                                       name=f"layer{i + 1}_{j}", **self.block_kwargs())(x, train)
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
