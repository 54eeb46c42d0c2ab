"""One rule table per architecture: a PyTorch module path pattern <-> a Flax module path.

A rule maps modules, not single tensors: the tensor's name and rank decide the rest
(conv weight OIHW <-> kernel HWIO, linear weight (out, in) <-> kernel (in, out), BatchNorm
weight/bias <-> params scale/bias and running_mean/var <-> batch_stats mean/var). `{x}`
fields stand for integers (`{s+1}`: that integer plus one, where PyTorch counts groups from 0
and the Flax model from 1); `{rest}` stands for any suffix.
"""
import re
from typing import Dict, List, Optional, Tuple

import numpy as np

Rule = Tuple[str, str]  # (PyTorch module pattern, Flax module path pattern); "" = ignore

RESNET: List[Rule] = [
    ("conv1", "conv1"), ("bn1", "bn1"),
    ("layer{s}.{b}.conv{i}", "layer{s}_{b}/conv{i}"),
    ("layer{s}.{b}.bn{i}", "layer{s}_{b}/bn{i}"),
    ("layer{s}.{b}.shortcut.0", "layer{s}_{b}/shortcut_conv"),
    ("layer{s}.{b}.shortcut.1", "layer{s}_{b}/shortcut_bn"),
    ("linear", "fc"),
]
# torchvision's ResNet family (RobustBench's ImageNet entries): `downsample`, `fc`.
TORCHVISION_RESNET: List[Rule] = [
    ("conv1", "conv1"), ("bn1", "bn1"),
    ("layer{s}.{b}.conv{i}", "layer{s}_{b}/conv{i}"),
    ("layer{s}.{b}.bn{i}", "layer{s}_{b}/bn{i}"),
    ("layer{s}.{b}.downsample.0", "layer{s}_{b}/shortcut_conv"),
    ("layer{s}.{b}.downsample.1", "layer{s}_{b}/shortcut_bn"),
    ("fc", "fc"),
]
# The AugMix CifarResNeXt (RobustBench's resnext.py): the ResNet's bottleneck under its names.
CIFAR_RESNEXT: List[Rule] = [
    ("conv_1_3x3", "conv1"), ("bn_1", "bn1"), ("classifier", "fc"),
    *[(f"stage_{{s}}.{{b}}.{torch}", f"layer{{s}}_{{b}}/{flax}") for torch, flax in (
        ("conv_reduce", "conv1"), ("bn_reduce", "bn1"), ("conv_conv", "conv2"), ("bn", "bn2"),
        ("conv_expand", "conv3"), ("bn_expand", "bn3"), ("downsample.0", "shortcut_conv"),
        ("downsample.1", "shortcut_bn"))],
]
# A pre-activation block's convs and norms, and its shortcut's conv (and norm, CARD's).
_PREACT_BLOCKS: List[Rule] = [
    ("layer{s}.{b}.conv{i}", "layer{s}_{b}/conv{i}"),
    ("layer{s}.{b}.bn{i}", "layer{s}_{b}/bn{i}"),
    ("layer{s}.{b}.shortcut.0", "layer{s}_{b}/shortcut_conv"),
    ("layer{s}.{b}.shortcut.1", "layer{s}_{b}/shortcut_bn"),
]
PREACT_RESNET: List[Rule] = [("conv1", "conv1"), ("bn", "bn"), *_PREACT_BLOCKS, ("linear", "fc")]
WIDE_RESNET: List[Rule] = [
    ("conv1", "conv1"), ("bn1", "bn"), ("fc", "fc"),
    ("block{s}.layer.{b}.conv{i}", "block{s}_{b}/conv{i}"),
    ("block{s}.layer.{b}.bn{i}", "block{s}_{b}/bn{i}"),
    ("block{s}.layer.{b}.convShortcut", "block{s}_{b}/shortcut_conv"),
    ("sub_block1.layer.{b}.{rest}", ""),  # TRADES' unused duplicate of block1
    # A learned activation (PSSiLU) that every block shares: one copy per module that holds it.
    ("activation", "activation"), ("block{s}.layer.{b}.activation", ""),
]
# RobustBench's RobustWideResNet (per-stage widths and depths).
ROBUST_WIDE_RESNET: List[Rule] = [
    ("stem_conv", "conv1"), ("bn1", "bn"), ("fc", "fc"),
    ("blocks.{s}.layer.{b}.conv{i}", "block{s+1}_{b}/conv{i}"),
    ("blocks.{s}.layer.{b}.bn{i}", "block{s+1}_{b}/bn{i}"),
    ("blocks.{s}.layer.{b}.convShortcut", "block{s+1}_{b}/shortcut_conv"),
]
# Diffenderfer et al.'s CARD WidePreActResNet (RobustBench's CARD_resnet.py): its final norm
# is bn1, its classifier fc.
CARD_WIDE_PREACT_RESNET: List[Rule] = [("conv1", "conv1"), ("bn1", "bn"), *_PREACT_BLOCKS,
                                       ("fc", "fc")]
# RobustBench's robust_resnet.PreActResNet (Huang et al. 2022's WRN-A4): the same network.
ROBUST_RESNET: List[Rule] = [
    ("stem_conv", "conv1"), ("norm1", "bn"), ("fc", "fc"),
    ("blocks.{s}.layer.{b}.conv{i}", "block{s+1}_{b}/conv{i}"),
    ("blocks.{s}.layer.{b}.bn{i}", "block{s+1}_{b}/bn{i}"),
    ("blocks.{s}.layer.{b}.shortcut.0", "block{s+1}_{b}/shortcut_conv"),
]
# RobustBench's DMWideResNet / DMPreActResNet (DeepMind-style).
DM_WIDE_RESNET: List[Rule] = [
    ("init_conv", "conv1"), ("batchnorm", "bn"), ("logits", "fc"),
    ("layer.{s}.block.{b}.batchnorm_0", "block{s+1}_{b}/bn1"),
    ("layer.{s}.block.{b}.batchnorm_1", "block{s+1}_{b}/bn2"),
    ("layer.{s}.block.{b}.conv_0", "block{s+1}_{b}/conv1"),
    ("layer.{s}.block.{b}.conv_1", "block{s+1}_{b}/conv2"),
    ("layer.{s}.block.{b}.shortcut", "block{s+1}_{b}/shortcut_conv"),
    # MeanSparse (Amini et al. 2024): after each BatchNorm and after the residual sum.
    ("layer.{s}.block.{b}.meansparse_0", "block{s+1}_{b}/sparse1"),
    ("layer.{s}.block.{b}.meansparse_1", "block{s+1}_{b}/sparse2"),
    ("layer.{s}.block.{b}.meansparse_2", "block{s+1}_{b}/sparse_out"),
    ("meansparse_end", "sparse"),
    # RobustArch's squeeze-and-excitation (torchvision's SqueezeExcitation).
    ("layer.{s}.block.{b}.se.fc{i}", "block{s+1}_{b}/se_fc{i}"),
]
DM_PREACT_RESNET: List[Rule] = [
    ("conv_2d", "conv1"), ("batchnorm", "bn"), ("logits", "fc"),
    ("layer_{s}.{b}.batchnorm_0", "layer{s+1}_{b}/bn1"),
    ("layer_{s}.{b}.batchnorm_1", "layer{s+1}_{b}/bn2"),
    ("layer_{s}.{b}.conv_2d_1", "layer{s+1}_{b}/conv1"),
    ("layer_{s}.{b}.conv_2d_2", "layer{s+1}_{b}/conv2"),
    ("layer_{s}.{b}.shortcut", "layer{s+1}_{b}/shortcut_conv"),
]


def convstem_rules(prefix: str, layers: int, projection: bool = False) -> List[Rule]:
  """RobustBench's ConvStem blocks (Singh et al. 2023): an nn.Sequential of conv, LayerNorm,
  GELU per layer (indices 3i, 3i + 1), then, for the ViT's, a 1x1 projection."""
  rules = [(f"{prefix}.{3 * i + j}", f"stem_{kind}{i}") for i in range(layers)
           for j, kind in ((0, "conv"), (1, "norm"))]
  return rules + ([(f"{prefix}.{3 * layers}", "stem_proj")] if projection else [])


# timm's ConvNeXt, and RobustBench's ConvStem in place of its stem (Singh et al. 2023).
TIMM_CONVNEXT: List[Rule] = [
    ("stem.0", "stem_conv"), ("stem.1", "stem_norm"), *convstem_rules("stem.stem", 3),
    ("stages.{s}.downsample.0", "downsample_norm{s}"),
    ("stages.{s}.downsample.1", "downsample{s}"),
    ("stages.{s}.blocks.{b}", "stage{s+1}_{b}"),  # its layer scale, gamma
    ("stages.{s}.blocks.{b}.conv_dw", "stage{s+1}_{b}/conv_dw"),
    ("stages.{s}.blocks.{b}.norm", "stage{s+1}_{b}/norm"),
    ("stages.{s}.blocks.{b}.mlp.fc{i}", "stage{s+1}_{b}/fc{i}"),
    ("head.norm", "head_norm"), ("head.fc", "fc"),
    # RobustBench's MeanSparse ConvNeXt: before the GELU, and after the branch's drop path.
    ("stages.{s}.blocks.{b}.mlp.act.0", "stage{s+1}_{b}/sparse_hidden"),
    ("stages.{s}.blocks.{b}.drop_path.1", "stage{s+1}_{b}/sparse_out"),
]
# ConvNeXt V2 as RobustBench's convnext_v2.py (Meta's code) names it (ConvNeXt, version=2); its
# GRN's gamma / beta are (1, 1, 1, C) in both frameworks. The stem's rules come first.
CONVNEXT_V2: List[Rule] = [
    ("downsample_layers.0.0", "stem_conv"), ("downsample_layers.0.1", "stem_norm"),
    ("downsample_layers.{s}.0", "downsample_norm{s}"),
    ("downsample_layers.{s}.1", "downsample{s}"),
    ("stages.{s}.{b}.dwconv", "stage{s+1}_{b}/conv_dw"),
    ("stages.{s}.{b}.norm", "stage{s+1}_{b}/norm"),
    ("stages.{s}.{b}.pwconv{i}", "stage{s+1}_{b}/fc{i}"),
    ("stages.{s}.{b}.grn", "stage{s+1}_{b}/grn"),
    ("norm", "head_norm"), ("head", "fc"),
]
# timm's VisionTransformer, and RobustBench's ConvStem (ConvBlock) as its patch embedding.
TIMM_VIT: List[Rule] = [
    ("patch_embed.proj", "patch_embed"),
    *convstem_rules("patch_embed.proj.stem", 4, projection=True),
    ("blocks.{b}.norm{i}", "block{b}/norm{i}"),
    ("blocks.{b}.attn.qkv", "block{b}/qkv"), ("blocks.{b}.attn.proj", "block{b}/proj"),
    ("blocks.{b}.mlp.fc{i}", "block{b}/fc{i}"),
    ("norm", "norm"), ("head", "fc"),
]
# The Swin blocks and patch embedding, as timm and Microsoft's original both save them.
_SWIN_BLOCKS: List[Rule] = [
    ("patch_embed.proj", "patch_embed"), ("patch_embed.norm", "patch_norm"),
    ("layers.{s}.blocks.{b}.norm{i}", "stage{s+1}_block{b}/norm{i}"),
    ("layers.{s}.blocks.{b}.attn", "stage{s+1}_block{b}/attn"),
    ("layers.{s}.blocks.{b}.attn.qkv", "stage{s+1}_block{b}/attn/qkv"),
    ("layers.{s}.blocks.{b}.attn.proj", "stage{s+1}_block{b}/attn/proj"),
    ("layers.{s}.blocks.{b}.mlp.fc{i}", "stage{s+1}_block{b}/fc{i}"),
    # MeanSparse's copy of timm's Swin (Amini et al. 2024): after each residual sum, and on
    # the MLP's hidden and output.
    ("layers.{s}.blocks.{b}.meansparse{i}", "stage{s+1}_block{b}/sparse{i}"),
    ("layers.{s}.blocks.{b}.mlp.meansparse{i}", "stage{s+1}_block{b}/mlp_sparse{i}"),
    ("norm", "norm"),
]
# timm's SwinTransformer: each stage starts with its patch merging.
TIMM_SWIN: List[Rule] = [
    *_SWIN_BLOCKS, ("head.fc", "fc"),
    ("layers.{s}.downsample.norm", "stage{s+1}_merge_norm"),
    ("layers.{s}.downsample.reduction", "stage{s+1}_merge"),
]
# timm's Xcit (the stem's convolutions at their Sequential positions 0, 2, 4, 6).
TIMM_XCIT: List[Rule] = [
    ("patch_embed.proj.{i}.0", "stem_conv{i}"), ("patch_embed.proj.{i}.1", "stem_bn{i}"),
    ("pos_embed.token_projection", "pos_proj"),
    ("blocks.{b}", "block{b}"), ("blocks.{b}.norm{i}", "block{b}/norm{i}"),
    ("blocks.{b}.attn", "block{b}/attn"), ("blocks.{b}.attn.qkv", "block{b}/attn/qkv"),
    ("blocks.{b}.attn.proj", "block{b}/attn/proj"),
    ("blocks.{b}.local_mp.conv{i}", "block{b}/lpi_conv{i}"),
    ("blocks.{b}.local_mp.bn", "block{b}/lpi_bn"), ("blocks.{b}.mlp.fc{i}", "block{b}/fc{i}"),
    ("cls_attn_blocks.{b}", "cls_block{b}"),
    ("cls_attn_blocks.{b}.norm{i}", "cls_block{b}/norm{i}"),
    *[(f"cls_attn_blocks.{{b}}.attn.{n}", f"cls_block{{b}}/{n}") for n in ("q", "k", "v", "proj")],
    ("cls_attn_blocks.{b}.mlp.fc{i}", "cls_block{b}/fc{i}"),
    ("norm", "norm"), ("head", "fc"),
]
# Microsoft's original SwinTransformer (RobustBench's MIMIR_swin_transformer.py): each stage's
# patch merging sits at the end of the stage before, the head is a bare Linear, and the
# relative position index and attention masks are saved as buffers (ignored: rebuilt here).
MS_SWIN: List[Rule] = [
    *_SWIN_BLOCKS, ("head", "fc"),
    ("layers.{s}.downsample.norm", "stage{s+2}_merge_norm"),
    ("layers.{s}.downsample.reduction", "stage{s+2}_merge"),
    ("layers.{s}.blocks.{b}", ""),  # attn_mask
]
# kuangliu's pytorch-cifar MobileNetV2 (the robust distillation papers' CIFAR student).
CIFAR_MOBILENET_V2: List[Rule] = [
    ("conv1", "conv1"), ("bn1", "bn1"), ("conv2", "conv2"), ("bn2", "bn2"), ("linear", "fc"),
    ("layers.{b}.conv{i}", "block{b+1}/conv{i}"), ("layers.{b}.bn{i}", "block{b+1}/bn{i}"),
    ("layers.{b}.shortcut.0", "block{b+1}/shortcut_conv"),
    ("layers.{b}.shortcut.1", "block{b+1}/shortcut_bn"),
]
# torchvision's mobilenet_v2: the first block has no expansion conv, so its positions shift.
TORCHVISION_MOBILENET_V2: List[Rule] = [
    ("features.0.0", "conv1"), ("features.0.1", "bn1"),
    ("features.18.0", "conv2"), ("features.18.1", "bn2"), ("classifier.1", "fc"),
    ("features.1.conv.0.0", "block1/conv2"), ("features.1.conv.0.1", "block1/bn2"),
    ("features.1.conv.1", "block1/conv3"), ("features.1.conv.2", "block1/bn3"),
    ("features.{b}.conv.0.0", "block{b}/conv1"), ("features.{b}.conv.0.1", "block{b}/bn1"),
    ("features.{b}.conv.1.0", "block{b}/conv2"), ("features.{b}.conv.1.1", "block{b}/bn2"),
    ("features.{b}.conv.2", "block{b}/conv3"), ("features.{b}.conv.3", "block{b}/bn3"),
]


def _ra_resnet_rules(stages: int = 8) -> List[Rule]:
  """RobustArch's ConfigurableModel (RobustBench's robustarch_wide_resnet.py): each block is
  named after its stage twice (`stages.stage2.stage2-block0`), hence rules per stage."""
  rules = [("normalization", ""),  # its input mean / std buffers: the recipe's model.mean / std
           ("stem.stem.stem.0", "stem_conv"), ("stem.stem.stem.1", "stem_bn"), ("fc", "fc")]
  for s in range(1, stages + 1):
    torch_block, flax_block = f"stages.stage{s}.stage{s}-block{{b}}", f"stage{s}_block{{b}}"
    rules += [(f"{torch_block}.proj.0", f"{flax_block}/proj_conv"),
              (f"{torch_block}.proj.1", f"{flax_block}/proj_bn"),
              (f"{torch_block}.F.se.fc{{i}}", f"{flax_block}/se/fc{{i}}")]
    rules += [(f"{torch_block}.F.{p}.{i}", f"{flax_block}/{kind}_{p}")
              for p in "abc" for i, kind in ((0, "conv"), (1, "bn"))]
  return rules


RA_RESNET: List[Rule] = _ra_resnet_rules()

# BiT's ResNetV2 (RobustBench's bit_rn_v2.py). Its units are `unit01`, `unit02`, ...: {t}{u}
# are the digits of that zero-padded number, so that the name is written back as read.
BIT_RESNET_V2: List[Rule] = [
    ("root.conv", "root_conv"), ("head.gn", "head_gn"), ("head.conv", "head_conv"),
    ("body.block{s}.unit{t}{u}.gn{i}", "block{s}_unit{t}{u}/gn{i}"),
    ("body.block{s}.unit{t}{u}.conv{i}", "block{s}_unit{t}{u}/conv{i}"),
    ("body.block{s}.unit{t}{u}.downsample", "block{s}_unit{t}{u}/downsample"),
]

# Bai et al. 2023's MixingNetV4 (RobustBench's mixing_net.py), with the BatchNorm1d of the
# composite model that follows it: one file holds both, as {'model': ..., 'bn': ...}.
MIXING_NET: List[Rule] = [
    ("layers.{l}.{b}.bn1", "layer{l}_{b}/bn1"), ("layers.{l}.{b}.bn2", "layer{l}_{b}/bn2"),
    ("layers.{l}.{b}.conv1", "layer{l}_{b}/conv1"), ("layers.{l}.{b}.conv2", "layer{l}_{b}/conv2"),
    ("layers.{l}.{b}.shortcut.0", "layer{l}_{b}/shortcut"), ("conv1x1", "conv1x1"),
    ("linear", "linear"), ("bn", "bn"),
]
# ResNeSt (RobustBench's resnest.py): a deep stem's convs and norms sit at Sequential indices
# 0, 1, 3, 4, 6; an avg_down shortcut (style "avg_down") pools at index 0 of its Sequential.
def _resnest_rules(shortcut_first: int) -> List[Rule]:
  block = "layer{s}.{b}"
  return [("conv1", "stem_conv"), ("bn1", "stem_bn"), ("fc", "fc"),
          *[(f"conv1.{i}", f"stem_conv{n}") for n, i in ((1, 0), (2, 3), (3, 6))],
          *[(f"conv1.{i}", f"stem_bn{n}") for n, i in ((1, 1), (2, 4))],
          (f"{block}.conv{{i}}", "layer{s}_{b}/conv{i}"),
          (f"{block}.bn{{i}}", "layer{s}_{b}/bn{i}"),
          (f"{block}.conv2.conv", "layer{s}_{b}/conv2/conv"),
          (f"{block}.conv2.bn{{i}}", "layer{s}_{b}/conv2/bn{i}"),
          (f"{block}.conv2.fc{{i}}", "layer{s}_{b}/conv2/fc{i}"),
          (f"{block}.downsample.{shortcut_first}", "layer{s}_{b}/downsample_conv"),
          (f"{block}.downsample.{shortcut_first + 1}", "layer{s}_{b}/downsample_bn")]


# torchvision's AlexNet: its Sequentials' indices (the ReLUs, pools and dropouts between).
ALEXNET: List[Rule] = [
    *[(f"features.{i}", f"conv{n}") for n, i in ((1, 0), (2, 3), (3, 6), (4, 8), (5, 10))],
    ("classifier.1", "fc1"), ("classifier.4", "fc2"), ("classifier.6", "fc"),
]


# (Flax class name, style) -> the PyTorch layouts it reads (the one that names the most keys of
# a file), the first also written. The style is "dm" for the DeepMind-style models
# (TF-'SAME' padding), "imagenet" for an ImageNet stem, "v2" for ConvNeXt V2, "avg_down" for a
# ResNeSt whose shortcuts pool, "cifar_resnext" for a grouped ResNet with a CIFAR stem and
# "card" for a PreActResNet with CARD's 1x1-conv head.
RULES = {("ResNet", ""): [RESNET, TORCHVISION_RESNET, CIFAR_RESNEXT],
         ("ResNet", "cifar_resnext"): [CIFAR_RESNEXT, RESNET, TORCHVISION_RESNET],
         ("ResNet", "imagenet"): [TORCHVISION_RESNET, RESNET],
         ("PreActResNet", ""): [PREACT_RESNET],
         ("PreActResNet", "card"): [CARD_WIDE_PREACT_RESNET, PREACT_RESNET],
         ("WideResNet", ""): [WIDE_RESNET, ROBUST_WIDE_RESNET, ROBUST_RESNET],
         ("WideResNet", "dm"): [DM_WIDE_RESNET], ("PreActResNet", "dm"): [DM_PREACT_RESNET],
         ("ConvNeXt", ""): [TIMM_CONVNEXT], ("VisionTransformer", ""): [TIMM_VIT],
         ("ConvNeXt", "v2"): [CONVNEXT_V2],
         ("MobileNetV2", ""): [CIFAR_MOBILENET_V2], ("SwinTransformer", ""): [TIMM_SWIN, MS_SWIN],
         ("XCiT", ""): [TIMM_XCIT],
         ("RaResNet", ""): [RA_RESNET],
         ("BiTResNetV2", ""): [BIT_RESNET_V2], ("MixingNet", ""): [MIXING_NET],
         ("MobileNetV2", "imagenet"): [TORCHVISION_MOBILENET_V2],
         ("AlexNet", ""): [ALEXNET],
         ("ResNeSt", ""): [_resnest_rules(0)], ("ResNeSt", "avg_down"): [_resnest_rules(1)]}


def style(model) -> str:
  """The key's second part for a Flax model (see RULES)."""
  if getattr(model, "tf_same_padding", False):
    return "dm"
  if type(model).__name__ == "ConvNeXt" and model.version == 2:
    return "v2"
  if type(model).__name__ == "ResNeSt" and model.avg_down:
    return "avg_down"
  if type(model).__name__ == "ResNet" and model.groups > 1 and model.stem == "cifar":
    return "cifar_resnext"
  if type(model).__name__ == "PreActResNet" and model.conv_head:
    return "card"
  imagenet = "imagenet" in (getattr(model, "stem", ""), getattr(model, "form", ""))
  return "imagenet" if imagenet else ""

_FIELD = re.compile(r"\{(\w+)(?:\+(\d+))?\}")

# (PyTorch tensor name, tensor rank) -> (Flax collection, Flax leaf name)
LEAVES = {("weight", 4): ("params", "kernel"), ("weight", 2): ("params", "kernel"),
          ("bias", 1): ("params", "bias"), ("weight", 1): ("params", "scale"),
          ("running_mean", 1): ("batch_stats", "mean"), ("running_var", 1): ("batch_stats", "var"),
          ("alpha", 1): ("params", "alpha"), ("beta", 1): ("params", "beta"),
          ("gamma", 1): ("params", "gamma"),
          ("gamma", 4): ("params", "gamma"), ("beta", 4): ("params", "beta"),  # ConvNeXt V2's GRN
          # A ViT's own parameters (module path empty): its class token, position embeddings.
          ("cls_token", 3): ("params", "cls_token"), ("pos_embed", 3): ("params", "pos_embed"),
          ("threshold", 0): ("batch_stats", "threshold"),  # MeanSparse's
          # XCiT's layer scales and attention temperatures.
          ("gamma1", 1): ("params", "gamma1"), ("gamma2", 1): ("params", "gamma2"),
          ("gamma3", 1): ("params", "gamma3"), ("temperature", 3): ("params", "temperature"),
          # Swin's window attention: its relative position bias table.
          ("relative_position_bias_table", 2): ("params", "relative_position_bias_table")}


def _match(pattern: str, text: str) -> Optional[Dict[str, object]]:
  """The field values (offsets removed) if `text` matches `pattern` whole, else None."""
  regex, pos, offsets = "", 0, {}
  for m in _FIELD.finditer(pattern):
    name = m.group(1)
    regex += re.escape(pattern[pos:m.start()])
    regex += f"(?P<{name}>.+)" if name == "rest" else f"(?P<{name}>\\d+)"
    offsets[name] = int(m.group(2) or 0)
    pos = m.end()
  found = re.fullmatch(regex + re.escape(pattern[pos:]), text)
  if not found:
    return None
  return {k: (v if k == "rest" else int(v) - offsets[k]) for k, v in found.groupdict().items()}


def _fill(pattern: str, values: Dict[str, object]) -> str:
  return _FIELD.sub(lambda m: str(values[m.group(1)] if m.group(1) == "rest"
                                  else values[m.group(1)] + int(m.group(2) or 0)), pattern)


# Leaves a file may carry that the PyTorch module does not use: the pruning scores beside the
# weights of Diffenderfer et al.'s LRR files (RobustBench's loader skips "conv1.scores" too).
IGNORED_LEAVES = ("scores", "relative_position_index", "flag_update_statistics", "batch_num",
                  "momentum", "epsilon")


def to_flax(torch_key: str, value: np.ndarray, rules: List[Rule]
            ) -> Optional[Tuple[Tuple[str, ...], np.ndarray]]:
  """(collection, *module path, leaf) and the re-laid-out array; None if no rule matches;
  () if a rule says to ignore the key."""
  module, _, leaf = torch_key.rpartition(".")
  if not module and (leaf, value.ndim) in LEAVES:  # the model's own parameter
    return LEAVES[(leaf, value.ndim)], value
  for torch_pat, flax_pat in rules:
    m = _match(torch_pat, module)
    if m is None:
      continue
    if not flax_pat or leaf in IGNORED_LEAVES:
      return (), value
    key = (leaf, value.ndim)
    if key not in LEAVES:
      return None
    collection, flax_leaf = LEAVES[key]
    if value.ndim == 4 and leaf == "weight":
      value = np.transpose(value, (2, 3, 1, 0))  # OIHW -> HWIO
    elif value.ndim == 2 and leaf == "weight":  # a Linear's (out, in) -> (in, out)
      value = value.T
    return (collection, *_fill(flax_pat, m).split("/"), flax_leaf), value
  return None


def to_torch(path: Tuple[str, ...], value: np.ndarray, rules: List[Rule]) -> Optional[Tuple[str, np.ndarray]]:
  """The inverse of `to_flax` for one Flax leaf (collection, *module path, leaf)."""
  collection, *module, leaf = path
  inverse = {v: k for k, v in LEAVES.items()}
  if (collection, leaf) not in inverse:
    return None
  torch_leaf, _ = inverse[(collection, leaf)]
  if not module:
    return torch_leaf, value
  module_path = "/".join(module)
  for torch_pat, flax_pat in rules:
    if not flax_pat:
      continue
    m = _match(flax_pat, module_path)
    if m is not None:
      if value.ndim == 4 and leaf == "kernel":
        value = np.transpose(value, (3, 2, 0, 1))  # HWIO -> OIHW
      elif value.ndim == 2 and leaf == "kernel":
        value = value.T
      return f"{_fill(torch_pat, m)}.{torch_leaf}", value
  return None
