"""XCiT (El-Nouby et al. 2021) as timm's `xcit.py` builds it, with RobustBench's settings
(Debenedetti et al. 2022: layer-scale, every token normalised in the class-attention blocks;
for CIFAR the first two stem convolutions at stride 1): a stem of 3x3 convolutions with
BatchNorm and GELU, Fourier position encodings, blocks of cross-covariance attention (XCA),
local patch interaction (two depthwise 3x3 convolutions around GELU and BatchNorm) and an MLP,
each scaled by a learned gamma; then two class-attention blocks and the class token
classified.

For ACM the XCA blocks are grouped into four stages of equal depth, each stage's tokens sown
as a spatial map (B, h, w, D) on their grid (the class token joins only after them), under
the names the convolutional models use (`stem`, `stage1`..`stage4`, `features`).
"""
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mixacm_jax.models.layers import ConvBNModule, ModelBase, dense, gelu, layer_norm, sow

STAGES = 4



def fourier_features(h: int, w: int, hidden: int = 32, temperature: float = 10000.0):
  """(h, w, 2 hidden): timm's PositionalEncodingFourier before its projection."""
  eps, scale = 1e-6, 2 * np.pi
  y = np.repeat(np.arange(1, h + 1, dtype=np.float32)[:, None], w, 1)
  x = np.repeat(np.arange(1, w + 1, dtype=np.float32)[None, :], h, 0)
  y, x = y / (y[-1:, :] + eps) * scale, x / (x[:, -1:] + eps) * scale
  dim_t = temperature ** (2 * (np.arange(hidden) // 2) / hidden).astype(np.float32)
  pos = []
  for e in (y, x):
    p = e[:, :, None] / dim_t
    pos.append(np.stack([np.sin(p[:, :, 0::2]), np.cos(p[:, :, 1::2])], axis=3).reshape(h, w, -1))
  return np.concatenate(pos, axis=2).astype(np.float32)


class XCABlock(ConvBNModule):
  """x + g1 XCA(LN(x)); x + g3 LPI(LN(x)); x + g2 MLP(LN(x)), on a (B, h, w, D) grid."""
  heads: int = 8
  mlp_ratio: float = 4.0

  @nn.compact
  def __call__(self, x, train: bool):
    b, h, w, d = x.shape
    gamma = lambda i: self.param(f"gamma{i}", nn.initializers.ones, (d,), jnp.float32).astype(
        x.dtype)
    y = XCA(self.heads, self.dtype, name="attn")(
        layer_norm(self.dtype, "norm1")(x).reshape(b, h * w, d))
    x = x + gamma(1) * y.reshape(b, h, w, d)
    y = layer_norm(self.dtype, "norm3")(x)
    y = self.conv(d, 3, 1, "lpi_conv1", use_bias=True, groups=d)(y)
    y = self.bn(train, "lpi_bn")(gelu(y))
    x = x + gamma(3) * self.conv(d, 3, 1, "lpi_conv2", use_bias=True, groups=d)(y)
    y = dense(int(d * self.mlp_ratio), self.dtype, "fc1")(layer_norm(self.dtype, "norm2")(x))
    return x + gamma(2) * dense(d, self.dtype, "fc2")(gelu(y))


class XCA(nn.Module):
  """Attention across channels: softmax(unit(q)^T unit(k) * temperature) per head, the
  columns of q and k scaled to unit length over the tokens."""
  heads: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    b, n, d = x.shape
    temperature = self.param("temperature", nn.initializers.ones, (self.heads, 1, 1),
                             jnp.float32)
    qkv = dense(3 * d, self.dtype, "qkv")(x).reshape(b, n, 3, self.heads, d // self.heads)
    q, k, v = jnp.moveaxis(qkv, 2, 0)  # (b, n, heads, c)
    unit = lambda t: t / jnp.maximum(jnp.linalg.norm(t, axis=1, keepdims=True), 1e-12)
    logits = jnp.einsum("bnhc,bnhe->bhce", unit(q), unit(k)) * temperature.astype(q.dtype)
    weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(v.dtype)
    out = jnp.einsum("bhce,bnhe->bnhc", weights, v).reshape(b, n, d)
    return dense(d, self.dtype, "proj")(out)


class ClassAttentionBlock(nn.Module):
  """CaiT's class attention: the class token attends to every token; with `tokens_norm`
  every token is normalised before the MLP, which only the class token passes through."""
  heads: int
  mlp_ratio: float = 4.0
  tokens_norm: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    b, n, d = x.shape
    gamma = lambda i: self.param(f"gamma{i}", nn.initializers.ones, (d,), jnp.float32).astype(
        x.dtype)
    y = layer_norm(self.dtype, "norm1")(x)
    c = d // self.heads
    q = dense(d, self.dtype, "q")(y[:, :1]).reshape(b, 1, self.heads, c)
    k = dense(d, self.dtype, "k")(y).reshape(b, n, self.heads, c)
    v = dense(d, self.dtype, "v")(y).reshape(b, n, self.heads, c)
    logits = jnp.einsum("bqhc,bkhc->bhqk", q, k) * c ** -0.5
    weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(v.dtype)
    cls = dense(d, self.dtype, "proj")(jnp.einsum("bhqk,bkhc->bqhc", weights, v).reshape(b, 1, d))
    x = x + gamma(1) * jnp.concatenate([cls, y[:, 1:]], axis=1)
    norm2 = layer_norm(self.dtype, "norm2")
    x = norm2(x) if self.tokens_norm else jnp.concatenate([norm2(x[:, :1]), x[:, 1:]], axis=1)
    mlp = dense(d, self.dtype, "fc2")(gelu(dense(int(d * self.mlp_ratio), self.dtype, "fc1")(
        x[:, :1])))
    # As timm: the residual adds the patch tokens to themselves too.
    return x + jnp.concatenate([gamma(2) * mlp, x[:, 1:]], axis=1)


class XCiT(ModelBase):
  """Stem convolutions `stem_conv{0,2,4,6}` / `stem_bn{...}` (timm's Sequential positions),
  blocks `block{i}`, class-attention blocks `cls_block{i}`."""
  embed_dim: int = 384
  depth: int = 12
  heads: int = 8
  mlp_ratio: float = 4.0
  # The stem's strides: (2, 2, 2, 2) for 16-pixel patches, (2, 2, 2) for 8; RobustBench's
  # CIFAR models (patches of 4) keep 16's four convolutions at (1, 1, 2, 2).
  stem_strides: Sequence[int] = (2, 2, 2, 2)
  cls_attn_layers: int = 2
  tokens_norm: bool = True

  def _stem(self, x, train):
    n = len(self.stem_strides)
    if n not in (3, 4):
      raise ValueError(f"an XCiT stem has 3 or 4 convolutions, not {n}")
    for i, stride in enumerate(self.stem_strides):
      x = self.conv(self.embed_dim // 2 ** (n - 1 - i), 3, stride, f"stem_conv{2 * i}")(x)
      x = self.bn(train, f"stem_bn{2 * i}")(x)
      x = gelu(x) if i < n - 1 else x
    return x

  @nn.compact
  def __call__(self, x, train: bool = False):
    if self.embed_dim % self.heads or self.depth % STAGES:
      raise ValueError(f"an XCiT needs embed_dim ({self.embed_dim}) divisible by heads "
                       f"({self.heads}) and depth ({self.depth}) divisible by {STAGES}")
    x = self._stem(self.prepare(x), train)
    b, h, w, d = x.shape
    pos = nn.Conv(d, (1, 1), dtype=self.dtype, param_dtype=jnp.float32, name="pos_proj")(
        jnp.asarray(fourier_features(h, w), self.dtype)[None])
    x = x + pos
    sow(self, "stem", x)
    per_stage = self.depth // STAGES
    for i in range(self.depth):
      x = XCABlock(heads=self.heads, mlp_ratio=self.mlp_ratio, name=f"block{i}",
                   **self.block_kwargs())(x, train)
      if (i + 1) % per_stage == 0:
        sow(self, f"stage{(i + 1) // per_stage}", x)
    cls = self.param("cls_token", nn.initializers.truncated_normal(0.02), (1, 1, d), jnp.float32)
    tokens = jnp.concatenate([jnp.broadcast_to(cls.astype(x.dtype), (b, 1, d)),
                              x.reshape(b, h * w, d)], axis=1)
    for i in range(self.cls_attn_layers):
      tokens = ClassAttentionBlock(self.heads, self.mlp_ratio, self.tokens_norm, self.dtype,
                                   name=f"cls_block{i}")(tokens)
    features = layer_norm(self.dtype, "norm")(tokens)[:, 0]
    sow(self, "features", features)
    return dense(self.num_classes, self.dtype, "fc")(features).astype(jnp.float32)
