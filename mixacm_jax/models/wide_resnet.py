"""WideResNet-depth-k as TRADES / RobustBench's `wide_resnet.py` defines it."""
import flax.linen as nn

from mixacm_jax.models.layers import ConvBNModule, ModelBase, sow


class WideBasicBlock(ConvBNModule):
  """bn-relu-conv-bn-relu-conv. When the widths differ, the 1x1 shortcut conv is taken
  after the first bn-relu (TRADES' `equalInOut=False` branch)."""
  planes: int = 16
  stride: int = 1

  @nn.compact
  def __call__(self, x, train: bool):
    equal_in_out = x.shape[-1] == self.planes
    act = self.act(self.bn(train, "bn1")(x))
    out = self.conv(self.planes, 3, self.stride, "conv1")(act)
    out = self.conv(self.planes, 3, 1, "conv2")(self.act(self.bn(train, "bn2")(out)))
    shortcut = x if equal_in_out else self.conv(self.planes, 1, self.stride, "shortcut_conv")(act)
    return out + shortcut


class WideResNet(ModelBase):
  """Sows `stem`, `stage1..3` (pre-activation), `stage3_act` (after the final bn-relu), `features`."""
  depth: int = 34
  widen_factor: int = 10

  @nn.compact
  def __call__(self, x, train: bool = False):
    if (self.depth - 4) % 6:
      raise ValueError(f"WideResNet depth must be 6n+4, got {self.depth}")
    blocks = (self.depth - 4) // 6
    widths = (16 * self.widen_factor, 32 * self.widen_factor, 64 * self.widen_factor)
    x = self.conv(16, 3, 1, "conv1")(self.prepare(x))
    sow(self, "stem", x)
    for i, width in enumerate(widths):
      for j in range(blocks):
        stride = 2 if (i > 0 and j == 0) else 1
        x = WideBasicBlock(planes=width, stride=stride, name=f"block{i + 1}_{j}",
                           **self.block_kwargs())(x, train)
      sow(self, f"stage{i + 1}", x)
    x = self.act(self.bn(train, "bn")(x))
    sow(self, "stage3_act", x)
    return self.head(x)
