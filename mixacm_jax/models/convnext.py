"""ConvNeXt (Liu et al. 2022) as timm's `convnext.py` builds it, and the ConvStem variants of
Singh et al. 2023 (RobustBench's `convstem_models.py`): a patchify or convolutional stem, four
stages of depthwise 7x7 convolution, LayerNorm, MLP (GELU) and layer scale, a LayerNorm and a
2x2 stride-2 convolution between stages; the head pools, normalises and classifies.

ConvNeXt V2 (Woo et al. 2023; `version=2`, as RobustBench's `convnext_v2.py`, Meta's own code,
builds it): the same network with no layer scale and a global response normalisation (GRN)
after each block's GELU; no input normalisation (that file's `mean` and `std` parameters are
never used by its forward).

Sows `stem`, `stage{i}` (NHWC feature maps, as the ResNets: ACM pairs a ConvNeXt teacher with
a ResNet student stage by stage) and `features`.
"""
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from mixacm_jax.models.layers import (MeanSparse, ModelBase, biased_conv, conv_kernel_init,
                                       gelu, layer_norm, sow)


class GRN(nn.Module):
  """ConvNeXt V2's global response normalisation of NHWC x: each channel's L2 norm over the
  spatial positions, divided by its mean over the channels (+ 1e-6), scales x;
  gamma * (x * Nx) + beta + x. gamma and beta keep PyTorch's shape (1, 1, 1, C)."""
  dim: int

  @nn.compact
  def __call__(self, x):
    shape = (1, 1, 1, self.dim)
    gamma = self.param("gamma", nn.initializers.zeros, shape, jnp.float32).astype(x.dtype)
    beta = self.param("beta", nn.initializers.zeros, shape, jnp.float32).astype(x.dtype)
    gx = jnp.sqrt(jnp.sum(jnp.square(x.astype(jnp.float32)), axis=(1, 2), keepdims=True))
    nx = (gx / (jnp.mean(gx, axis=-1, keepdims=True) + 1e-6)).astype(x.dtype)
    return gamma * (x * nx) + beta + x


class ConvNeXtBlock(nn.Module):
  """x + gamma * fc2(gelu(fc1(LN(dwconv7x7(x))))); with `mean_sparse`, MeanSparse layers
  before the GELU and on the branch (RobustBench's MeanSparse ConvNeXt); with `grn` (ConvNeXt
  V2), x + fc2(GRN(gelu(fc1(LN(dwconv7x7(x)))))), no layer scale."""
  dim: int
  dtype: Any = jnp.float32
  mean_sparse: bool = False
  grn: bool = False

  @nn.compact
  def __call__(self, x):
    y = nn.Conv(self.dim, (7, 7), padding=((3, 3), (3, 3)), feature_group_count=self.dim,
                kernel_init=conv_kernel_init, dtype=self.dtype, param_dtype=jnp.float32,
                name="conv_dw")(x)
    y = layer_norm(self.dtype, "norm")(y)
    y = nn.Dense(4 * self.dim, dtype=self.dtype, param_dtype=jnp.float32, name="fc1")(y)
    y = MeanSparse(name="sparse_hidden")(y) if self.mean_sparse else y
    y = GRN(4 * self.dim, name="grn")(gelu(y)) if self.grn else gelu(y)
    y = nn.Dense(self.dim, dtype=self.dtype, param_dtype=jnp.float32, name="fc2")(y)
    if self.grn:
      return x + y
    gamma = self.param("gamma", nn.initializers.constant(1e-6), (self.dim,), jnp.float32)
    y = y * gamma.astype(y.dtype)
    return x + (MeanSparse(name="sparse_out")(y) if self.mean_sparse else y)


class ConvNeXt(ModelBase):
  depths: Sequence[int] = (3, 3, 9, 3)
  dims: Sequence[int] = (96, 192, 384, 768)
  # patch: a 4x4 stride-4 convolution and a LayerNorm (timm); convstem: Singh et al.'s 3x3
  # convolutions (LayerNorm, GELU after each), stride 2, 2 and, with `stem_layers=3`, 1.
  stem: str = "patch"
  stem_width: int = 48
  stem_layers: int = 2
  mean_sparse: bool = False  # Amini et al. 2024's MeanSparse layers in every block
  # 1: timm's ConvNeXt; 2: ConvNeXt V2 (GRN, no layer scale; patch stem), read and written in
  # the layout of RobustBench's convnext_v2.py (port.rules.CONVNEXT_V2).
  version: int = 1

  def _conv(self, features, kernel, stride, padding, name):
    return biased_conv(features, kernel, stride, padding, dtype=self.dtype, name=name)

  def _norm(self, name):
    return layer_norm(self.dtype, name)

  def _stem(self, x):
    if self.stem == "patch":
      return self._norm("stem_norm")(self._conv(self.dims[0], 4, 4, 0, "stem_conv")(x))
    if self.stem != "convstem" or self.stem_layers not in (2, 3):
      raise ValueError(f"unknown ConvNeXt stem {self.stem!r} with {self.stem_layers} layers; "
                       "known: patch, convstem with 2 or 3 layers")
    w = self.stem_width  # ConvBlock1: w, 2w (stride 2, 2); ConvBlock3: w, 1.5w, 2w (2, 2, 1)
    widths = (w, 2 * w) if self.stem_layers == 2 else (w, int(1.5 * w), 2 * w)
    for i, width in enumerate(widths):
      x = self._conv(width, 3, 2 if i < 2 else 1, 1, f"stem_conv{i}")(x)
      x = gelu(self._norm(f"stem_norm{i}")(x))
    if x.shape[-1] != self.dims[0]:
      raise ValueError(f"the ConvStem ends at {x.shape[-1]} channels, the first stage has "
                       f"{self.dims[0]}")
    return x

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train  # no batch statistics, no dropout
    if self.version not in (1, 2) or (self.version == 2 and (
        self.stem != "patch" or self.mean_sparse)):
      raise ValueError(f"ConvNeXt version {self.version!r} with stem {self.stem!r} and "
                       f"mean_sparse={self.mean_sparse}: known are version 1 (any stem, "
                       "MeanSparse or not) and version 2 with the patch stem, no MeanSparse")
    x = self._stem(self.prepare(x))
    sow(self, "stem", x)
    for i, (depth, dim) in enumerate(zip(self.depths, self.dims)):
      if i > 0:
        x = self._conv(dim, 2, 2, 0, f"downsample{i}")(self._norm(f"downsample_norm{i}")(x))
      for j in range(depth):
        x = ConvNeXtBlock(dim, dtype=self.dtype, mean_sparse=self.mean_sparse,
                          grn=self.version == 2, name=f"stage{i + 1}_{j}")(x)
      sow(self, f"stage{i + 1}", x)
    features = self._norm("head_norm")(jnp.mean(x, axis=(1, 2)))
    sow(self, "features", features)
    logits = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=jnp.float32,
                      name="fc")(features)
    return logits.astype(jnp.float32)
