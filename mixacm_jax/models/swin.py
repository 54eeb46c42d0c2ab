"""Swin Transformers (Liu et al. 2021) as timm's `swin_transformer.py` builds them: a 4x4
patch embedding and LayerNorm, four stages of (shifted) window attention with a relative
position bias, patch merging (2x2 neighbours concatenated, LayerNorm, a linear map) before
stages 2-4, a final LayerNorm, average pooling and a linear head. As in timm, a window larger
than its stage's grid shrinks to the grid (and stops shifting), a grid that is not a multiple
of the window is padded at the bottom and right, and tokens of different regions of a shifted
window are kept apart by a bias of -100. Microsoft's original implementation (RobustBench's
MIMIR models) computes the same network; its weights port too (`port.rules.MS_SWIN`).

Sows `stem` (the patch grid), `stage1`..`stage4` (each stage's output grid, NHWC: at 224 px
56, 28, 14 and 7 wide, as an ImageNet ResNet's stages) and `features`, so a Swin teacher pairs
with a ResNet student stage by stage.
"""
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mixacm_jax.models.layers import (MeanSparse, ModelBase, biased_conv, dense, gelu,
                                       layer_norm, sow)


def relative_position_index(window: int) -> np.ndarray:
  """(w*w, w*w) indices into the (2w-1)^2 bias table, timm's get_relative_position_index."""
  coords = np.stack(np.meshgrid(np.arange(window), np.arange(window), indexing="ij"))
  flat = coords.reshape(2, -1)
  rel = (flat[:, :, None] - flat[:, None, :]).transpose(1, 2, 0) + (window - 1)
  return rel[..., 0] * (2 * window - 1) + rel[..., 1]


def _windows(x, window: int):
  """(B, H, W, C) -> (B * H/w * W/w, w*w, C), windows in raster order."""
  b, h, w, c = x.shape
  x = x.reshape(b, h // window, window, w // window, window, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(-1, window * window, c)


def _merge_windows(windows, window: int, h: int, w: int):
  c = windows.shape[-1]
  x = windows.reshape(-1, h // window, w // window, window, window, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(-1, h, w, c)


def shift_mask(h: int, w: int, window: int, shift: int) -> np.ndarray:
  """(windows, w*w, w*w): 0 within a region of the shifted image, -100 across regions."""
  img = np.zeros((1, h, w, 1), np.float32)
  count = 0
  for hs in (slice(0, -window), slice(-window, -shift), slice(-shift, None)):
    for ws in (slice(0, -window), slice(-window, -shift), slice(-shift, None)):
      img[:, hs, ws, :] = count
      count += 1
  regions = np.asarray(_windows(img, window))[..., 0]  # (windows, w*w)
  return np.where(regions[:, None, :] != regions[:, :, None], -100.0, 0.0).astype(np.float32)


class WindowAttention(nn.Module):
  """Multi-head attention inside each window, with the learned relative position bias."""
  dim: int
  heads: int
  window: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, mask: Optional[np.ndarray]):
    n_win, n, d = x.shape
    table = self.param("relative_position_bias_table", nn.initializers.truncated_normal(0.02),
                       ((2 * self.window - 1) ** 2, self.heads), jnp.float32)
    bias = table[relative_position_index(self.window).reshape(-1)].reshape(n, n, -1)
    bias = bias.transpose(2, 0, 1)[None]  # (1, heads, n, n)
    if mask is not None:  # (windows per image, n, n), repeated over the batch
      bias = (bias[:, None] + mask[None, :, None]).reshape(-1, mask.shape[0], self.heads, n, n)
    qkv = dense(3 * d, self.dtype, "qkv")(x).reshape(n_win, n, 3, self.heads, d // self.heads)
    q, k, v = jnp.moveaxis(qkv, 2, 0)
    logits = jnp.einsum("bqhc,bkhc->bhqk", q, k) * (d // self.heads) ** -0.5
    if mask is None:
      logits = logits.astype(jnp.float32) + bias
    else:
      logits = (logits.astype(jnp.float32).reshape(-1, mask.shape[0], self.heads, n, n)
                + bias).reshape(n_win, self.heads, n, n)
    weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    out = jnp.einsum("bhqk,bkhc->bqhc", weights, v).reshape(n_win, n, d)
    return dense(d, self.dtype, "proj")(out)


class SwinBlock(nn.Module):
  """x + W-MSA(LN(x)) (shifted by half a window in every other block), then x + MLP(LN(x));
  with `mean_sparse` (RobustBench's MeanSparse Swin-L), MeanSparse after each residual sum and
  on the MLP's hidden (before the GELU) and output."""
  dim: int
  heads: int
  window: int
  shift: int
  mlp_ratio: float = 4.0
  norm_eps: float = 1e-5
  dtype: Any = jnp.float32
  mean_sparse: bool = False

  def sparse(self, x, name: str):
    return MeanSparse(name=name)(x) if self.mean_sparse else x

  @nn.compact
  def __call__(self, x):
    b, h, w, d = x.shape
    window, shift = (self.window, self.shift) if min(h, w) > self.window else (min(h, w), 0)
    y = layer_norm(self.dtype, "norm1", self.norm_eps)(x)
    if shift:
      y = jnp.roll(y, (-shift, -shift), axis=(1, 2))
    ph, pw = (-h) % window, (-w) % window
    y = jnp.pad(y, ((0, 0), (0, ph), (0, pw), (0, 0)))
    mask = shift_mask(h + ph, w + pw, window, shift) if shift else None
    y = WindowAttention(d, self.heads, window, self.dtype, name="attn")(_windows(y, window), mask)
    y = _merge_windows(y, window, h + ph, w + pw)[:, :h, :w]
    if shift:
      y = jnp.roll(y, (shift, shift), axis=(1, 2))
    x = self.sparse(x + y, "sparse1")
    y = dense(int(d * self.mlp_ratio), self.dtype, "fc1")(
        layer_norm(self.dtype, "norm2", self.norm_eps)(x))
    y = dense(d, self.dtype, "fc2")(gelu(self.sparse(y, "mlp_sparse1")))
    return self.sparse(x + self.sparse(y, "mlp_sparse2"), "sparse2")


def patch_merge(x, dtype, eps: float, prefix: str):
  """2x2 neighbours (timm's order) concatenated, LayerNorm, a linear map to twice the width."""
  b, h, w, c = x.shape
  x = jnp.pad(x, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)))
  h, w = x.shape[1], x.shape[2]
  x = x.reshape(b, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 4, 2, 5).reshape(
      b, h // 2, w // 2, 4 * c)
  x = layer_norm(dtype, f"{prefix}_merge_norm", eps)(x)
  return dense(2 * c, dtype, f"{prefix}_merge", use_bias=False)(x)


class SwinTransformer(ModelBase):
  """Blocks are `stage{s}_block{b}`, the patch merging before stage s `stage{s}_merge`."""
  patch_size: int = 4
  embed_dim: int = 96
  depths: Sequence[int] = (2, 2, 6, 2)
  heads: Sequence[int] = (3, 6, 12, 24)
  window: int = 7
  mlp_ratio: float = 4.0
  # torch's nn.LayerNorm default (timm); RobustBench's MIMIR models use 1e-6.
  norm_eps: float = 1e-5
  mean_sparse: bool = False  # Amini et al. 2024's MeanSparse layers in every block

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train  # no batch statistics, no dropout
    x = biased_conv(self.embed_dim, self.patch_size, self.patch_size, 0, dtype=self.dtype,
                    name="patch_embed")(self.prepare(x))
    x = layer_norm(self.dtype, "patch_norm", self.norm_eps)(x)
    sow(self, "stem", x)
    for s, (depth, heads) in enumerate(zip(self.depths, self.heads)):
      if s:
        x = patch_merge(x, self.dtype, self.norm_eps, f"stage{s + 1}")
      for i in range(depth):
        x = SwinBlock(x.shape[-1], heads, self.window, self.window // 2 if i % 2 else 0,
                      self.mlp_ratio, self.norm_eps, self.dtype, self.mean_sparse,
                      name=f"stage{s + 1}_block{i}")(x)
      sow(self, f"stage{s + 1}", x)
    features = jnp.mean(layer_norm(self.dtype, "norm", self.norm_eps)(x), axis=(1, 2))
    sow(self, "features", features)
    return dense(self.num_classes, self.dtype, "fc")(features).astype(jnp.float32)

