"""RobustBench's PyTorch code, read from the installed package without running its `__init__`,
and its model zoo turned into recipes for the Flax models.

The package's `__init__` imports torchvision and timm as whole packages, while the zoo tables
and `model_zoo/architectures/*.py` need only torch and torchvision's model definitions. So
`pip install --no-deps robustbench` is enough: `zoo_package()` registers the package's folders
as bare packages, and torchvision's models through `tools.torch_reference` (which loads them
without torchvision's compiled operators).

`derive_recipes()` builds every zoo entry's own PyTorch module with its weights on the meta
device (no memory, no initialisation; constants such as a normalisation's mean stay real) and
reads the recipe off the module itself: its family, its depths and widths, its activation, its
normalisation (probed through the entry's own `forward`), and where RobustBench's loader finds
its weights. `python -m tools.robustbench_zoo` (from the repository root; needs torch and
`pip install --no-deps robustbench`) writes the result as `mixacm_jax/port/zoo_recipes.py`,
and the coverage table and list of unsupported entries in `docs/port.md`.
"""
import argparse
import ast
import contextlib
import dataclasses
import importlib
import importlib.util
import os
import subprocess
import sys
import types
import warnings
from typing import Any, Callable, Dict, Optional, Tuple

from mixacm_jax.errors import ConfigError
from mixacm_jax.port import zoo
from tools import torch_reference

# RobustBench's dataset tables: (module, table) in model_zoo/.
ZOO_TABLES = {"cifar10": ("cifar10", "cifar_10_models"),
              "cifar100": ("cifar100", "cifar_100_models"),
              "imagenet": ("imagenet", "imagenet_models")}
IMAGE_SHAPES = {"cifar10": (32, 32, 3), "cifar100": (32, 32, 3), "imagenet": (224, 224, 3)}
# The input side of RobustBench's ImageNet preprocessings (robustbench/data.py): Res256Crop224
# resizes the shorter side to 256 and crops the centre 224 (bicubic in BicubicRes256Crop224);
# Crop288 crops the centre 288; Res224 resizes to 224x224.
PREPROCESSING_SIDES = {"Res256Crop224": 224, "Crop288": 288, "BicubicRes256Crop224": 224,
                       "Res224": 224}


def _package_root(source: Optional[str] = None) -> str:
  """The robustbench package folder: of the checkout `source`, else the installed one."""
  if "robustbench" in sys.modules:
    return list(sys.modules["robustbench"].__path__)[0]
  if source:
    root = os.path.join(source, "robustbench")
    if not os.path.isfile(os.path.join(root, "model_zoo", "models.py")):
      raise ConfigError(f"{source} is not a RobustBench checkout (no "
                        "robustbench/model_zoo/models.py)")
    return root
  spec = importlib.util.find_spec("robustbench")
  if spec is None or not spec.submodule_search_locations:
    raise ConfigError("robustbench is not installed: pip install --no-deps -r "
                      "requirements-port.txt")
  return spec.submodule_search_locations[0]


class Unbuildable(Exception):
  """A zoo entry whose PyTorch module needs a library that is not installed."""


def zoo_package(source: Optional[str] = None) -> str:
  """Registers robustbench, robustbench.model_zoo and its architectures folder as bare
  packages (unless the real package is already imported), from the checkout `source` or the
  installed wheel; returns the package's folder."""
  root = _package_root(source)
  if "robustbench" in sys.modules:
    return root
  for name, folder in (("robustbench", ""), ("robustbench.model_zoo", "model_zoo"),
                       ("robustbench.model_zoo.architectures",
                        os.path.join("model_zoo", "architectures"))):
    torch_reference.bare_package(name, os.path.join(root, folder))
  torch_reference.torchvision_models()  # the ImageNet zoo builds torchvision's ResNets
  return root


def architecture_module(name: str):
  """e.g. `architecture_module("wide_resnet").WideResNet`."""
  root = zoo_package()
  if not os.path.isfile(os.path.join(root, "model_zoo", "architectures", f"{name}.py")):
    raise ConfigError(f"robustbench has no architecture file {name}.py")
  return importlib.import_module(f"robustbench.model_zoo.architectures.{name}")


def _refusing_module(name: str) -> types.ModuleType:
  """A stand-in for a library that is not installed: importing it works, and anything built
  from it raises Unbuildable (so only the zoo entries that need it are unsupported)."""
  module = types.ModuleType(name)
  module.__path__ = []

  def refuse(attr):
    if attr.startswith("__"):
      raise AttributeError(attr)

    class Refused:
      def __init__(self, *args, **kwargs):
        raise Unbuildable(f"{name}.{attr} (not installed)")

      def __call__(self, *args, **kwargs):
        raise Unbuildable(f"{name}.{attr} (not installed)")
    return Refused
  module.__getattr__ = refuse
  return module


def zoo_entries(dataset: str) -> Dict[str, Dict[str, dict]]:
  """{threat model: {entry name: RobustBench's entry ({'model': constructor, ...})}}. A
  library the zoo file imports and that is not installed (a newer zoo's geotorch) becomes a
  stand-in that refuses to build."""
  zoo_package()
  module_name, table = ZOO_TABLES[dataset]
  for _ in range(8):
    try:
      module = importlib.import_module(f"robustbench.model_zoo.{module_name}")
      break
    except ModuleNotFoundError as e:
      if not e.name or e.name.startswith("robustbench") or e.name in sys.modules:
        raise Unbuildable(f"robustbench's {module_name}.py does not import here ({e})") from None
      sys.modules[e.name] = _refusing_module(e.name)
    except Exception as e:  # pylint: disable=broad-except
      raise Unbuildable(f"robustbench's {module_name}.py does not import here "
                        f"({type(e).__name__}: {e})") from None
  else:
    raise Unbuildable(f"robustbench's {module_name}.py needs too many missing libraries")
  return {getattr(threat, "value", str(threat)): dict(entries)
          for threat, entries in getattr(module, table).items()}


def randomise_batchnorm(net, seed: int = 0):
  """Gives every BatchNorm of a PyTorch `net` random, non-trivial running statistics and
  affine parameters (fresh ones are mean 0, var 1, scale 1, shift 0, which would hide a
  mis-ported BatchNorm), and puts it in eval mode. For the port's proofs and benchmarks."""
  import torch  # pylint: disable=g-import-not-at-top
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for m in net.modules():
      if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
        m.running_mean.copy_(0.2 * torch.randn(m.num_features, generator=g))
        m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=g))
        if m.affine:
          m.weight.copy_(1 + 0.2 * torch.randn(m.num_features, generator=g))
          m.bias.copy_(0.1 * torch.randn(m.num_features, generator=g))
  return net.eval()


def randomise_initial_constants(net, seed: int = 0, mean_sparse_threshold: float = 0.5):
  """Moves the parameters initialised to constants off them: every LayerNorm's and
  GroupNorm's affine parameters, ConvNeXt V2's GRN (zeros), every layer scale (`gamma`, XCiT's
  `gamma1`..`gamma3`: 1e-6 or 1, which would make each residual branch vanish or hide a swap;
  scalar constants such as a mixing model's are left alone), XCiT's attention temperatures, a ViT's
  class token (about 0) and position embeddings; and MeanSparse's statistics and threshold
  (`mean_sparse_threshold`; 0: the identity)."""
  import torch  # pylint: disable=g-import-not-at-top
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for module in net.modules():
      for name, p in module.named_parameters(recurse=False):
        if name in ("cls_token", "pos_embed"):
          p.copy_(0.5 * torch.randn(p.shape, generator=g))
        elif p.ndim and (name.startswith("gamma") or name == "temperature"
                         or (name == "beta" and type(module).__name__ == "GRN")
                         or (p.ndim == 1 and "LayerNorm" in type(module).__name__)
                         or isinstance(module, torch.nn.GroupNorm)):
          p.copy_((0.0 if name in ("bias", "beta") else 1.0)
                  + 0.3 * torch.randn(p.shape, generator=g))
      if type(module).__name__ in ("MeanSparse", "MeanSparse_imagenet"):
        module.running_mean.copy_(0.2 * torch.randn(module.running_mean.shape, generator=g))
        module.running_var.copy_(0.5 + torch.rand(module.running_var.shape, generator=g))
        module.threshold.fill_(mean_sparse_threshold)
  return net


def randomise_learned_activations(net, seed: int = 0):
  """Moves PSSiLU's scalars (alpha, beta) off their initial 1 and 1e-8, which a mis-ported
  activation would match by chance."""
  import torch  # pylint: disable=g-import-not-at-top
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for module in net.modules():
      if type(module).__name__ == "PSSiLU":  # not a mixed classifier's alpha, a constant
        module.alpha.fill_(float(0.5 + torch.rand(1, generator=g)))
        module.beta.fill_(float(0.2 * torch.rand(1, generator=g)))
  return net


# ---------------------------------------------------------------------------------------------
# Recipes: what a zoo entry's PyTorch module is, in the terms of the Flax model registry.


class Unsupported(Exception):
  """A zoo entry this project cannot build in Flax; the message says why."""


@contextlib.contextmanager
def weights_on_meta():
  """Builds modules with every tensor factory on the meta device, except tensors written out
  as data (`torch.tensor`, `torch.as_tensor`), so normalisation constants stay readable."""
  import torch  # pylint: disable=g-import-not-at-top
  from torch.overrides import TorchFunctionMode  # pylint: disable=g-import-not-at-top
  factories = {torch.empty, torch.zeros, torch.ones, torch.full, torch.rand, torch.randn,
               torch.randint, torch.empty_strided}

  class Meta(TorchFunctionMode):
    def __torch_function__(self, func, types_, args=(), kwargs=None):
      kwargs = dict(kwargs or {})
      if func in factories and kwargs.get("device") is None:
        kwargs["device"] = "meta"
      return func(*args, **kwargs)
  with Meta():
    yield


@contextlib.contextmanager
def cuda_as_cpu():
  """Builds modules that move their constants to CUDA in their constructor (BiT's bit_rn.py)
  on the CPU: `.cuda()` returns the tensor or module as it is."""
  import torch  # pylint: disable=g-import-not-at-top
  originals = torch.Tensor.cuda, torch.nn.Module.cuda
  torch.Tensor.cuda = torch.nn.Module.cuda = lambda self, *args, **kwargs: self
  try:
    yield
  finally:
    torch.Tensor.cuda, torch.nn.Module.cuda = originals


def _activation(module) -> str:
  import torch  # pylint: disable=g-import-not-at-top
  name = type(module).__name__
  if isinstance(module, torch.nn.ReLU):
    return "relu"
  if isinstance(module, torch.nn.SiLU) or name == "Swish":
    return "swish"
  if name == "PSSiLU":
    return "pssilu"
  raise Unsupported(f"activation {name} (the Flax models have ReLU, Swish and PSSiLU)")


def _stage_sizes(net, names) -> Tuple[int, ...]:
  return tuple(len(getattr(net, n)) for n in names)


# Each reads, off an instance of a RobustBench family, the Flax class and the fields that
# build its twin (every field that can differ from the class's default).
def _wide_resnet(net, bias: bool = True) -> Tuple[str, dict]:
  blocks = len(net.block1.layer)
  widen = net.block1.layer[0].conv1.out_channels // 16
  expected = [16 * widen, 32 * widen, 64 * widen]
  found = [getattr(net, f"block{i}").layer[0].conv1.out_channels for i in (1, 2, 3)]
  if found != expected or net.conv1.out_channels != 16:
    raise Unsupported(f"per-stage widths {found} (a WideResNet has 16k, 32k, 64k)")
  if any(len(getattr(net, f"block{i}").layer) != blocks for i in (2, 3)):
    raise Unsupported("per-stage depths")
  if (net.fc.bias is not None) != bias:
    raise Unsupported("a classifier without bias" if bias else "a classifier with bias")
  return "WideResNet", {"depth": 6 * blocks + 4, "widen_factor": widen, "activation": "relu",
                        "tf_same_padding": False}


def _robust_wide_resnet(net) -> Tuple[str, dict]:
  strides = [g.layer[0].conv1.stride[0] for g in net.blocks]
  if strides != [1, 2, 2]:
    raise Unsupported(f"stage strides {strides}")
  return "WideResNet", {"stem_width": net.stem_conv.out_channels,
                        "stage_widths": tuple(g.layer[0].conv1.out_channels for g in net.blocks),
                        "stage_blocks": tuple(len(g.layer) for g in net.blocks),
                        "activation": "relu", "tf_same_padding": False}


def _robust_resnet(net) -> Tuple[str, dict]:
  """RobustBench's robust_resnet.PreActResNet (Huang et al. 2022) with basic blocks only: a
  pre-activation WideResNet of per-stage widths and depths."""
  activations = {type(g.layer[0].act).__name__ for g in net.blocks} | {type(net.act1).__name__}
  if set(net.block_types) != {"basic_block"} or tuple(net.stride_config) != (1, 2, 2) \
      or net.stem_conv.stride != (1, 1) or len(activations) != 1:
    raise Unsupported("a RobustResNet with robust_res_blocks, other strides or mixed "
                      "activations")
  kernels = {g.layer[0].conv1.kernel_size for g in net.blocks}
  if kernels != {(3, 3)}:
    raise Unsupported(f"a RobustResNet with kernels {sorted(kernels)}")
  return "WideResNet", {"stem_width": net.stem_conv.out_channels,
                        "stage_widths": tuple(net.channel_configs[1:]),
                        "stage_blocks": tuple(net.depth_configs),
                        "activation": _activation(net.act1), "tf_same_padding": False}


def _paf_wide_resnet(net) -> Tuple[str, dict]:
  cls, fields = _wide_resnet(net)
  return cls, {**fields, "activation": _activation(net.activation)}


def _boosting_wide_resnet(net) -> Tuple[str, dict]:
  cls, fields = _wide_resnet(net, bias=False)
  return cls, {**fields, "cosine_head": True}


def _dm_padding(net):
  if getattr(net, "padding", 0):
    raise Unsupported(f"pads its input by {net.padding} pixels first")


def _dm_wide_resnet(net) -> Tuple[str, dict]:
  _dm_padding(net)
  groups = [len(g.block) for g in net.layer]
  if len(set(groups)) != 1 or len(groups) != 3:
    raise Unsupported(f"block groups {groups}")
  return "WideResNet", {"depth": 6 * groups[0] + 4,
                        "widen_factor": net.layer[0].block[0].conv_0.out_channels // 16,
                        "activation": _activation(net.relu), "tf_same_padding": True}


def _mean_sparse_dm_wide_resnet(net) -> Tuple[str, dict]:
  """Amini et al. 2024's DM WideResNets with MeanSparse layers."""
  name, fields = _dm_wide_resnet(net)
  return name, {**fields, "mean_sparse": True}


def _ra_wide_resnet(net) -> Tuple[str, dict]:
  """RobustArch's NormalizedWideResNet (Peng et al. 2023): a DM WideResNet of per-stage widths
  and depths with squeeze-and-excitation after each block's second convolution."""
  import torch  # pylint: disable=g-import-not-at-top
  _dm_padding(net)
  blocks = [b for g in net.layer for b in g.block]
  if any(b.conv_0.groups != 1 for b in blocks):
    raise Unsupported("grouped convolutions")
  se = blocks[0].se
  if se is not None and (blocks[0].se_order != 2 or not isinstance(se.activation, torch.nn.ReLU)):
    raise Unsupported("squeeze-and-excitation before the second convolution or not ReLU")
  fields = {"stem_width": net.init_conv.out_channels,
            "stage_widths": tuple(g.block[0].conv_0.out_channels for g in net.layer),
            "stage_blocks": tuple(len(g.block) for g in net.layer),
            "activation": _activation(net.relu), "tf_same_padding": True,
            "se_ratio": se.fc1.out_channels / blocks[0].conv_1.out_channels if se else 0.0}
  if hasattr(blocks[0], "meansparse_0"):
    fields["mean_sparse"] = True
  return "WideResNet", fields


def _reproducing(ratio: float, pairs) -> Optional[float]:
  """`ratio`, rounded to as few decimals as still gives int(round(ratio * n)) == m for every
  (n, m) of `pairs` (as the reference computes widths from it); None if even `ratio` does not."""
  for r in [round(ratio, d) for d in (2, 3, 4, 6)] + [ratio]:
    if all(int(round(r * n)) == m for n, m in pairs):
      return r
  return None


def _ra_resnet(net) -> Tuple[str, dict]:
  """RobustArch's NormalizedConfigurableModel (Peng et al. 2023's ImageNet RaResNet-101-2):
  a conv-bn-relu stem, then stages of post-activation bottleneck blocks (torchvision's
  Conv2dNormActivation): 1x1, grouped kxk, SE, 1x1, the activation after the sum."""
  import torch  # pylint: disable=g-import-not-at-top
  blocks = [b for stage in net.stages for b in stage]
  if any(type(b).__name__ != "BottleneckBlock" or type(b.F.a).__name__ != "Conv2dNormActivation"
         for b in blocks) or any(stage.dense_ratio for stage in net.stages):
    raise Unsupported("a RobustArch ConfigurableModel with pre-activation "
                      "(NormActivationConv2d), dense or other blocks")
  branch = lambda b: [b.F.a, b.F.b, b.F.c]
  # Each branch conv: conv (no bias), BatchNorm2d or Identity, then the activation (not c's).
  if any(part[0].bias is not None or not isinstance(
      part[1], (torch.nn.BatchNorm2d, torch.nn.Identity)) for b in blocks for part in branch(b)):
    raise Unsupported("a RobustArch bottleneck with convolutions without a norm layer, or "
                      "with a norm other than BatchNorm")
  if any(len(b.F.a) != 3 or len(b.F.b) != 3 or getattr(b, "last_activation", None) is None
         for b in blocks):
    raise Unsupported("a RobustArch bottleneck without an activation")
  activations = {_activation(m) for b in blocks for m in (b.F.a[2], b.F.b[2], b.last_activation)}
  norms = {tuple(isinstance(p[1], torch.nn.BatchNorm2d) for p in branch(b)) for b in blocks}
  se = [b.F.se if "se" in b.F._modules else None for b in blocks]
  convs = {(b.F.b[0].kernel_size[0], b.F.b[0].dilation[0]) for b in blocks}
  if len(activations) != 1 or len(norms) != 1 or len(convs) != 1:
    raise Unsupported("a RobustArch ConfigurableModel mixing activations, norms or kernels")
  if any(s is not None and not isinstance(s.scale_activation, torch.nn.Sigmoid) for s in se) \
      or len({s is None for s in se}) != 1:
    raise Unsupported("squeeze-and-excitation in some blocks only, or not sigmoid-gated")
  se_ratio = 0.0
  if se[0] is not None:
    pairs = [(b.F.a[0].in_channels, s.fc1.out_channels) for b, s in zip(blocks, se)]
    se_ratio = _reproducing(pairs[0][1] / pairs[0][0], pairs)
    if se_ratio is None:
      raise Unsupported("SE widths that no ratio of the blocks' input widths gives")
  firsts = [stage[0] for stage in net.stages]
  widths = [b.F.c[0].out_channels for b in firsts]
  inner = [b.F.b[0].out_channels for b in firsts]
  groups = [b.F.b[0].groups for b in firsts]
  (kernel, dilation), = convs
  stem = net.stem.stem
  conv = stem.stem[0]
  pool = stem._modules.get("stem_downsample")  # pylint: disable=protected-access
  patch = conv.stride[0] if conv.stride[0] != 2 else 0  # a patchify stem: kernel = stride
  fields = {"activation": activations.pop(), "stem_width": conv.out_channels,
            "stem_downsample_factor": 2 * pool.stride if pool is not None else 2,
            "stem_patch_size": patch,
            "stage_widths": tuple(widths), "depths": tuple(len(stage) for stage in net.stages),
            "strides": tuple(b.F.b[0].stride[0] for b in firsts),
            "group_widths": tuple(i // g for i, g in zip(inner, groups)),
            "bottleneck_multipliers": tuple(_reproducing(i / w, [(w, i)])
                                            for i, w in zip(inner, widths)),
            "kernel": kernel, "dilation": dilation,
            "branch_norms": norms.pop(), "se_ratio": se_ratio,
            "se_activation": _activation(se[0].activation) if se[0] is not None else "relu"}
  if not patch:
    fields["stem_kernel"] = conv.kernel_size[0]
  return "RaResNet", fields


def _dm_preact_resnet(net) -> Tuple[str, dict]:
  _dm_padding(net)
  return "PreActResNet", {
      "stage_sizes": _stage_sizes(net, ["layer_0", "layer_1", "layer_2", "layer_3"]),
      "activation": _activation(net.relu), "tf_same_padding": True,
      "shortcut_from_preact": False, "shortcut_kernel": 3, "final_bn": True}


def _resnet(net) -> Tuple[str, dict]:
  block = type(net.layer1[0]).__name__
  blocks = {"BasicBlock": "basic", "Bottleneck": "bottleneck",
            "BottleneckChen2020AdversarialNet": "preact_bottleneck"}
  if block not in blocks:
    raise Unsupported(f"ResNet with {block} blocks")
  return "ResNet", {"stage_sizes": _stage_sizes(net, ["layer1", "layer2", "layer3", "layer4"]),
                    "block": blocks[block]}


def _torchvision_resnet(net, stem: str = "imagenet") -> Tuple[str, dict]:
  kernel = {"imagenet": (7, 7), "cifar": (3, 3)}[stem]
  if net.conv1.kernel_size != kernel:
    raise Unsupported(f"a ResNet with a {net.conv1.kernel_size} stem convolution")
  blocks = {"BasicBlock": "basic", "Bottleneck": "bottleneck"}
  return "ResNet", {"stage_sizes": _stage_sizes(net, ["layer1", "layer2", "layer3", "layer4"]),
                    "block": blocks[type(net.layer1[0]).__name__], "stem": stem,
                    "width_per_group": net.base_width, "groups": net.groups,
                    "base_width": net.conv1.out_channels}


def _cifar_resnext(net) -> Tuple[str, dict]:
  """The AugMix CifarResNeXt (RobustBench's resnext.py): a CIFAR-stem ResNet of three stages
  of grouped bottlenecks; its 8x8 average pool is the global mean at 32x32."""
  return "ResNet", {"stage_sizes": _stage_sizes(net, ["stage_1", "stage_2", "stage_3"]),
                    "block": "bottleneck", "groups": net.cardinality,
                    "width_per_group": net.base_width}


def _timm_convnext(net) -> Tuple[str, dict]:
  """timm's ConvNeXt, with its patchify stem or Singh et al.'s ConvStem (ConvBlock1 / 3)."""
  import torch  # pylint: disable=g-import-not-at-top
  block = net.stages[0].blocks[0]
  if block.use_conv_mlp or type(block.mlp).__name__ != "Mlp" or block.gamma is None:
    raise Unsupported("a ConvNeXt block other than timm's default (conv MLP, GRN or no "
                      "layer scale)")
  if block.conv_dw.kernel_size != (7, 7) or not isinstance(net.norm_pre, torch.nn.Identity) \
      or not isinstance(net.head.pre_logits, torch.nn.Identity):
    raise Unsupported("a ConvNeXt with another kernel or head")
  fields = {"depths": tuple(len(s.blocks) for s in net.stages),
            "dims": tuple(s.blocks[0].conv_dw.out_channels for s in net.stages)}
  sparse = [type(m).__name__ == "MeanSparse_imagenet" for m in net.modules()]
  if any(sparse):  # RobustBench's add_custom_layer_imagenet: two in every block, no others
    blocks = [b for s in net.stages for b in s.blocks]
    placed = all(isinstance(b.drop_path, torch.nn.Sequential)
                 and isinstance(b.mlp.act, torch.nn.Sequential) for b in blocks)
    if not placed or sum(sparse) != 2 * len(blocks):
      raise Unsupported("MeanSparse layers elsewhere than before each GELU and after each "
                        "block's branch")
    fields["mean_sparse"] = True
  stem = type(net.stem).__name__
  if stem in ("ConvBlock1", "ConvBlock3"):
    return "ConvNeXt", {**fields, "stem": "convstem", "stem_width": net.stem.planes,
                        "stem_layers": 2 if stem == "ConvBlock1" else 3}
  if stem != "Sequential" or net.stem[0].kernel_size != (4, 4):
    raise Unsupported(f"a ConvNeXt stem {stem}")
  return "ConvNeXt", {**fields, "stem": "patch"}


def _convnext_v2(net) -> Tuple[str, dict]:
  """RobustBench's convnext_v2.ConvNeXtV2 (Meta's ConvNeXt V2; Bai2024MixedNUTS' accurate
  model): ConvNeXt version 2. Its `mean` / `std` parameters are unused by its forward."""
  stem, block = net.downsample_layers[0][0], net.stages[0][0]
  norms = [net.norm.eps, net.downsample_layers[0][1].eps] + [b.norm.eps for s in net.stages
                                                             for b in s]
  if stem.kernel_size != (4, 4) or stem.stride != (4, 4) or block.dwconv.kernel_size != (7, 7) \
      or len(net.stages) != 4 or any(eps != 1e-6 for eps in norms):
    raise Unsupported("a ConvNeXtV2 with another stem, kernel, depth or LayerNorm eps")
  return "ConvNeXt", {"depths": tuple(len(s) for s in net.stages),
                      "dims": tuple(s[0].dwconv.out_channels for s in net.stages),
                      "version": 2}


def _timm_vit(net) -> Tuple[str, dict]:
  """timm's VisionTransformer (class token, learned position embeddings, classified token),
  with its patchify stem or Singh et al.'s ConvStem (ConvBlock) as the patch embedding."""
  import torch  # pylint: disable=g-import-not-at-top
  block = net.blocks[0]
  plain = [net.cls_token is not None, net.global_pool == "token", net.num_prefix_tokens == 1,
           not net.no_embed_class, isinstance(net.fc_norm, torch.nn.Identity),
           isinstance(net.norm_pre, torch.nn.Identity), isinstance(block.ls1, torch.nn.Identity),
           isinstance(block.attn.q_norm, torch.nn.Identity), block.attn.qkv.bias is not None,
           type(block.mlp).__name__ == "Mlp", isinstance(block.mlp.act, torch.nn.GELU)]
  if not all(plain):
    raise Unsupported("a VisionTransformer other than timm's plain ViT / DeiT (register "
                      "tokens, layer scale, pooling or normalisation variants)")
  fields = {"patch_size": net.patch_embed.patch_size[0], "width": net.embed_dim,
            "depth": len(net.blocks), "heads": block.attn.num_heads,
            "mlp_ratio": block.mlp.fc1.out_features / net.embed_dim}
  proj = net.patch_embed.proj
  if type(proj).__name__ == "ConvBlock":
    return "VisionTransformer", {**fields, "stem": "convstem", "stem_width": proj.planes}
  if tuple(proj.kernel_size) != tuple(proj.stride) or proj.kernel_size[0] != fields["patch_size"]:
    raise Unsupported(f"a ViT patch embedding {type(proj).__name__}")
  return "VisionTransformer", {**fields, "stem": "patch"}


def _timm_swin(net) -> Tuple[str, dict]:
  """timm's SwinTransformer (patch embedding with LayerNorm, window attention with a relative
  position bias, average-pooled head)."""
  import torch  # pylint: disable=g-import-not-at-top
  block = net.layers[0].blocks[0]
  attn = block.attn
  plain = [net.global_pool == "avg", not getattr(block, "always_partition", False),
           attn.qkv.bias is not None, attn.qkv.out_features == 3 * block.dim,
           isinstance(block.norm1, torch.nn.LayerNorm) and block.norm1.eps == 1e-5,
           isinstance(block.mlp.act, torch.nn.GELU),
           isinstance(net.patch_embed.norm, torch.nn.LayerNorm)]
  if not all(plain):
    raise Unsupported("a SwinTransformer other than timm's plain one (head width, pooling, "
                      "normalisation or partition variants)")
  return "SwinTransformer", {
      "patch_size": net.patch_embed.patch_size[0], "embed_dim": net.layers[0].blocks[0].dim,
      "depths": tuple(len(stage.blocks) for stage in net.layers),
      "heads": tuple(stage.blocks[0].attn.num_heads for stage in net.layers),
      "window": max(max(stage.blocks[0].window_size) for stage in net.layers),
      "mlp_ratio": block.mlp.fc1.out_features / block.dim}


def _mean_sparse_swin(net) -> Tuple[str, dict]:
  """MeanSparse's copy of timm's SwinTransformer (Amini2024MeanSparse_Swin-L)."""
  name, fields = _timm_swin(net)
  return name, {**fields, "mean_sparse": True}


def _ms_swin(net) -> Tuple[str, dict]:
  """Microsoft's original SwinTransformer (RobustBench's MIMIR_swin_transformer.py)."""
  import torch  # pylint: disable=g-import-not-at-top
  block = net.layers[0].blocks[0]
  head_dim = block.dim // block.num_heads
  if net.ape or net.patch_embed.norm is None or abs(block.attn.scale - head_dim ** -0.5) > 1e-12 \
      or not isinstance(block.mlp.act, torch.nn.GELU):
    raise Unsupported("a SwinTransformer with absolute position embeddings, no patch norm, "
                      "another attention scale or activation")
  return "SwinTransformer", {
      "patch_size": net.patch_embed.patch_size[0], "embed_dim": net.embed_dim,
      "depths": tuple(len(layer.blocks) for layer in net.layers),
      "heads": tuple(layer.blocks[0].num_heads for layer in net.layers),
      "window": max(layer.blocks[0].window_size for layer in net.layers),
      "mlp_ratio": net.mlp_ratio, "norm_eps": net.norm.eps}


def _timm_xcit(net) -> Tuple[str, dict]:
  """timm's Xcit (RobustBench's Debenedetti2022Light entries; its CIFAR models with the stem's
  first convolutions at stride 1)."""
  import torch  # pylint: disable=g-import-not-at-top
  convs = [m[0] for m in net.patch_embed.proj if isinstance(m, torch.nn.Sequential)]
  block = net.blocks[0]
  plain = [net.global_pool == "token", net.pos_embed is not None,
           isinstance(block.gamma1, torch.nn.Parameter), block.attn.qkv.bias is not None,
           isinstance(block.mlp.act, torch.nn.GELU), block.norm1.eps == 1e-6,
           all(c.kernel_size == (3, 3) for c in convs)]
  if not all(plain):
    raise Unsupported("an XCiT other than timm's (pooling, position encoding, layer scale or "
                      "normalisation variants)")
  return "XCiT", {"embed_dim": net.embed_dim, "depth": len(net.blocks),
                  "heads": block.attn.num_heads,
                  "mlp_ratio": block.mlp.fc1.out_features / net.embed_dim,
                  "stem_strides": tuple(c.stride[0] for c in convs),
                  "cls_attn_layers": len(net.cls_attn_blocks),
                  "tokens_norm": bool(net.cls_attn_blocks[0].tokens_norm)}


def _lrr_resnet(net) -> Tuple[str, dict]:
  """RobustBench's LRR_ResNet: torchvision's ResNet with a CIFAR stem, of any width."""
  return _torchvision_resnet(net, stem="cifar")


def _preact_resnet(net) -> Tuple[str, dict]:
  block = net.layer1[0]
  if type(block).__name__ not in ("PreActBlock", "PreActBlockV2"):
    raise Unsupported(f"PreActResNet with {type(block).__name__} blocks")
  from_preact = (type(block).__name__ == "PreActBlockV2"
                 or bool(getattr(block, "out_shortcut", False)))
  return "PreActResNet", {
      "stage_sizes": _stage_sizes(net, ["layer1", "layer2", "layer3", "layer4"]),
      "activation": "relu", "tf_same_padding": False, "shortcut_from_preact": from_preact,
      "shortcut_kernel": 1, "final_bn": bool(net.bn_before_fc)}


def _bit_resnet(net) -> Tuple[str, dict]:
  """BiT's first ResNetV2 (bit_rn.py, in Bai et al. 2023's composite model): the same network
  on inputs as they come (the composite resizes them)."""
  name, fields = _bit_resnet_v2(net)
  return name, {**fields, "input_side": 0}


def _bit_resnet_v2(net) -> Tuple[str, dict]:
  """BiT's ResNetV2 (RobustBench's bit_rn_v2.py, MixedNUTS' accurate member): units per
  block group off its body, the width factor off the root convolution (64 x factor)."""
  import torch  # pylint: disable=g-import-not-at-top
  wf = net.root.conv.out_channels // 64
  units = [u for block in net.body for u in block]
  plain = [net.root.conv.out_channels == 64 * wf, net.root.conv.kernel_size == (7, 7),
           len(net.body) == 4, isinstance(net.head.conv, torch.nn.Conv2d),
           net.head.conv.kernel_size == (1, 1),
           all(g.num_groups == 32 and g.eps == 1e-5
               for g in net.modules() if isinstance(g, torch.nn.GroupNorm)),
           all(u.conv1.out_channels == u.conv3.out_channels // 4 for u in units)]
  if not all(plain):
    raise Unsupported("a ResNetV2 other than BiT's (root, stages, widths, GroupNorm or head)")
  return "BiTResNetV2", {"block_units": tuple(len(block) for block in net.body),
                         "width_factor": wf}


def _card_wide_preact_resnet(net) -> Tuple[str, dict]:
  """Diffenderfer et al.'s WidePreActResNet (CARD_resnet.py, the binarised CARD networks):
  per-stage widths, affine-free norms, shortcuts of the pre-activation (its empty Sequential
  passes bn1-relu's output, not the input), conv-bn projections, a 1x1-conv classifier."""
  blocks = [b for n in ("layer1", "layer2", "layer3", "layer4") for b in getattr(net, n)]
  if type(blocks[0]).__name__ != "PreActBasicBlock" or net.bn1.affine or any(
      b.bn1.affine for b in blocks) or net.fc.bias is not None:
    raise Unsupported("a WidePreActResNet other than CARD's (blocks, affine norms or head)")
  return "PreActResNet", {
      "stage_sizes": _stage_sizes(net, ["layer1", "layer2", "layer3", "layer4"]),
      "stage_widths": tuple(getattr(net, n)[0].conv1.out_channels
                            for n in ("layer1", "layer2", "layer3", "layer4")),
      "base_width": net.conv1.out_channels, "shortcut_bn": True, "bn_affine": False,
      "preact_identity": True, "conv_head": True, "final_bn": True,
      "shortcut_from_preact": True}


def _alexnet(net) -> Tuple[str, dict]:
  """torchvision's AlexNet (RobustBench's TimmAlexNet is it, under timm's constructor)."""
  import torch  # pylint: disable=g-import-not-at-top
  convs = [m for m in net.features if isinstance(m, torch.nn.Conv2d)]
  linears = [m for m in net.classifier if isinstance(m, torch.nn.Linear)]
  if len(convs) != 5 or len(linears) != 3 or net.avgpool.output_size not in (6, (6, 6)):
    raise Unsupported("an AlexNet other than torchvision's")
  return "AlexNet", {"widths": tuple(c.out_channels for c in convs),
                     "hidden": linears[0].out_features}


def _resnest(net) -> Tuple[str, dict]:
  """RobustBench's ResNest (resnest.py; Sehwag2021Proxy_ResNest152): its fields off the
  instance; dilated stages, DropBlock and radix 0 (plain 3x3 convolutions) have no twin."""
  import torch  # pylint: disable=g-import-not-at-top
  layers = [getattr(net, n) for n in ("layer1", "layer2", "layer3", "layer4")]
  blocks = [b for layer in layers for b in layer]
  # A stage's stride sits on its first block's avd pool, else on its split-attention conv
  # (a dilated build has stride 1 there, and may pool at stride 1).
  strides = [layer[0].avd_layer.stride if layer[0].avd else layer[0].conv2.conv.stride[0]
             for layer in layers]
  if net.radix < 1 or strides != [1, 2, 2, 2] or any(
      b.conv2.conv.dilation != (1, 1) or b.dropblock_prob > 0 for b in blocks):
    raise Unsupported("a ResNeSt with radix 0, dilated stages or DropBlock")
  deep = isinstance(net.conv1, torch.nn.Sequential)
  return "ResNeSt", {
      "stage_sizes": _stage_sizes(net, ["layer1", "layer2", "layer3", "layer4"]),
      "radix": net.radix, "groups": net.cardinality, "bottleneck_width": net.bottleneck_width,
      "deep_stem": deep, "stem_width": net.conv1[0].out_channels if deep else 64,
      "avg_down": net.avg_down, "avd": net.avd, "avd_first": net.avd_first,
      "activation": _activation(net.relu)}


_SIZE_FIELDS = ("depth", "widen_factor", "stage_sizes", "depths", "dims", "width", "heads",
                "patch_size", "embed_dim", "block_units", "width_factor")


def registered_architecture(cls_name: str, fields: dict) -> Tuple[str, dict]:
  """The most specific `models.MODELS` name building `cls_name` with `fields`, and the fields
  it leaves to kwargs: every preset of that name must equal the field."""
  from mixacm_jax import models  # pylint: disable=g-import-not-at-top
  best = None
  for name, fn in models.MODELS.items():
    cls = getattr(fn, "func", fn)
    presets = dict(getattr(fn, "keywords", {}))
    if cls.__name__ != cls_name or any(
        k not in fields or tuple_or(fields[k]) != tuple_or(v) for k, v in presets.items()):
      continue
    # Presets of style (activation, padding) rank above those of size (depth, widths).
    score = (sum(k not in _SIZE_FIELDS for k in presets), len(presets))
    if best is None or score > best[2]:
      best = (name, presets, score)
  if best is None:
    raise Unsupported(f"no registered Flax architecture builds {cls_name}({fields})")
  fn = models.MODELS[best[0]]
  defaults = {f.name: f.default for f in dataclasses.fields(getattr(fn, "func", fn))}
  # Sizes stay explicit; other fields only where they differ from the class's default.
  kwargs = {k: v for k, v in fields.items() if k not in best[1] and (
      k in _SIZE_FIELDS or tuple_or(defaults.get(k)) != tuple_or(v))}
  return best[0], kwargs


def tuple_or(value):
  return tuple(value) if isinstance(value, (list, tuple)) else value


# RobustBench architecture class (module, name) -> reads the Flax architecture off an instance.
FAMILIES: Dict[Tuple[str, str], Callable[[Any], Tuple[str, dict]]] = {
    ("wide_resnet", "WideResNet"): _wide_resnet,
    ("robust_wide_resnet", "RobustWideResNet"): _robust_wide_resnet,
    ("robust_resnet", "PreActResNet"): _robust_resnet,
    ("boosting_wide_resnet", "BoostingWideResNet"): _boosting_wide_resnet,
    ("paf_wide_resnet", "PAF_WideResNet"): _paf_wide_resnet,
    ("dm_wide_resnet", "DMWideResNet"): _dm_wide_resnet,
    ("dm_wide_resnet", "DMPreActResNet"): _dm_preact_resnet,
    ("resnet", "ResNet"): _resnet,
    ("resnet", "PreActResNet"): _preact_resnet,
    ("torchvision.models.resnet", "ResNet"): _torchvision_resnet,
    ("CARD_resnet", "LRR_ResNet"): _lrr_resnet,
    ("timm.models.convnext", "ConvNeXt"): _timm_convnext,
    ("convnext_v2", "ConvNeXtV2"): _convnext_v2,
    ("timm.models.vision_transformer", "VisionTransformer"): _timm_vit,
    ("timm.models.swin_transformer", "SwinTransformer"): _timm_swin,
    ("MIMIR_swin_transformer", "SwinTransformer"): _ms_swin,
    ("Meansparse_swin_L", "SwinTransformer"): _mean_sparse_swin,
    ("timm.models.xcit", "Xcit"): _timm_xcit,
    ("Meansparse_wrn_94_16", "MeanSparse_DMWideResNet"): _mean_sparse_dm_wide_resnet,
    ("Meansparse_wrn_70_16", "DMWideResNet"): _mean_sparse_dm_wide_resnet,
    ("robustarch_wide_resnet", "NormalizedWideResNet"): _ra_wide_resnet,
    ("Meansparse_ra_wrn_70_16", "NormalizedWideResNet"): _ra_wide_resnet,
    ("bit_rn_v2", "ResNetV2"): _bit_resnet_v2,
    ("bit_rn", "ResNetV2"): _bit_resnet,
    ("dm_rn", "WideResNet"): _dm_wide_resnet,
    ("robustarch_wide_resnet", "NormalizedConfigurableModel"): _ra_resnet,
    ("resnest", "ResNest"): _resnest,
    ("resnext", "CifarResNeXt"): _cifar_resnext,
    ("torchvision.models.alexnet", "AlexNet"): _alexnet,
    ("CARD_resnet", "WidePreActResNet"): _card_wide_preact_resnet,
}


# Ensembles RobustBench averages after softmax: class name -> its member networks (each read
# from its own file, `<name>.pt_m{i}.pt`).
SOFTMAX_ENSEMBLES = {"Chen2020AdversarialNet": lambda net: list(net.models),
                     "Diffenderfer2021CARD_Deck": lambda net: list(net.models),
                     "Diffenderfer2021CARD_Deck_Binary": lambda net: list(net.models)}


def _network(net) -> Tuple[str, dict, Optional[tuple], Optional[tuple]]:
  """(architecture, its fields, mean, std) of one network, which may sit in RobustBench's
  `normalize_model` wrapper."""
  net, wrapper = unwrap_normalize_model(net)
  base, family = _family(net)
  arch, kwargs = registered_architecture(*family(net))
  kwargs, mean, std = _normalisation(net, base, kwargs, wrapper)
  return arch, kwargs, mean, std


def _normalisation(net, base, kwargs: dict, wrapper: Optional[dict] = None):
  """The input transform in a wrapper, in a subclass's forward, else in the family's own
  buffers: its mean and std, any other setting (per-image standardisation) added to
  `kwargs`. Returns (kwargs, mean, std)."""
  transform = wrapper or _probe_normalisation(net, base) or (
      {} if type(net).__name__ in UNUSED_MEAN_STD else _buffer_normalisation(net))
  mean, std = transform.pop("mean", None), transform.pop("std", None)
  kwargs.update(transform)
  return kwargs, mean, std


# Classes that keep `mean` / `std` parameters their forward never applies (RobustBench's
# ConvNeXt V2: MixedNUTS' ImageNet member sees the images as they come).
UNUSED_MEAN_STD = ("ConvNeXtV2",)


def _mixed_nuts(net) -> Dict[str, Any]:
  """Bai et al. 2024's NonLinMixedClassifier: its accurate and robust members' recipes (in
  RobustBench's file order) and the mixing map's constants."""
  import torch  # pylint: disable=g-import-not-at-top
  rob_map = net.rob_map
  if (type(net.std_map).__name__ != "HardMaxMap"
      or type(rob_map).__name__ != "LNClampPowerScaleMap" or rob_map.center_only
      or not isinstance(rob_map.clamp_fn, torch.nn.GELU) or rob_map.clamp_fn.approximate != "none"
      or net._alpha.numel() != 1 or not 0 < float(net._alpha) < 1):  # pylint: disable=protected-access
    raise Unsupported("a mixed classifier with other logit maps or weights than MixedNUTS' own")
  members = []
  for member in (net.std_model, net.rob_model):
    arch, kwargs, mean, std = _network(member)
    members.append({"arch": arch, "kwargs": kwargs, "mean": mean, "std": std})
  kwargs = {"alpha": float(net._alpha), "scale": float(rob_map.scale),  # pylint: disable=protected-access
            "power": float(rob_map.power), "clamp_bias": float(rob_map.clamp_bias),
            "ln_k": int(rob_map.ln_k)}
  return {"members": members, "kwargs": kwargs, "num_classes": _classes(net.rob_model)}


def _adaptive_smoothing(net) -> Dict[str, Any]:
  """Bai et al. 2023's CompositeModel in RobustBench's wrapper, as its loader leaves it (in
  eval mode, where alpha is scaled into its range): its accurate and robust members, its
  MixingNetV4 (with the BatchNorm1d on its output, one file) and the constants of the mix."""
  comp = net._comp_model  # pylint: disable=protected-access
  if not (comp.use_policy and comp.pn_version == 4 and float(comp.alpha_scale) != 0
          and float(comp.alpha_bias) < 1 and not comp.bn.affine):
    raise Unsupported("a composite model without its V4 mixing network")
  members = []
  for member in comp.models:
    arch, kwargs, mean, std = _network(member)
    members.append({"arch": arch, "kwargs": kwargs, "mean": mean, "std": std})
  members.append({"arch": "mixing_net", "mean": None, "std": None,
                  "kwargs": {"widths": tuple(int(w) for w in comp.policy_net.planes[1:])},
                  "merge": (("model", ""), ("bn", "bn."))})
  kwargs = {"accurate_side": 128 if comp.resize else 0,
            **{k: float(getattr(comp, k)) for k in ("gamma_scale", "gamma_bias",
                                                     "alpha_scale", "alpha_bias")},
            "accurate_scale": float(comp.std_scale), "robust_scale": float(comp.rob_scale)}
  return {"members": members, "kwargs": kwargs, "num_classes": _classes(comp.models[1])}


def _classes(net) -> int:
  """The outputs of the last linear layer, or of the last convolution where it has none (a
  1x1-convolution classifier)."""
  import torch  # pylint: disable=g-import-not-at-top
  linears = [m for m in net.modules() if isinstance(m, torch.nn.Linear)]
  if linears:
    return linears[-1].out_features
  return [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)][-1].out_channels


# Mixed classifiers: class name -> {"members": their recipes, in RobustBench's file order,
# "kwargs": the mix's constants, "num_classes"}.
MIXED_CLASSIFIERS = {"NonLinMixedClassifier": _mixed_nuts,
                     "CompositeModelWrapper": _adaptive_smoothing}
MIXED_ARCHITECTURES = {"NonLinMixedClassifier": "mixed_nuts",
                       "CompositeModelWrapper": "adaptive_smoothing"}


def _family(net):
  for cls in type(net).__mro__:  # the most derived known class decides
    module = cls.__module__  # RobustBench's by file name, torchvision's and timm's in full
    key = (module if module.startswith(("torchvision", "timm")) else module.rpartition(".")[2],
           cls.__name__)
    if key in FAMILIES:
      return cls, FAMILIES[key]
  raise Unsupported(f"{type(net).__name__}: no Flax twin")


def _per_image_standardized(x):
  """tf.image.per_image_standardization, as Ding et al.'s MMA model applies it."""
  import torch  # pylint: disable=g-import-not-at-top
  mean = x.mean(dim=(1, 2, 3), keepdim=True)
  std = x.std(dim=(1, 2, 3), keepdim=True)
  return (x - mean) / torch.clamp(std, min=1.0 / x[0].numel() ** 0.5)


def _probe_normalisation(net, base) -> Dict[str, Any]:
  """How the entry's own `forward` transforms the input before its family's network, found
  by running that forward with the family's network replaced by the identity: {} (not at
  all), {"mean", "std"} per channel, or {"per_image_standardization": True}."""
  import torch  # pylint: disable=g-import-not-at-top
  if type(net).forward is base.forward:
    return {}
  g = torch.Generator().manual_seed(0)
  probes = [torch.full((1, 3, 2, 2), v, dtype=torch.float64) for v in (0.0, 1.0, 0.25)]
  probes.append(torch.rand((2, 3, 4, 4), generator=g, dtype=torch.float64))
  original = base.forward
  base.forward = lambda self, x: x
  try:
    with torch.no_grad():
      out = [net.forward(p).to("cpu", torch.float64) for p in probes]
  except Exception as e:  # pylint: disable=broad-except
    raise Unsupported(f"its forward does more than normalise ({type(e).__name__})") from None
  finally:
    base.forward = original
  if any(o.shape != p.shape for o, p in zip(out, probes)):
    raise Unsupported("its forward changes the input's shape before the network")
  zero, one = out[0][0, :, 0, 0], out[1][0, :, 0, 0]
  std = 1.0 / (one - zero)
  mean = -zero * std
  if torch.allclose(out[3], (probes[3] - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1),
                    atol=1e-6):
    if torch.allclose(mean, torch.zeros(3, dtype=mean.dtype)) and torch.allclose(
        std, torch.ones(3, dtype=std.dtype)):
      return {}
    return {"mean": tuple(round(float(v), 7) for v in mean),
            "std": tuple(round(float(v), 7) for v in std)}
  if torch.allclose(out[3], _per_image_standardized(probes[3]), atol=1e-6):
    return {"per_image_standardization": True}
  raise Unsupported("its forward applies an input transform that is neither per-channel "
                    "normalisation nor per-image standardisation")


def _buffer_normalisation(net) -> Dict[str, Any]:
  """The mean/std a module whose own forward normalises keeps as buffers (the DM models'
  `mean`/`std`, Pang et al.'s `mu`/`sigma`); {} when it keeps none."""
  import torch  # pylint: disable=g-import-not-at-top
  if type(getattr(net, "normalization", None)).__name__ == "NormalizeByChannelMeanStd":
    net = net.normalization  # RobustArch's NormalizedConfigurableModel keeps them there
  for names in (("mean", "std"), ("mu", "sigma")):
    mean, std = (getattr(net, n, None) for n in names)
    if isinstance(mean, torch.Tensor) and isinstance(std, torch.Tensor) and not mean.is_meta:
      return {"mean": tuple(round(float(v), 7) for v in mean.detach().reshape(-1)),
              "std": tuple(round(float(v), 7) for v in std.detach().reshape(-1))}
  return {}


def unwrap_normalize_model(net):
  """(the network, {"mean", "std"}) of RobustBench's `normalize_model` wrapper (an
  nn.Sequential of an ImageNormalizer `normalize` and the `model`), else (net, {})."""
  import torch  # pylint: disable=g-import-not-at-top
  norm = getattr(net, "normalize", None)
  if not (isinstance(net, torch.nn.Sequential) and type(norm).__name__ == "ImageNormalizer"):
    return net, {}
  return net.model, {k: tuple(round(float(v), 7) for v in getattr(norm, k).reshape(-1))
                     for k in ("mean", "std")}


# Modules whose `load_state_dict_from_url` fetches pretrained weights (each binds its own name).
DOWNLOADERS = ("torch.hub", "torchvision.models._api", "timm.models._builder")


@contextlib.contextmanager
def pretrained_recorded(files: list):
  """Builds modules that fetch pretrained weights (torchvision's `pretrained=True`, a zoo
  constructor calling torch.hub) without downloading: the file name of each weight file asked
  for is appended to `files`, and nothing is loaded."""
  import torch  # pylint: disable=g-import-not-at-top
  importlib.import_module("torchvision.models._api")
  fetchers = [(sys.modules[m], "load_state_dict_from_url") for m in DOWNLOADERS
              if hasattr(sys.modules.get(m), "load_state_dict_from_url")]
  timm_builder = sys.modules.get("timm.models._builder")
  if timm_builder is not None:  # timm fetches and loads in one function
    fetchers.append((timm_builder, "load_pretrained"))
  originals = [getattr(m, n) for m, n in fetchers]
  load = torch.nn.Module.load_state_dict
  asked = object()

  def record(url, *args, **kwargs):
    files.append(os.path.basename(url))
    return asked

  def record_timm(model, pretrained_cfg=None, *args, **kwargs):
    cfg = pretrained_cfg or getattr(model, "pretrained_cfg", None) or {}
    files.append(os.path.basename(cfg.get("url") or cfg.get("file") or "timm weights"))
  for module, name in fetchers:
    setattr(module, name, record_timm if name == "load_pretrained" else record)
  torch.nn.Module.load_state_dict = lambda self, state, *a, **k: (
      None if state is asked else load(self, state, *a, **k))
  try:
    with warnings.catch_warnings():  # torchvision's notes on the `pretrained` argument
      warnings.filterwarnings("ignore", category=UserWarning, module="torchvision")
      yield
  finally:
    for (module, name), original in zip(fetchers, originals):
      setattr(module, name, original)
    torch.nn.Module.load_state_dict = load


def _last_checkpoint_rule(root: str) -> Callable[[str], bool]:
  """Which entries RobustBench's `load_model` takes from the file's 'last' key, read from its
  own source (`if 'X' in model_name or model_name == 'Y': checkpoint = checkpoint['last']`)."""
  tree = ast.parse(open(os.path.join(root, "utils.py")).read())
  substrings, exact = [], []
  for node in ast.walk(tree):
    if not (isinstance(node, ast.If) and "'last'" in ast.unparse(node.body[0])):
      continue
    for compare in ast.walk(node.test):
      if isinstance(compare, ast.Compare) and isinstance(compare.left, ast.Constant):
        substrings.append(compare.left.value)      # 'X' in model_name
      elif isinstance(compare, ast.Compare) and isinstance(compare.comparators[0], ast.Constant):
        exact.append(compare.comparators[0].value)  # model_name == 'Y'
  return lambda name: name in exact or any(s in name for s in substrings)


NUM_CLASSES = {"cifar10": 10, "cifar100": 100, "imagenet": 1000}


def constructor(name: str, entry: dict, dataset: str, threat: str) -> Callable[[], Any]:
  """What RobustBench's `load_model` builds for the entry: the timm model registered under
  `<name>_<dataset>_<threat>` (lower case, '-' as '_') where timm has one (the newer zoo's
  XCiTs: their table's own constructors name models timm does not have), else the table's."""
  timm = sys.modules.get("timm")
  timm_name = f"{name.lower().replace('-', '_')}_{dataset}_{threat.lower()}"
  if timm is not None and timm.is_model(timm_name):
    return lambda: timm.create_model(timm_name, num_classes=NUM_CLASSES[dataset],
                                     pretrained=True)
  return entry["model"]


def derive_recipe(name: str, entry: dict, dataset: str, uses_last: Callable[[str], bool],
                  threat: str = "Linf") -> Dict[str, Any]:
  """The recipe of one zoo entry, or {"unsupported": why}."""
  prefix = "ensemble: " if isinstance(entry.get("gdrive_id"), list) else ""
  pretrained = []
  try:
    with weights_on_meta(), pretrained_recorded(pretrained), cuda_as_cpu():
      try:
        net = constructor(name, entry, dataset, threat)()
      except Unbuildable:
        raise
      except Exception as e:  # pylint: disable=broad-except
        raise Unsupported("its PyTorch module does not build here "
                          f"({type(e).__name__}: {e})") from None
    mixed = type(net).__name__ in MIXED_CLASSIFIERS
    members = (MIXED_CLASSIFIERS.get(type(net).__name__) or SOFTMAX_ENSEMBLES.get(
        type(net).__name__, lambda _: None))(net)
    if mixed:
      arch, kwargs, mean, std = MIXED_ARCHITECTURES[type(net).__name__], members["kwargs"], None, None
      classes, members = members["num_classes"], members["members"]
    elif members:
      derived = [registered_architecture(*_family(m)[1](m)) for m in members]
      if any(d != derived[0] for d in derived):
        raise Unsupported("an ensemble of different networks")
      arch, kwargs = derived[0]
      net, wrapper = unwrap_normalize_model(net)
      _, mean, std = _normalisation(net, type(net), kwargs, wrapper)
    else:
      arch, kwargs, mean, std = _network(net)
    classes = classes if mixed else _classes(net)
  except Unsupported as e:
    return {"unsupported": (prefix if "ensemble" not in str(e) else "") + str(e)}
  except Unbuildable as e:
    return {"unsupported": prefix + f"built from {e}, which has no Flax twin"}
  side = PREPROCESSING_SIDES.get(entry.get("preprocessing"))
  recipe = {"arch": arch, "kwargs": kwargs, "num_classes": classes,
            "mean": mean, "std": std,
            "image_shape": (side, side, 3) if side else IMAGE_SHAPES[dataset],
            "checkpoint_key": "last" if uses_last(name) else "state_dict"}
  if entry.get("preprocessing"):
    recipe["preprocessing"] = entry["preprocessing"]
  if pretrained:  # RobustBench loads torchvision's or timm's weights, from torch.hub's cache
    recipe["hub_weights"] = pretrained[0]
  if prefix:
    if not members or len(members) != len(entry["gdrive_id"]):
      return {"unsupported": f"an ensemble of {len(entry['gdrive_id'])} networks"}
    if mixed:
      recipe["members"] = tuple(members)
    else:
      recipe["softmax_ensemble"] = len(members)
  return recipe


def derive_recipes(source: Optional[str] = None) -> Dict[str, Dict[str, Dict[str, Dict[str, Any]]]]:
  """{dataset: {threat model: {entry: recipe}}} for the installed robustbench, or for the
  RobustBench checkout `source`."""
  root = zoo_package(source)
  uses_last = _last_checkpoint_rule(root)
  out = {}
  for dataset in ZOO_TABLES:
    try:
      tables = zoo_entries(dataset)
    except Unbuildable as e:
      out[dataset] = {"*": {"*": {"unsupported": str(e)}}}
      continue
    out[dataset] = {threat: {name: derive_recipe(name, entry, dataset, uses_last, threat)
                             for name, entry in entries.items()}
                    for threat, entries in tables.items()}
  return out


def installed_version() -> str:
  from importlib import metadata  # pylint: disable=g-import-not-at-top
  return metadata.version("robustbench")


def source_version(source: str) -> str:
  """"main@<commit>" of a RobustBench git checkout."""
  try:
    commit = subprocess.run(["git", "-C", source, "rev-parse", "HEAD"], check=True,
                            capture_output=True, text=True).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    raise ConfigError(f"{source} is not a git checkout: the recipes must name the commit "
                      "they were read from") from None
  return f"main@{commit}"


# ---------------------------------------------------------------------------------------------
# The generated files: port/zoo_recipes.py (the pinned wheel), port/zoo_recipes_main.py (a
# checkout of RobustBench's main branch) and docs/port.md's coverage table and lists.

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # the repository
RECIPE_MODULES = {"wheel": "zoo_recipes", "main": "zoo_recipes_main"}
RECIPE_FILES = {zoo: os.path.join(ROOT, "mixacm_jax", "port", f"{name}.py")
                for zoo, name in RECIPE_MODULES.items()}
PORT_DOC = os.path.join(ROOT, "docs", "port.md")
README = os.path.join(ROOT, "README.md")  # the coverage table again, for a first reader
COVERAGE_START = "<!-- robustbench coverage: generated by python -m tools.robustbench_zoo -->"
COVERAGE_END = "<!-- end of robustbench coverage -->"
UNSUPPORTED_START = "<!-- robustbench unsupported: generated by python -m tools.robustbench_zoo -->"
UNSUPPORTED_END = "<!-- end of robustbench unsupported -->"


def render_recipes(recipes, version: str) -> str:
  lines = ["{"]
  for dataset, tables in recipes.items():
    lines.append(f"    {dataset!r}: {{")
    for threat, entries in tables.items():
      lines.append(f"        {threat!r}: {{")
      lines += [f"            {name!r}: {entry!r}," for name, entry in entries.items()]
      lines.append("        },")
    lines.append("    },")
  body = "\n".join(lines + ["}"])
  command = ("python -m tools.robustbench_zoo --source=<checkout>" if version.startswith("main@")
             else "python -m tools.robustbench_zoo")
  return (f'"""RobustBench\'s model zoo as recipes for the Flax models: per dataset, threat '
          f'model and entry,\nthe registered architecture and its fields, the number of '
          f'classes, the input normalisation,\nthe image shape and the key RobustBench\'s '
          f'loader opens the file at; or why the entry is\nunsupported.\n\nGenerated from '
          f'{zoo.zoo_name(version)}\'s own zoo files by `{command}`;\ndo not edit (a test '
          f'derives it again and compares).\n"""\n'
          f'# ruff: noqa: E501  (one entry per line)\nROBUSTBENCH_VERSION = "{version}"\n\n'
          f'RECIPES = {body}\n')


def _counts(recipes, dataset, threat) -> str:
  entries = recipes.get(dataset, {}).get(threat)
  if entries is None:
    return "–"
  return f"{sum('arch' in e for e in entries.values())} / {len(entries)}"


def render_coverage(zoos, where: str = "below") -> str:
  """The coverage table (docs/port.md, README.md): per dataset and threat model, entries by name / entries, for each
  zoo of `zoos` ([(version, recipes)], the pinned wheel first)."""
  header = " | ".join(zoo.zoo_name(v) for v, _ in zoos)
  rows = [f"| dataset | threat model | {header} |",
          "|---|---|" + "---:|" * len(zoos)]
  keys = []
  for _, recipes in zoos:
    keys += [(d, t) for d, tables in recipes.items() for t in tables if (d, t) not in keys]
  for dataset, threat in keys:
    rows.append(f"| {dataset} | {threat} | "
                + " | ".join(_counts(r, dataset, threat) for _, r in zoos) + " |")
  return "\n".join([COVERAGE_START, "RobustBench entries loadable by name / entries (each "
                    f"unsupported one and why: {where}):", "", *rows, COVERAGE_END])


def render_unsupported(zoos) -> str:
  """docs/port.md's lists: per zoo, each unsupported entry, grouped by the reason."""
  lines = []
  for version, recipes in zoos:
    reasons: Dict[str, list] = {}
    for dataset, tables in recipes.items():
      for threat, entries in tables.items():
        for name, e in entries.items():
          if "unsupported" in e:
            reasons.setdefault(e["unsupported"], []).append(f"{name} ({dataset} {threat})")
    lines += [f"{zoo.zoo_name(version)}:", ""]
    lines += [f"- {reason}: {', '.join(names)}" for reason, names in reasons.items()] or [
        "- none: every entry loads by name"]
    lines.append("")
  return "\n".join([UNSUPPORTED_START, *lines, UNSUPPORTED_END])


def with_block(text: str, block: str, start: str, end: str) -> str:
  """`text` with its generated block between `start` and `end` replaced by `block`."""
  if start not in text or end not in text:
    raise ConfigError(f"no {start!r} ... {end!r} block to write")
  head, rest = text.split(start, 1)
  return head + block + rest.split(end, 1)[1]


def _committed(zoo: str):
  """(version, recipes) of a zoo's generated module as committed; None if there is none."""
  try:
    module = importlib.import_module(f"mixacm_jax.port.{RECIPE_MODULES[zoo]}")
  except ModuleNotFoundError:
    return None
  return module.ROBUSTBENCH_VERSION, module.RECIPES


def generated_files(zoo: str, version: str, recipes) -> Dict[str, str]:
  """{path: text} of everything a derivation of `zoo` writes; docs/port.md's and the README's
  tables show both zoos (the other as committed)."""
  other = _committed("main" if zoo == "wheel" else "wheel")
  zoos = [(version, recipes)] + ([other] if other else [])
  if zoo == "main":
    zoos.reverse()  # the pinned wheel first
  with open(PORT_DOC) as f:
    text = with_block(f.read(), render_coverage(zoos), COVERAGE_START, COVERAGE_END)
  with open(README) as f:
    readme = with_block(f.read(), render_coverage(zoos, "[docs/port.md](docs/port.md)"),
                        COVERAGE_START, COVERAGE_END)
  return {RECIPE_FILES[zoo]: render_recipes(recipes, version), README: readme,
          PORT_DOC: with_block(text, render_unsupported(zoos), UNSUPPORTED_START,
                               UNSUPPORTED_END)}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description="Writes port/zoo_recipes.py (or, with --source, "
                                   "port/zoo_recipes_main.py), the coverage table of "
                                   "docs/port.md and README.md, and docs/port.md's unsupported "
                                   "entries.")
  parser.add_argument("--source", default="",
                      help="a git checkout of RobustBench (its main branch) to read instead "
                           "of the installed wheel")
  parser.add_argument("--check", action="store_true",
                      help="only compare; exit 1 if a generated file is out of date")
  args = parser.parse_args(argv)
  zoo = "main" if args.source else "wheel"
  version = source_version(args.source) if args.source else installed_version()
  want = generated_files(zoo, version, derive_recipes(args.source or None))
  stale = []
  for path, text in want.items():
    with open(path) if os.path.exists(path) else open(os.devnull) as f:
      if f.read() != text:
        stale.append(os.path.relpath(path))
        if not args.check:
          with open(path, "w") as out:
            out.write(text)
  print(("out of date: " if args.check else "wrote: ") + (", ".join(stale) or "nothing"))
  return 1 if (args.check and stale) else 0


if __name__ == "__main__":
  sys.exit(main())
