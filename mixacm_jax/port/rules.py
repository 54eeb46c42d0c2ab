"""One rule table per architecture: a PyTorch module path pattern <-> a Flax module path.

A rule maps modules, not single tensors: the tensor's name and rank decide the rest
(conv weight OIHW <-> kernel HWIO, linear weight (out, in) <-> kernel (in, out), BatchNorm
weight/bias <-> params scale/bias and running_mean/var <-> batch_stats mean/var). `{x}`
fields stand for integers; PyTorch indices are 0-based, Flax names follow the same numbers.
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
PREACT_RESNET: List[Rule] = [
    ("conv1", "conv1"), ("bn", "bn"),
    ("layer{s}.{b}.conv{i}", "layer{s}_{b}/conv{i}"),
    ("layer{s}.{b}.bn{i}", "layer{s}_{b}/bn{i}"),
    ("layer{s}.{b}.shortcut.0", "layer{s}_{b}/shortcut_conv"),
    ("linear", "fc"),
]
WIDE_RESNET: List[Rule] = [
    ("conv1", "conv1"), ("bn1", "bn"), ("fc", "fc"),
    ("block{s}.layer.{b}.conv{i}", "block{s}_{b}/conv{i}"),
    ("block{s}.layer.{b}.bn{i}", "block{s}_{b}/bn{i}"),
    ("block{s}.layer.{b}.convShortcut", "block{s}_{b}/shortcut_conv"),
    ("sub_block1.layer.{b}.{rest}", ""),  # TRADES' unused duplicate of block1
]
# Flax class name -> rules.
RULES = {"ResNet": RESNET, "PreActResNet": PREACT_RESNET, "WideResNet": WIDE_RESNET}

# (PyTorch tensor name, tensor rank) -> (Flax collection, Flax leaf name)
LEAVES = {("weight", 4): ("params", "kernel"), ("weight", 2): ("params", "kernel"),
          ("bias", 1): ("params", "bias"), ("weight", 1): ("params", "scale"),
          ("running_mean", 1): ("batch_stats", "mean"), ("running_var", 1): ("batch_stats", "var")}


def _regex(pattern: str) -> "re.Pattern":
  out, pos = "", 0
  for m in re.finditer(r"\{(\w+)\}", pattern):
    out += re.escape(pattern[pos:m.start()])
    out += f"(?P<{m.group(1)}>.+)" if m.group(1) == "rest" else f"(?P<{m.group(1)}>\\d+)"
    pos = m.end()
  return re.compile(out + re.escape(pattern[pos:]) + "$")


def to_flax(torch_key: str, value: np.ndarray, rules: List[Rule]
            ) -> Optional[Tuple[Tuple[str, ...], np.ndarray]]:
  """(collection, *module path, leaf) and the re-laid-out array; None if no rule matches;
  () if a rule says to ignore the key."""
  module, _, leaf = torch_key.rpartition(".")
  for torch_pat, flax_pat in rules:
    m = _regex(torch_pat).match(module)
    if not m:
      continue
    if not flax_pat:
      return (), value
    key = (leaf, value.ndim)
    if key not in LEAVES:
      return None
    collection, flax_leaf = LEAVES[key]
    if value.ndim == 4:
      value = np.transpose(value, (2, 3, 1, 0))  # OIHW -> HWIO
    elif value.ndim == 2:
      value = value.T
    return (collection, *flax_pat.format(**m.groupdict()).split("/"), flax_leaf), value
  return None


def to_torch(path: Tuple[str, ...], value: np.ndarray, rules: List[Rule]) -> Optional[Tuple[str, np.ndarray]]:
  """The inverse of `to_flax` for one Flax leaf (collection, *module path, leaf)."""
  collection, *module, leaf = path
  inverse = {v: k for k, v in LEAVES.items()}
  if (collection, leaf) not in inverse:
    return None
  torch_leaf, _ = inverse[(collection, leaf)]
  module_path = "/".join(module)
  for torch_pat, flax_pat in rules:
    if not flax_pat:
      continue
    m = _regex(flax_pat).match(module_path)
    if m:
      if value.ndim == 4:
        value = np.transpose(value, (3, 2, 0, 1))  # HWIO -> OIHW
      elif value.ndim == 2:
        value = value.T
      return f"{torch_pat.format(**m.groupdict())}.{torch_leaf}", value
  return None


def flatten(tree: Dict, prefix=()) -> Dict[Tuple[str, ...], np.ndarray]:
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict):
      out.update(flatten(v, prefix + (k,)))
    else:
      out[prefix + (k,)] = v
  return out


def unflatten(flat: Dict[Tuple[str, ...], np.ndarray]) -> Dict:
  tree: Dict = {}
  for path, v in flat.items():
    node = tree
    for k in path[:-1]:
      node = node.setdefault(k, {})
    node[path[-1]] = v
  return tree
