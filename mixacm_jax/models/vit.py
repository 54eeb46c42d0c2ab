"""Vision Transformers as timm's `vision_transformer.py` builds them (ViT, DeiT: a class token,
learned position embeddings, pre-norm blocks, the class token classified), with a patchify
stem or Singh et al. 2023's ConvStem (RobustBench's `convstem_models.ConvBlock`).

For ACM the blocks are grouped into four stages of equal depth; each stage's patch tokens are
sown as a spatial map (B, h, w, D) on their grid, the class token left out, under the names the
convolutional models use (`stem`, `stage1`..`stage4`), so a ViT teacher pairs with a ResNet
student stage by stage. `features` is the classified token after the final norm.
"""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mixacm_jax.models.layers import ModelBase, biased_conv, dense, gelu, layer_norm, sow

STAGES = 4



class Block(nn.Module):
  """x + proj(attention(LN(x))); then x + fc2(gelu(fc1(LN(x))))."""
  width: int
  heads: int
  mlp_ratio: float = 4.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    b, n, d = x.shape
    qkv = dense(3 * d, self.dtype, "qkv")(layer_norm(self.dtype, "norm1")(x))
    q, k, v = jnp.moveaxis(qkv.reshape(b, n, 3, self.heads, d // self.heads), 2, 0)
    logits = jnp.einsum("bqhc,bkhc->bhqk", q, k) * (d // self.heads) ** -0.5
    weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(v.dtype)
    attended = jnp.einsum("bhqk,bkhc->bqhc", weights, v).reshape(b, n, d)
    x = x + dense(d, self.dtype, "proj")(attended)
    y = dense(int(self.mlp_ratio * d), self.dtype, "fc1")(layer_norm(self.dtype, "norm2")(x))
    return x + dense(d, self.dtype, "fc2")(gelu(y))


class VisionTransformer(ModelBase):
  patch_size: int = 16
  width: int = 768
  depth: int = 12
  heads: int = 12
  mlp_ratio: float = 4.0
  # patch: a patch_size x patch_size convolution (timm); convstem: four 3x3 stride-2
  # convolutions (stem_width, x2, x4, x8; LayerNorm and GELU after each) and a 1x1 to width.
  stem: str = "patch"
  stem_width: int = 48

  def _conv(self, features, kernel, stride, padding, name):
    return biased_conv(features, kernel, stride, padding, dtype=self.dtype, name=name)

  def _stem(self, x):
    if self.stem == "patch":
      return self._conv(self.width, self.patch_size, self.patch_size, 0, "patch_embed")(x)
    if self.stem != "convstem" or self.patch_size != 16:
      raise ValueError(f"unknown ViT stem {self.stem!r} (patch size {self.patch_size}); "
                       "known: patch, convstem (patch size 16)")
    for i in range(4):
      x = self._conv(self.stem_width * 2**i, 3, 2, 1, f"stem_conv{i}")(x)
      x = gelu(layer_norm(self.dtype, f"stem_norm{i}")(x))
    return self._conv(self.width, 1, 1, 0, "stem_proj")(x)

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train  # no batch statistics, no dropout
    if self.width % self.heads or self.depth % STAGES:
      raise ValueError(f"a ViT needs width ({self.width}) divisible by heads ({self.heads}) "
                       f"and depth ({self.depth}) divisible by {STAGES}")
    grid = self._stem(self.prepare(x))
    sow(self, "stem", grid)
    b, h, w, d = grid.shape
    cls = self.param("cls_token", nn.initializers.normal(1e-6), (1, 1, d), jnp.float32)
    pos = self.param("pos_embed", nn.initializers.normal(0.02), (1, h * w + 1, d), jnp.float32)
    tokens = jnp.concatenate([jnp.broadcast_to(cls.astype(grid.dtype), (b, 1, d)),
                              grid.reshape(b, h * w, d)], axis=1) + pos.astype(grid.dtype)
    per_stage = self.depth // STAGES
    for i in range(self.depth):
      tokens = Block(self.width, self.heads, self.mlp_ratio, dtype=self.dtype,
                     name=f"block{i}")(tokens)
      if (i + 1) % per_stage == 0:
        sow(self, f"stage{(i + 1) // per_stage}", tokens[:, 1:].reshape(b, h, w, d))
    features = layer_norm(self.dtype, "norm")(tokens)[:, 0]
    sow(self, "features", features)
    return dense(self.num_classes, self.dtype, "fc")(features).astype(jnp.float32)
