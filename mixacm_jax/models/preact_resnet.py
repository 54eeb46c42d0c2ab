"""PreActResNet-18 as RobustBench's `resnet.py` (`PreActResNet`) defines it, and the wide,
affine-free form of Diffenderfer et al.'s CARD networks (RobustBench's `CARD_resnet.py`
`WidePreActResNet`: widths 64, 192, 384, 768, BatchNorms without scale or shift, a
conv-bn shortcut, an identity shortcut that carries the block's pre-activation, and a
bias-free 1x1-convolution classifier)."""
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from mixacm_jax.models.layers import ConvBNModule, ModelBase, sow


class PreActBlock(ConvBNModule):
  """bn-relu-conv-bn-relu-conv. The shortcut conv takes the first bn-relu output
  (`shortcut_from_preact`, Rice et al. / RobustBench `out_shortcut=True`, `PreActBlockV2`)
  or the block's raw input (RobustBench's `PreActBlock` default)."""
  planes: int = 64
  stride: int = 1
  shortcut_from_preact: bool = True
  shortcut_kernel: int = 1  # DeepMind's PreActResNet uses a 3x3 shortcut conv
  shortcut_bn: bool = False  # a BatchNorm after the shortcut conv (CARD's)
  bn_affine: bool = True  # False: BatchNorms without scale and shift (CARD's)
  preact_identity: bool = False  # an identity shortcut carries bn1-relu's output (CARD's)

  @nn.compact
  def __call__(self, x, train: bool):
    out = self.act(self.norm(train, "bn1")(x))
    shortcut = out if self.preact_identity else x
    if self.stride != 1 or x.shape[-1] != self.planes:
      shortcut = self.conv(self.planes, self.shortcut_kernel, self.stride, "shortcut_conv")(
          out if self.shortcut_from_preact else x)
      if self.shortcut_bn:
        shortcut = self.norm(train, "shortcut_bn")(shortcut)
    out = self.conv(self.planes, 3, self.stride, "conv1")(out)
    out = self.conv(self.planes, 3, 1, "conv2")(self.act(self.norm(train, "bn2")(out)))
    return out + shortcut

  def norm(self, train: bool, name: str) -> nn.BatchNorm:
    return self.bn(train, name, affine=self.bn_affine)


class PreActResNet(ModelBase):
  """Sows `stem` and `stage{i}` (pre-activation: before any bn-relu), `stage{N}_act`
  (after the final bn-relu, when `final_bn`) and `features`. `final_bn` is RobustBench's
  `bn_before_fc` (Rice et al.'s PreActResNet-18 has it)."""
  stage_sizes: Sequence[int] = (2, 2, 2, 2)
  base_width: int = 64
  shortcut_from_preact: bool = True
  shortcut_kernel: int = 1
  final_bn: bool = True
  stage_widths: Sequence[int] = ()  # empty: base_width * 2**i
  shortcut_bn: bool = False
  bn_affine: bool = True
  preact_identity: bool = False
  conv_head: bool = False  # the classifier as a bias-free 1x1 convolution of the pooled map

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = self.conv(self.base_width, 3, 1, "conv1")(self.prepare(x))
    sow(self, "stem", x)
    widths = self.stage_widths or [self.base_width * 2**i for i in range(len(self.stage_sizes))]
    if len(widths) != len(self.stage_sizes):
      raise ValueError(f"PreActResNet: {len(self.stage_sizes)} stages but stage_widths "
                       f"{tuple(widths)}")
    for i, (blocks, width) in enumerate(zip(self.stage_sizes, widths)):
      for j in range(blocks):
        stride = 2 if (i > 0 and j == 0) else 1
        x = PreActBlock(planes=width, stride=stride,
                        shortcut_from_preact=self.shortcut_from_preact,
                        shortcut_kernel=self.shortcut_kernel, shortcut_bn=self.shortcut_bn,
                        bn_affine=self.bn_affine, preact_identity=self.preact_identity,
                        name=f"layer{i + 1}_{j}",
                        **self.block_kwargs())(x, train)
      sow(self, f"stage{i + 1}", x)
    if self.final_bn:
      x = self.act(self.bn(train, "bn", affine=self.bn_affine)(x))
      sow(self, f"stage{len(self.stage_sizes)}_act", x)
    if not self.conv_head:
      return self.head(x)
    if self.cosine_head:
      raise ValueError("PreActResNet: conv_head and cosine_head exclude each other")
    features = jnp.mean(x, axis=(1, 2), keepdims=True)
    sow(self, "features", features[:, 0, 0])
    logits = self.conv(self.num_classes, 1, name="fc")(features)
    return logits[:, 0, 0].astype(jnp.float32)
