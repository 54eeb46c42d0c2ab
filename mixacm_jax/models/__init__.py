"""Model registry and the one helper that runs a model and returns its sown activations."""
import dataclasses
import functools
import os
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp

from mixacm_jax.errors import ConfigError, first_line
from mixacm_jax.models.adaptive_smoothing import AdaptiveSmoothing, MixingNet
from mixacm_jax.models.alexnet import AlexNet
from mixacm_jax.models.bit_resnet import BiTResNetV2
from mixacm_jax.models.convnext import ConvNeXt
from mixacm_jax.models.mixed_nuts import MixedNUTS
from mixacm_jax.models.mobilenet_v2 import MobileNetV2
from mixacm_jax.models.preact_resnet import PreActResNet
from mixacm_jax.models.ra_resnet import RaResNet
from mixacm_jax.models.resnest import ResNeSt
from mixacm_jax.models.resnet import ResNet, SoftmaxEnsemble
from mixacm_jax.models.swin import SwinTransformer
from mixacm_jax.models.vit import VisionTransformer
from mixacm_jax.models.wide_resnet import WideResNet
from mixacm_jax.models.xcit import XCiT

_DM = dict(activation="swish", tf_same_padding=True)

MODELS: Dict[str, Callable[..., Any]] = {
    "resnet18": functools.partial(ResNet, stage_sizes=(2, 2, 2, 2)),
    "resnet34": functools.partial(ResNet, stage_sizes=(3, 4, 6, 3)),
    "resnet50": functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block="bottleneck"),
    # Chen et al. 2020's pre-activation bottleneck (bn0-relu first), the branches of their
    # RobustBench ensemble.
    "preact_bottleneck_resnet50": functools.partial(ResNet, stage_sizes=(3, 4, 6, 3),
                                                    block="preact_bottleneck"),
    "preact_resnet18": functools.partial(PreActResNet, stage_sizes=(2, 2, 2, 2)),
    # Diffenderfer et al.'s binarised CARD network (RobustBench's WidePreActResNet).
    "card_wide_preact_resnet18": functools.partial(
        PreActResNet, stage_sizes=(2, 2, 2, 2), stage_widths=(64, 192, 384, 768),
        shortcut_bn=True, bn_affine=False, preact_identity=True, conv_head=True),
    "preact_resnet": PreActResNet,  # stages, widths, shortcuts, norms, head from model.kwargs
    # torchvision's ImageNet ResNets (7x7 stride-2 stem and max-pool, v1.5 bottlenecks).
    "imagenet_resnet18": functools.partial(ResNet, stage_sizes=(2, 2, 2, 2), stem="imagenet"),
    "imagenet_resnet34": functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), stem="imagenet"),
    "imagenet_resnet50": functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block="bottleneck",
                                           stem="imagenet"),
    "imagenet_resnet101": functools.partial(ResNet, stage_sizes=(3, 4, 23, 3),
                                            block="bottleneck", stem="imagenet"),
    "imagenet_resnet152": functools.partial(ResNet, stage_sizes=(3, 8, 36, 3),
                                            block="bottleneck", stem="imagenet"),
    "imagenet_wide_resnet50_2": functools.partial(ResNet, stage_sizes=(3, 4, 6, 3),
                                                  block="bottleneck", stem="imagenet",
                                                  width_per_group=128),
    "imagenet_wide_resnet101_2": functools.partial(ResNet, stage_sizes=(3, 4, 23, 3),
                                                   block="bottleneck", stem="imagenet",
                                                   width_per_group=128),
    # torchvision's ResNeXts (grouped bottlenecks).
    "imagenet_resnext50_32x4d": functools.partial(ResNet, stage_sizes=(3, 4, 6, 3),
                                                  block="bottleneck", stem="imagenet",
                                                  groups=32, width_per_group=4),
    "imagenet_resnext101_32x8d": functools.partial(ResNet, stage_sizes=(3, 4, 23, 3),
                                                   block="bottleneck", stem="imagenet",
                                                   groups=32, width_per_group=8),
    # The AugMix ResNeXt-29 (Hendrycks et al. 2020; RobustBench's CifarResNeXt, CIFAR stem,
    # three stages).
    "resnext29_4x32d": functools.partial(ResNet, stage_sizes=(3, 3, 3), block="bottleneck",
                                         groups=4, width_per_group=32),
    "resnet": ResNet,  # stages, block, stem, widths and groups from model.kwargs
    # torchvision's AlexNet (RobustBench's ImageNet-corruptions entry 'AlexNet').
    "alexnet": AlexNet,
    # timm's ConvNeXts (stem / stem_width / stem_layers: Singh et al.'s ConvStem variants).
    "convnext_tiny": functools.partial(ConvNeXt, depths=(3, 3, 9, 3), dims=(96, 192, 384, 768)),
    "convnext_small": functools.partial(ConvNeXt, depths=(3, 3, 27, 3),
                                        dims=(96, 192, 384, 768)),
    "convnext_base": functools.partial(ConvNeXt, depths=(3, 3, 27, 3),
                                       dims=(128, 256, 512, 1024)),
    "convnext_large": functools.partial(ConvNeXt, depths=(3, 3, 27, 3),
                                        dims=(192, 384, 768, 1536)),
    "convnext": ConvNeXt,  # depths / dims from model.kwargs
    # ConvNeXt V2s as RobustBench's convnext_v2.py builds them (GRN, no layer scale; its pico
    # is named convnext_pico there); Bai2024MixedNUTS' accurate base model is the large one.
    **{f"convnextv2_{size}": functools.partial(ConvNeXt, depths=depths, dims=dims, version=2)
       for size, depths, dims in (
           ("atto", (2, 2, 6, 2), (40, 80, 160, 320)),
           ("femto", (2, 2, 6, 2), (48, 96, 192, 384)),
           ("pico", (2, 2, 6, 2), (64, 128, 256, 512)),
           ("nano", (2, 2, 8, 2), (80, 160, 320, 640)),
           ("tiny", (3, 3, 9, 3), (96, 192, 384, 768)),
           ("base", (3, 3, 27, 3), (128, 256, 512, 1024)),
           ("large", (3, 3, 27, 3), (192, 384, 768, 1536)),
           ("huge", (3, 3, 27, 3), (352, 704, 1408, 2816)))},
    # timm's ViTs (DeiT-S and ViT-B at 16-pixel patches; stem=convstem: Singh et al.'s).
    "vit_small_patch16": functools.partial(VisionTransformer, patch_size=16, width=384,
                                           depth=12, heads=6),
    "vit_base_patch16": functools.partial(VisionTransformer, patch_size=16, width=768,
                                          depth=12, heads=12),
    "vit": VisionTransformer,  # width / depth / heads from model.kwargs
    # timm's Swin Transformers (4x4 patches, 7x7 windows).
    "swin_tiny": functools.partial(SwinTransformer, embed_dim=96, depths=(2, 2, 6, 2),
                                   heads=(3, 6, 12, 24)),
    "swin_small": functools.partial(SwinTransformer, embed_dim=96, depths=(2, 2, 18, 2),
                                    heads=(3, 6, 12, 24)),
    "swin_base": functools.partial(SwinTransformer, embed_dim=128, depths=(2, 2, 18, 2),
                                   heads=(4, 8, 16, 32)),
    "swin_large": functools.partial(SwinTransformer, embed_dim=192, depths=(2, 2, 18, 2),
                                    heads=(6, 12, 24, 48)),
    "swin": SwinTransformer,  # embed_dim / depths / heads / window from model.kwargs
    # XCiT-S12 / M12 / L12 (16-pixel patches), as RobustBench's Debenedetti2022Light entries.
    "xcit_s12": functools.partial(XCiT, embed_dim=384, depth=12, heads=8),
    "xcit_m12": functools.partial(XCiT, embed_dim=512, depth=12, heads=8),
    "xcit_l12": functools.partial(XCiT, embed_dim=768, depth=12, heads=16),
    "xcit": XCiT,  # embed_dim / depth / heads / stem_strides from model.kwargs
    # MobileNetV2: the CIFAR form of the robust distillation papers' students (kuangliu's),
    # and torchvision's ImageNet form.
    "mobilenet_v2": MobileNetV2,
    "imagenet_mobilenet_v2": functools.partial(MobileNetV2, form="imagenet", activation="relu6"),
    # Bai et al. 2024's accurate + robust pair (RobustBench's Bai2024MixedNUTS entries, by name).
    "mixed_nuts": MixedNUTS,
    # Bai et al. 2023's adaptive smoothing (RobustBench's Bai2023Improving entries, by name).
    "adaptive_smoothing": AdaptiveSmoothing,
    # BiT's ResNetV2 (RobustBench's bit_rn_v2.py; MixedNUTS' accurate member is R152x2).
    "bit_resnetv2": BiTResNetV2,  # block_units / width_factor from model.kwargs
    "bit_r152x2": functools.partial(BiTResNetV2, block_units=(3, 8, 36, 3), width_factor=2),
    "wrn16_4": functools.partial(WideResNet, depth=16, widen_factor=4),
    "wrn28_10": functools.partial(WideResNet, depth=28, widen_factor=10),
    "wrn34_10": functools.partial(WideResNet, depth=34, widen_factor=10),
    "wrn70_16": functools.partial(WideResNet, depth=70, widen_factor=16),
    "wrn": WideResNet,  # depth / widen_factor from model.kwargs
    # DeepMind-style (Gowal et al. / Rebuffi et al., RobustBench's DMWideResNet and
    # DMPreActResNet): Swish, TF-'SAME' padding, CIFAR-10 normalisation inside.
    "dm_wrn28_10": functools.partial(WideResNet, depth=28, widen_factor=10, **_DM),
    "dm_wrn70_16": functools.partial(WideResNet, depth=70, widen_factor=16, **_DM),
    "dm_wrn": functools.partial(WideResNet, **_DM),
    "dm_preact_resnet18": functools.partial(PreActResNet, stage_sizes=(2, 2, 2, 2),
                                            shortcut_from_preact=False, shortcut_kernel=3,
                                            **_DM),
    # RobustArch's ImageNet RaResNet-101-2 (Peng et al. 2023, RobustBench's Peng2023Robust).
    "ra_wrn101_2": functools.partial(RaResNet, depths=(7, 11, 18, 1),
                                     stage_widths=(512, 1024, 2016, 4032),
                                     group_widths=(64, 128, 252, 504)),
    "ra_resnet": RaResNet,  # stages, widths, groups, stem, SE from model.kwargs
    # ResNeSt as RobustBench's resnest.py builds it (Sehwag2021Proxy_ResNest152, CIFAR-10).
    "resnest152": functools.partial(ResNeSt, stage_sizes=(3, 8, 36, 3)),
    "resnest": ResNeSt,  # stages, radix, groups, stem, avd / avg_down from model.kwargs
}
# The statistics RobustBench's DM models are built with, by dataset (number of classes); they
# are non-persistent buffers, so a checkpoint never carries them.
DM_NORMALISATION = {
    10: ((0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)),    # CIFAR-10
    100: ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),   # CIFAR-100
}

# A trained model's weights as a checkpoint keeps them: as trained, or their moving average.
WEIGHTS = ("raw", "ema")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16,
          "auto": None}  # bfloat16 on a GPU or TPU, float32 on a CPU (see compute_dtype)
# Fields set by create_model itself (or by Flax), not through kwargs.
_SET_HERE = ("parent", "name", "num_classes", "mean", "std", "dtype", "shared_activation")


def compute_dtype(name: str):
  """The compute dtype `name` stands for; "auto" is bfloat16 on accelerators (parameters and
  losses stay float32) and float32 on a CPU, where bfloat16 is emulated and slower."""
  if name == "auto":
    return jnp.float32 if jax.default_backend() == "cpu" else jnp.bfloat16
  return DTYPES[name]


def architecture_fields(name: str) -> Tuple[str, ...]:
  """The constructor fields of a registered architecture that kwargs may override."""
  fn = MODELS[name]
  cls = fn.func if isinstance(fn, functools.partial) else fn
  return tuple(sorted(f.name for f in dataclasses.fields(cls) if f.name not in _SET_HERE))


def create_model(name: str, *, num_classes: int, mean: Optional[Sequence[float]] = None,
                 std: Optional[Sequence[float]] = None, dtype: str = "float32", **kwargs):
  """Builds a registered architecture; `kwargs` override its fields (e.g. `base_width=8`)."""
  if name not in MODELS:
    raise ConfigError(f"unknown architecture {name!r}; known: {', '.join(sorted(MODELS))}")
  if name.startswith("dm_") and mean is None and std is None:
    if num_classes not in DM_NORMALISATION:  # never another dataset's statistics, silently
      raise ConfigError(f"{name!r} normalises its inputs inside, with its dataset's mean and "
                        f"std, and {num_classes} classes match no known dataset: set "
                        "model.mean and model.std")
    mean, std = DM_NORMALISATION[num_classes]  # as RobustBench constructs these models
  if dtype not in DTYPES:
    raise ConfigError(f"unknown compute dtype {dtype!r}; known: {', '.join(DTYPES)}")
  unknown = sorted(set(kwargs) - set(architecture_fields(name)))
  if unknown:
    raise ConfigError(f"bad model.kwargs for {name!r}: architecture {name!r} takes no "
                      f"{', '.join(map(repr, unknown))}; its fields: "
                      f"{', '.join(architecture_fields(name))}")
  try:
    return MODELS[name](num_classes=num_classes, mean=tuple(mean) if mean else None,
                        std=tuple(std) if std else None, dtype=compute_dtype(dtype), **kwargs)
  except TypeError as e:
    raise ConfigError(f"bad model.kwargs for {name!r}: {e}") from None


def create_model_from_config(model_cfg, num_classes: int):
  return create_model(model_cfg.name, num_classes=num_classes, mean=model_cfg.get("mean"),
                      std=model_cfg.get("std"), dtype=model_cfg.get("dtype", "float32"),
                      **dict(model_cfg.get("kwargs", {})))


def _host_memory() -> int:
  try:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
  except (ValueError, OSError, AttributeError):  # not POSIX: no limit known
    return 1 << 62


def init_variables(model, rng: jax.Array, image_shape: Sequence[int]) -> Dict[str, Any]:
  """params + batch_stats for a model taking images of `image_shape` (H, W, C). A model
  whose fields cannot build it (model.kwargs of the wrong type or value) is a ConfigError."""
  init = jax.jit(functools.partial(model.init, train=False))
  x = jnp.zeros((1, *image_shape), jnp.float32)
  try:
    shapes = jax.eval_shape(init, rng, x)
  except (TypeError, ValueError, NotImplementedError, OverflowError) as e:
    raise ConfigError(f"{type(model).__name__} cannot be built for images of shape "
                      f"{tuple(image_shape)} with its fields (model.kwargs?): "
                      f"{first_line(e, 300)}") from None
  size = sum(l.size * l.dtype.itemsize for l in jax.tree_util.tree_leaves(shapes))
  if size > _host_memory():
    raise ConfigError(f"{type(model).__name__} with these fields (model.kwargs?) has "
                      f"{size / 2**30:.3g} GiB of variables, more than this host's memory")
  variables = init(rng, x)
  return {k: v for k, v in variables.items() if k in ("params", "batch_stats")}


def apply_model(model, variables: Mapping[str, Any], x: jnp.ndarray, *, train: bool,
                names: Sequence[str] = ()) -> Tuple[jnp.ndarray, Dict[str, jnp.ndarray], Any]:
  """Runs `model`; returns (logits, {name: sown activation}, new batch_stats).

  In train mode BatchNorm uses batch statistics and the new running statistics are
  returned; in eval mode the returned batch_stats are the ones passed in.
  """
  mutable = ["intermediates"] + (["batch_stats"] if train else [])
  logits, state = model.apply(dict(variables), x, train=train, mutable=mutable)
  sown = state.get("intermediates", {})
  check_sown(model, names, sown)
  new_batch_stats = state["batch_stats"] if train else variables.get("batch_stats", {})
  return logits, {n: sown_at(sown, n) for n in names}, new_batch_stats


def sown_at(sown, name: str):
  """The activation sown as `name`; a member of an ensemble sows under its own name, so
  `robust/stage1` is the robust member's `stage1`. None if there is none."""
  node = sown
  for part in name.split("/"):
    if not isinstance(node, Mapping) or part not in node:
      return None
    node = node[part]
  return None if isinstance(node, Mapping) else node


def _sown_names(sown, prefix: str = "") -> List[str]:
  return [n for k, v in sown.items() for n in (
      _sown_names(v, f"{prefix}{k}/") if isinstance(v, Mapping) else [prefix + k])]


def check_sown(model, names: Sequence[str], sown, role: str = "") -> None:
  """Raises ConfigError naming the blocks of `names` that are not among `sown` (what the
  model sows, or their names); `role` (teacher, student) says which model it is."""
  found = _sown_names(sown) if isinstance(sown, Mapping) else list(sown)
  missing = [n for n in names if n not in found]
  if missing:
    who = f"the {role} ({type(model).__name__})" if role else type(model).__name__
    raise ConfigError(f"{who} does not sow {missing}; expected {list(names)}, found "
                      f"{sorted(found)}")


def feature_names(model, image_shape: Sequence[int]) -> Tuple[str, ...]:
  """The names a model sows, sorted (found by tracing the model, not from a list); an
  ensemble member's as `member/name`."""
  def run():
    variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, *image_shape)), train=False)
    _, state = model.apply(variables, jnp.zeros((1, *image_shape)), mutable=["intermediates"])
    return state["intermediates"]
  return tuple(sorted(_sown_names(jax.eval_shape(run))))
