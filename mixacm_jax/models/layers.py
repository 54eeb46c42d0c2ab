"""Layers with PyTorch conventions, so that PyTorch weights port one-to-one.

* Convolutions pad explicitly and symmetrically (`k // 2` on each side): Flax's 'SAME' pads a
  stride-2 conv on one side only, which shifts every feature map relative to PyTorch. The
  DeepMind-style models are the exception: their PyTorch port pads by hand to mimic TF's
  'SAME' (0 before, 1 after for a stride-2 3x3 conv), and `tf_same_padding` does the same.
* BatchNorm uses PyTorch's eps (1e-5) and momentum (0.1 in PyTorch terms, 0.9 in Flax terms).
"""
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp

# PyTorch-equivalent weight init (He normal, fan_out) as in RobustBench's WideResNet.
conv_kernel_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def conv(features: int, kernel: int, stride: int = 1, *, use_bias: bool = False,
         dtype: Any = jnp.float32, name: Optional[str] = None,
         tf_same_padding: bool = False, groups: int = 1) -> nn.Conv:
  """A kxk conv with PyTorch's symmetric padding `k // 2`, or TF-'SAME' padding
  (total max(k - stride, 0), the odd pixel after) for inputs divisible by the stride;
  `groups` = features: depthwise."""
  if tf_same_padding:
    total = max(kernel - stride, 0)
    pad = (total // 2, total - total // 2)
  else:
    pad = (kernel // 2, kernel // 2)
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                 padding=(pad, pad), use_bias=use_bias, feature_group_count=groups,
                 kernel_init=conv_kernel_init, dtype=dtype, param_dtype=jnp.float32, name=name)


def biased_conv(features: int, kernel: int, stride: int, padding: int, *, dtype: Any,
                name: str) -> nn.Conv:
  """A kxk conv with a bias and `padding` on every side (timm's stems and downsamplers)."""
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                 padding=((padding, padding),) * 2, kernel_init=conv_kernel_init, dtype=dtype,
                 param_dtype=jnp.float32, name=name)


def batch_norm(train: bool, *, axis_name: Optional[str] = None, dtype: Any = jnp.float32,
               name: Optional[str] = None, affine: bool = True) -> nn.BatchNorm:
  """BatchNorm with PyTorch's defaults; `axis_name` syncs batch statistics across devices;
  `affine=False`: no scale and shift (torch's BatchNorm2d(affine=False))."""
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                      axis_name=axis_name if train else None, dtype=dtype,
                      param_dtype=jnp.float32, use_scale=affine, use_bias=affine, name=name)


def dense(features: int, dtype: Any = jnp.float32, name: Optional[str] = None,
          use_bias: bool = True) -> nn.Dense:
  """A Linear in the compute dtype with float32 parameters."""
  return nn.Dense(features, use_bias=use_bias, dtype=dtype, param_dtype=jnp.float32, name=name)


def normalize_input(x: jnp.ndarray, mean: Optional[Sequence[float]],
                    std: Optional[Sequence[float]]) -> jnp.ndarray:
  """Per-channel (x - mean) / std inside the model; robust checkpoints expect [0, 1] inputs."""
  if mean is not None:
    x = x - jnp.asarray(mean, x.dtype)
  if std is not None:
    x = x / jnp.asarray(std, x.dtype)
  return x


def per_image_standardize(x: jnp.ndarray) -> jnp.ndarray:
  """(x - mean) / max(std, 1 / sqrt(n)) over each image's n values; std with n - 1."""
  n = x[0].size
  mean = jnp.mean(x, axis=(1, 2, 3), keepdims=True)
  std = jnp.std(x, axis=(1, 2, 3), keepdims=True, ddof=1)
  return (x - mean) / jnp.maximum(std, 1.0 / n**0.5)


def mixing_dtype(dtype: Any) -> Any:
  """The dtype of a mixed classifier's mix of its members' logits: float32, or the model's
  own where it is wider (float64 in the parity tool's comparison)."""
  return jnp.promote_types(dtype, jnp.float32)


def sow(module: nn.Module, name: str, value: jnp.ndarray) -> None:
  """Hands an activation out through the `intermediates` collection, keeping only the last write."""
  module.sow("intermediates", name, value,
             init_fn=lambda: None, reduce_fn=lambda _, new: new)


LAYER_NORM_EPS = 1e-6  # timm's LayerNorm and LayerNorm2d (ConvNeXt, ViT)


def layer_norm(dtype: Any, name: str, eps: float = LAYER_NORM_EPS) -> nn.LayerNorm:
  """timm's eps 1e-6 by default; torch's own nn.LayerNorm (Swin) has 1e-5."""
  return nn.LayerNorm(eps, dtype=dtype, param_dtype=jnp.float32, name=name)


def gelu(x: jnp.ndarray) -> jnp.ndarray:
  """torch's nn.GELU: the exact (erf) form, not Flax's default tanh approximation."""
  return nn.gelu(x, approximate=False)


ACTIVATIONS = {
    "relu": nn.relu,
    "relu6": nn.relu6,  # torchvision's MobileNetV2
    "swish": nn.swish,
}


class MeanSparse(nn.Module):
  """Amini et al. 2024's MeanSparse: each channel's values within threshold * std of its
  mean are replaced by the mean. Mean, variance and threshold are fixed statistics of a
  trained model (kept with the BatchNorm statistics); threshold 0 is the identity."""

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    mean = self.variable("batch_stats", "mean", jnp.zeros, (c,), jnp.float32).value
    var = self.variable("batch_stats", "var", jnp.zeros, (c,), jnp.float32).value
    threshold = self.variable("batch_stats", "threshold", jnp.zeros, (), jnp.float32).value
    mean = mean.astype(x.dtype)
    crop = (threshold * jnp.sqrt(var)).astype(x.dtype)
    return jnp.where(jnp.abs(x - mean) < crop, mean, x)


class PSSiLU(nn.Module):
  """x (sigmoid(|a| x) - |b|) / (1 - |b|) with learned scalars a, b (Dai et al. 2021), one
  module that every layer of the network shares."""

  @nn.compact
  def __call__(self, x):
    alpha = jnp.abs(self.param("alpha", nn.initializers.ones, (1,), jnp.float32))
    beta = jnp.abs(self.param("beta", nn.initializers.constant(1e-8), (1,), jnp.float32))
    return x * (nn.sigmoid(alpha.astype(x.dtype) * x) - beta.astype(x.dtype)) / (
        1 - beta.astype(x.dtype))


# Activations with parameters: the model builds one and shares it with every block.
LEARNED_ACTIVATIONS = {"pssilu": PSSiLU}


def activation(name: str):
  try:
    return ACTIVATIONS[name]
  except KeyError:
    raise ValueError(f"unknown activation {name!r}; known: {sorted(ACTIVATIONS)}") from None


class ConvBNModule(nn.Module):
  """A module that builds PyTorch-style convs and BatchNorms in its compute dtype."""
  dtype: Any = jnp.float32
  bn_axis_name: Optional[str] = None
  activation: str = "relu"
  tf_same_padding: bool = False
  shared_activation: Any = None  # a learned activation built once by the model

  def act(self, x):
    if self.activation in LEARNED_ACTIVATIONS:
      if self.shared_activation is None:
        raise ValueError(f"{type(self).__name__} does not build the learned activation "
                         f"{self.activation!r}; only WideResNet does")
      return self.shared_activation(x)
    return ACTIVATIONS[self.activation](x)

  def bn(self, train: bool, name: str, affine: bool = True) -> nn.BatchNorm:
    return batch_norm(train, axis_name=self.bn_axis_name, dtype=self.dtype, name=name,
                      affine=affine)

  def conv(self, features: int, kernel: int, stride: int = 1, name: Optional[str] = None,
           use_bias: bool = False, groups: int = 1) -> nn.Conv:
    return conv(features, kernel, stride, use_bias=use_bias, dtype=self.dtype, name=name,
                tf_same_padding=self.tf_same_padding, groups=groups)



class ModelBase(ConvBNModule):
  """Fields every architecture shares; subclasses add their own."""
  num_classes: int = 10
  mean: Optional[Sequence[float]] = None
  std: Optional[Sequence[float]] = None
  # Each image scaled to zero mean and unit (sample) std first, as Ding et al.'s MMA models.
  per_image_standardization: bool = False
  # Logits as cosines of the features and each class's weight (Pang et al. 2020), no bias.
  cosine_head: bool = False

  def block_kwargs(self):
    return dict(dtype=self.dtype, bn_axis_name=self.bn_axis_name, activation=self.activation,
                tf_same_padding=self.tf_same_padding, shared_activation=self.shared_activation)

  def learned_activation(self):
    """The model's one learned activation module (None for a fixed activation); call inside
    the compact __call__ and pass it to the blocks."""
    cls = LEARNED_ACTIVATIONS.get(self.activation)
    return cls(name="activation") if cls else None

  def prepare(self, x: jnp.ndarray) -> jnp.ndarray:
    x = x.astype(self.dtype)
    if self.per_image_standardization:
      x = per_image_standardize(x)
    return normalize_input(x, self.mean, self.std)

  def head(self, x: jnp.ndarray) -> jnp.ndarray:
    """Global average pool, sow `features`, linear classifier; logits are float32."""
    features = jnp.mean(x, axis=(1, 2))
    sow(self, "features", features)
    if self.cosine_head:
      logits = CosineDense(self.num_classes, dtype=self.dtype, name="fc")(features)
    else:
      logits = dense(self.num_classes, dtype=self.dtype, name="fc")(features)
    return logits.astype(jnp.float32)


class CosineDense(nn.Module):
  """x / |x| times each column of the kernel over its norm: a linear layer of unit vectors."""
  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    kernel = self.param("kernel", nn.initializers.lecun_normal(), (x.shape[-1], self.features),
                        jnp.float32)
    unit = lambda v, axis: v / jnp.maximum(jnp.linalg.norm(v, axis=axis, keepdims=True), 1e-12)
    return unit(x, -1).astype(self.dtype) @ unit(kernel, 0).astype(self.dtype)

