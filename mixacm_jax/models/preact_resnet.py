"""PreActResNet-18 as RobustBench's `resnet.py` (`PreActResNet`) defines it."""
from typing import Sequence

import flax.linen as nn

from mixacm_jax.models.layers import ConvBNModule, ModelBase, sow


class PreActBlock(ConvBNModule):
  """bn-relu-conv-bn-relu-conv. The shortcut conv takes the first bn-relu output
  (`shortcut_from_preact`, Rice et al. / RobustBench `out_shortcut=True`, `PreActBlockV2`)
  or the block's raw input (RobustBench's `PreActBlock` default)."""
  planes: int = 64
  stride: int = 1
  shortcut_from_preact: bool = True
  shortcut_kernel: int = 1  # DeepMind's PreActResNet uses a 3x3 shortcut conv

  @nn.compact
  def __call__(self, x, train: bool):
    out = self.act(self.bn(train, "bn1")(x))
    shortcut = x
    if self.stride != 1 or x.shape[-1] != self.planes:
      shortcut = self.conv(self.planes, self.shortcut_kernel, self.stride, "shortcut_conv")(
          out if self.shortcut_from_preact else x)
    out = self.conv(self.planes, 3, self.stride, "conv1")(out)
    out = self.conv(self.planes, 3, 1, "conv2")(self.act(self.bn(train, "bn2")(out)))
    return out + shortcut


class PreActResNet(ModelBase):
  """Sows `stem` and `stage{i}` (pre-activation: before any bn-relu), `stage{N}_act`
  (after the final bn-relu, when `final_bn`) and `features`. `final_bn` is RobustBench's
  `bn_before_fc` (Rice et al.'s PreActResNet-18 has it)."""
  stage_sizes: Sequence[int] = (2, 2, 2, 2)
  base_width: int = 64
  shortcut_from_preact: bool = True
  shortcut_kernel: int = 1
  final_bn: bool = True

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = self.conv(self.base_width, 3, 1, "conv1")(self.prepare(x))
    sow(self, "stem", x)
    for i, blocks in enumerate(self.stage_sizes):
      for j in range(blocks):
        stride = 2 if (i > 0 and j == 0) else 1
        x = PreActBlock(planes=self.base_width * 2**i, stride=stride,
                        shortcut_from_preact=self.shortcut_from_preact,
                        shortcut_kernel=self.shortcut_kernel,
                        name=f"layer{i + 1}_{j}", **self.block_kwargs())(x, train)
      sow(self, f"stage{i + 1}", x)
    if self.final_bn:
      x = self.act(self.bn(train, "bn")(x))
      sow(self, f"stage{len(self.stage_sizes)}_act", x)
    return self.head(x)
