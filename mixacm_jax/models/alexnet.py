"""AlexNet as torchvision's `alexnet.py` builds it (RobustBench's ImageNet-corruptions entry
'AlexNet' is torchvision's pretrained one inside timm's wrapper): five convolutions with ReLU,
three 3x3 stride-2 max-pools, an adaptive average pool to 6x6, then three linear layers.

The 6x6 map is flattened channel-first (PyTorch's order), so the first linear layer's weights
port as they are. No dropout: the Flax model is a teacher and a model to attack (eval), and
trains without it.

Sows `stem` (conv1's pooled map), `stage1` (conv2's), `stage2`, `stage3` (conv3's, conv4's),
`stage4` (conv5's pooled map) and `features` (the 4096-vector the classifier reads).
"""
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from mixacm_jax.models.layers import ModelBase, conv_kernel_init, dense, sow

POOLED = 6  # torchvision's AdaptiveAvgPool2d((6, 6))


def adaptive_avg_pool(x: jnp.ndarray, size: int) -> jnp.ndarray:
  """torch's AdaptiveAvgPool2d((size, size)) on NHWC: bin i spans [floor(i H / size),
  ceil((i + 1) H / size)) in each direction."""
  def bins(n):
    return [(i * n // size, -(-(i + 1) * n // size)) for i in range(size)]
  if x.shape[1:3] == (size, size):
    return x
  rows = [jnp.stack([jnp.mean(x[:, r0:r1, c0:c1], axis=(1, 2)) for c0, c1 in bins(x.shape[2])],
                    axis=1) for r0, r1 in bins(x.shape[1])]
  return jnp.stack(rows, axis=1)


class AlexNet(ModelBase):
  """torchvision's AlexNet: `widths` of its five convolutions, `hidden` of its two hidden
  linear layers (64, 192, 384, 256, 256 and 4096 in torchvision's)."""
  widths: Sequence[int] = (64, 192, 384, 256, 256)
  hidden: int = 4096

  def _conv(self, x, i, kernel, stride, pad):
    x = nn.Conv(self.widths[i], (kernel, kernel), strides=(stride, stride),
                padding=((pad, pad), (pad, pad)), kernel_init=conv_kernel_init,
                dtype=self.dtype, param_dtype=jnp.float32, name=f"conv{i + 1}")(x)
    return nn.relu(x)

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train  # no batch statistics; no dropout (see the module's docstring)
    if len(self.widths) != 5 or self.cosine_head:
      raise ValueError("AlexNet has five convolutions and a linear classifier")
    pool = lambda y: nn.max_pool(y, (3, 3), strides=(2, 2), padding="VALID")
    x = pool(self._conv(self.prepare(x), 0, 11, 4, 2))
    sow(self, "stem", x)
    x = pool(self._conv(x, 1, 5, 1, 2))
    sow(self, "stage1", x)
    for i in (2, 3):
      x = self._conv(x, i, 3, 1, 1)
      sow(self, f"stage{i}", x)
    x = pool(self._conv(x, 4, 3, 1, 1))
    sow(self, "stage4", x)
    x = adaptive_avg_pool(x, POOLED)
    x = jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)  # PyTorch's flatten order
    for i in (1, 2):
      x = nn.relu(dense(self.hidden, dtype=self.dtype, name=f"fc{i}")(x))
    sow(self, "features", x)
    return dense(self.num_classes, dtype=self.dtype, name="fc")(x).astype(jnp.float32)
