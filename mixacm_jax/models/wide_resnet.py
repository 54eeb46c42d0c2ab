"""WideResNet-depth-k as TRADES / RobustBench's `wide_resnet.py` defines it, with per-stage
widths and depths (RobustBench's `RobustWideResNet`, Huang et al. 2021), and with MeanSparse
layers (Amini et al. 2024; RobustBench's MeanSparse DM WideResNets) and squeeze-and-excitation
(Peng et al. 2023's RaWideResNet)."""
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from mixacm_jax.models.layers import ConvBNModule, MeanSparse, ModelBase, sow


class WideBasicBlock(ConvBNModule):
  """bn-relu-conv-bn-relu-conv. When the widths differ, the 1x1 shortcut conv is taken
  after the first bn-relu (TRADES' `equalInOut=False` branch)."""
  planes: int = 16
  stride: int = 1
  mean_sparse: bool = False  # MeanSparse after each bn and after the sum (Amini et al.)
  se_ratio: float = 0.0  # squeeze-and-excitation of the second conv's output (RobustArch)

  def sparse(self, x, name):
    return MeanSparse(name=name)(x) if self.mean_sparse else x

  def squeeze_excite(self, x):
    """torchvision's SqueezeExcitation: x * sigmoid(fc2(relu(fc1(spatial mean of x))))."""
    if not self.se_ratio:
      return x
    s = jnp.mean(x, axis=(1, 2), keepdims=True)
    s = nn.relu(self.conv(int(round(self.se_ratio * self.planes)), 1, 1, "se_fc1",
                          use_bias=True)(s))
    return x * jax.nn.sigmoid(self.conv(self.planes, 1, 1, "se_fc2", use_bias=True)(s))

  @nn.compact
  def __call__(self, x, train: bool):
    equal_in_out = x.shape[-1] == self.planes
    act = self.act(self.sparse(self.bn(train, "bn1")(x), "sparse1"))
    out = self.conv(self.planes, 3, self.stride, "conv1")(act)
    out = self.act(self.sparse(self.bn(train, "bn2")(out), "sparse2"))
    out = self.squeeze_excite(self.conv(self.planes, 3, 1, "conv2")(out))
    shortcut = x if equal_in_out else self.conv(self.planes, 1, self.stride, "shortcut_conv")(act)
    return self.sparse(out + shortcut, "sparse_out")


class WideResNet(ModelBase):
  """Sows `stem`, `stage1..3` (pre-activation), `stage3_act` (after the final bn-relu), `features`."""
  depth: int = 34
  widen_factor: int = 10
  # Per stage, when set (else 16k, 32k, 64k wide and (depth - 4) / 6 blocks each).
  stage_widths: Sequence[int] = ()
  stage_blocks: Sequence[int] = ()
  stem_width: int = 16
  # Amini et al. 2024's MeanSparse layers (RobustBench's MeanSparse WideResNets).
  mean_sparse: bool = False
  # RobustArch's squeeze-and-excitation (Peng et al. 2023's RaWideResNet): its width ratio.
  se_ratio: float = 0.0

  @nn.compact
  def __call__(self, x, train: bool = False):
    if not self.stage_blocks and (self.depth - 4) % 6:
      raise ValueError(f"WideResNet depth must be 6n+4, got {self.depth}")
    widths = tuple(self.stage_widths) or tuple(w * self.widen_factor for w in (16, 32, 64))
    blocks = tuple(self.stage_blocks) or ((self.depth - 4) // 6,) * len(widths)
    learned = self.learned_activation()
    kwargs = {**self.block_kwargs(), **({"shared_activation": learned} if learned else {})}
    x = self.conv(self.stem_width, 3, 1, "conv1")(self.prepare(x))
    sow(self, "stem", x)
    for i, width in enumerate(widths):
      for j in range(blocks[i]):
        stride = 2 if (i > 0 and j == 0) else 1
        x = WideBasicBlock(planes=width, stride=stride, mean_sparse=self.mean_sparse,
                           se_ratio=self.se_ratio, name=f"block{i + 1}_{j}", **kwargs)(x, train)
      sow(self, f"stage{i + 1}", x)
    x = self.bn(train, "bn")(x)
    x = MeanSparse(name="sparse")(x) if self.mean_sparse else x
    x = learned(x) if learned else self.act(x)
    sow(self, "stage3_act", x)
    return self.head(x)
