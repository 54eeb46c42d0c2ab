"""RobustBench's model zoo by name, offline: the recipe of an entry (generated from RobustBench's
own zoo files: `zoo_recipes` from the pinned wheel, `zoo_recipes_main` from its main branch at
a commit), the file where RobustBench's `load_model` keeps it, and the Flax model with its
weights. Nothing is downloaded, nothing in a file runs; torch is not needed."""
import difflib
import os
from typing import Any, Dict, Optional, Tuple

import jax

from mixacm_jax import models
from mixacm_jax.errors import CheckpointError, ConfigError
from mixacm_jax.port import convert, state_dict as sd_lib, zoo_recipes, zoo_recipes_main

# The zoos a name is looked up in, in order: the pinned wheel's, then the main branch's.
ZOOS = (zoo_recipes, zoo_recipes_main)
# RobustBench's spellings (its BenchmarkDataset / ThreatModel values).
DATASETS = {d.lower(): d for z in ZOOS for d in z.RECIPES}
THREAT_MODELS = {"linf": "Linf", "l2": "L2", "corruptions": "corruptions"}


def zoo_name(version: str) -> str:
  """robustbench==1.1.1, or RobustBench's main branch at a commit."""
  return (f"RobustBench's main branch (commit {version[5:17]})" if version.startswith("main@")
          else f"robustbench=={version}")


def _tables(dataset: str):
  return [(z.ROBUSTBENCH_VERSION, z.RECIPES[dataset]) for z in ZOOS if dataset in z.RECIPES]


def _canonical(dataset: str, threat_model: str) -> Tuple[str, str]:
  found = DATASETS.get(str(dataset).lower().replace("-", ""))
  if found is None:
    raise ConfigError(f"unknown RobustBench dataset {dataset!r}; known: "
                      f"{', '.join(DATASETS.values())}")
  threats = [t for _, tables in _tables(found) for t in tables]
  threat = THREAT_MODELS.get(str(threat_model).lower())
  if threat is None or threat not in threats:
    raise ConfigError(f"unknown threat model {threat_model!r} for {found}; known: "
                      f"{', '.join(dict.fromkeys(threats))}")
  return found, threat


def lookup(name: str, dataset: str = "cifar10",
           threat_model: str = "Linf") -> Tuple[str, Dict[str, Any]]:
  """(the zoo's version, the recipe) of a supported entry: from the pinned wheel's zoo where
  it has the entry, else from the main branch's. One-line ConfigError for an unknown or
  unsupported name, naming the nearest known names or why it is not supported."""
  dataset, threat = _canonical(dataset, threat_model)
  found = [(v, tables[threat][name]) for v, tables in _tables(dataset)
           if name in tables.get(threat, {})]
  for version, entry in found:
    if "arch" in entry:
      return version, entry
  if found:
    version, entry = found[-1]
    raise ConfigError(f"RobustBench's {name} ({dataset} {threat}, {zoo_name(version)}) has no "
                      f"Flax twin here: {entry['unsupported']}")
  elsewhere = [f"{d} {t}" for z in ZOOS for d, tables in z.RECIPES.items()
               for t, es in tables.items() if name in es]
  known = [n for _, tables in _tables(dataset) for n in tables.get(threat, {})]
  hint = (f"it is an entry of {', '.join(dict.fromkeys(elsewhere))}: set the dataset / threat "
          "model" if elsewhere else "nearest: " + (", ".join(
              difflib.get_close_matches(name, known, n=3, cutoff=0.5)) or "none"))
  raise ConfigError(f"RobustBench has no {dataset} {threat} entry {name!r} in "
                    f"{' or '.join(zoo_name(z.ROBUSTBENCH_VERSION) for z in ZOOS)}; {hint}")


def recipe(name: str, dataset: str = "cifar10", threat_model: str = "Linf") -> Dict[str, Any]:
  """The recipe of a supported zoo entry (see `lookup`)."""
  return lookup(name, dataset, threat_model)[1]


def checkpoint_path(name: str, dataset: str = "cifar10", threat_model: str = "Linf",
                    model_dir: str = "./models") -> str:
  """Where RobustBench's `load_model` keeps the entry: <model_dir>/<dataset>/<threat>/<name>.pt"""
  dataset, threat = _canonical(dataset, threat_model)
  return os.path.join(model_dir, dataset, threat, f"{name}.pt")


def torch_hub_checkpoints() -> str:
  """torch.hub's folder of downloaded weights (`torch.hub.get_dir()/checkpoints`), found
  without importing torch: $TORCH_HOME, else $XDG_CACHE_HOME/torch, else ~/.cache/torch."""
  home = os.environ.get("TORCH_HOME") or os.path.join(
      os.environ.get("XDG_CACHE_HOME") or "~/.cache", "torch")
  return os.path.join(os.path.expanduser(home), "hub", "checkpoints")


def weight_files(found: Dict[str, Any], path: str) -> Tuple[str, ...]:
  """The files an entry's weights are read from: RobustBench keeps an ensemble's members as
  <name>.pt_m0.pt, ...; an entry built on torchvision's or timm's pretrained weights
  (Standard_R50, the DeiTs) reads torch.hub's file, unless a copy lies at the entry's own
  path."""
  members = _member_count(found)
  if members:
    return tuple(f"{path}_m{i}.pt" for i in range(members))
  if found.get("hub_weights") and not os.path.isfile(path):
    return (os.path.join(torch_hub_checkpoints(), found["hub_weights"]),)
  return (path,)


# The members of the mixed classifiers, in RobustBench's file order (<name>.pt_m0.pt, ...), and
# the parts among them that are not classifiers.
MEMBER_NAMES = {"mixed_nuts": ("accurate", "robust"),
                "adaptive_smoothing": ("accurate", "robust", "mixing")}
PARTS = {"mixing_net": models.MixingNet}


def _member_count(found: Dict[str, Any]) -> int:
  """How many files (members) an ensemble entry has; 0 for one network."""
  return found.get("softmax_ensemble", 0) or len(found.get("members", ()))


def create_model(found: Dict[str, Any], *, mean=None, std=None, dtype: str = "float32"):
  """The Flax model of a recipe; `mean` / `std` (from the file) override the recipe's."""
  mean = mean if mean is not None else found["mean"]
  std = std if std is not None else found["std"]
  if found.get("softmax_ensemble"):
    return models.SoftmaxEnsemble(
        members=tuple(_member(found, dtype) for _ in range(found["softmax_ensemble"])),
        num_classes=found["num_classes"], mean=mean, std=std, dtype=models.compute_dtype(dtype))
  if found.get("members"):  # networks of different kinds, each normalising its own input
    parts = dict(zip(MEMBER_NAMES[found["arch"]],
                     (_member(found, dtype, i) for i in range(len(found["members"])))))
    return models.create_model(found["arch"], num_classes=found["num_classes"], dtype=dtype,
                               **parts, **dict(found["kwargs"]))
  return models.create_model(found["arch"], num_classes=found["num_classes"], mean=mean,
                             std=std, dtype=dtype, **dict(found["kwargs"]))


def _member(found, dtype, index: int = 0):
  """One member of an ensemble: a softmax ensemble's inputs reach it normalised already; a
  mixed classifier's members are different networks, each with its own normalisation."""
  if found.get("members"):
    member = found["members"][index]
    if member["arch"] in PARTS:  # not a classifier (a mixing network)
      return PARTS[member["arch"]](dtype=models.compute_dtype(dtype), **dict(member["kwargs"]))
    return models.create_model(member["arch"], num_classes=found["num_classes"],
                               mean=member["mean"], std=member["std"], dtype=dtype,
                               **dict(member["kwargs"]))
  return models.create_model(found["arch"], num_classes=found["num_classes"], dtype=dtype,
                             **dict(found["kwargs"]))


def load_entry(name: str, dataset: str = "cifar10", threat_model: str = "Linf",
               model_dir: str = "./models", dtype: str = "float32"
               ) -> Tuple[Any, Dict[str, Any], Dict[str, Any]]:
  """(model, variables, info) of a zoo entry; info holds the recipe, the file and the
  normalisation used."""
  version, found = lookup(name, dataset, threat_model)
  path = checkpoint_path(name, dataset, threat_model, model_dir)
  dataset, threat = _canonical(dataset, threat_model)
  members = _member_count(found)
  files = weight_files(found, path)
  for file in files:
    if not os.path.isfile(file):
      fetch = (f"python -c \"from robustbench.utils import load_model; load_model('{name}', "
               f"model_dir='{model_dir}', dataset='{dataset}', threat_model='{threat}')\"")
      if version.startswith("main@"):  # the pinned wheel does not know the entry
        fetch += f" (with RobustBench installed from {zoo_name(version)})"
      copy = (f"copy torch.hub's checkpoints/{found['hub_weights']} to {path} or "
              f"{file}" if found.get("hub_weights") else f"copy {model_dir} here")
      raise CheckpointError(f"{file} not found; mixacm_jax never downloads: fetch it where "
                            f"there is network with {fetch} and {copy}")
  model, variables = load_files(found, files, dtype, what=f"RobustBench's {name}")
  info = {"robustbench": name, "dataset": dataset, "threat_model": threat,
          "source": path if members else files[0],
          "arch": found["arch"], "kwargs": dict(found["kwargs"]),
          "num_classes": found["num_classes"], "mean": model.mean, "std": model.std,
          "image_shape": tuple(found["image_shape"]),
          "preprocessing": found.get("preprocessing"),
          "robustbench_version": version}
  return model, variables, info


def load_files(found: Dict[str, Any], files, dtype: str = "float32",
               what: str = "the recipe's network") -> Tuple[Any, Dict]:
  """(model, variables) of a recipe from its weight files (one per member of an ensemble);
  `what` names the network in the error of a file that does not fit."""
  members = _member_count(found)
  nested = (found["checkpoint_key"],) + tuple(
      k for k in sd_lib.NESTED_KEYS if k != found["checkpoint_key"])
  converted, norm = [], {"mean": None, "std": None}
  for i, file in enumerate(files):
    merged = found["members"][i].get("merge") if found.get("members") else None
    raw = ({prefix + k: v for key, prefix in merged
            for k, v in sd_lib.read_weight_file(file, nested_keys=("state_dict", key)).items()}
           if merged
           else sd_lib.read_weight_file(file, nested_keys=nested))
    state, file_norm = sd_lib.clean_state_dict(raw)
    norm = {k: norm[k] or file_norm[k] for k in norm}
    target = _member(found, dtype, i) if members else create_model(
        found, mean=file_norm["mean"], std=file_norm["std"], dtype=dtype)
    try:
      converted.append(convert.torch_to_flax(state, target, found["image_shape"],
                                             _part_shapes(found, i)))
    except CheckpointError as e:
      part = found["members"][i] if found.get("members") else found
      raise CheckpointError(f"{file} does not hold {what} ({part['arch']}"
                            f"{_kwargs_text(part)}): {e}") from None
  model = create_model(found, mean=norm["mean"], std=norm["std"], dtype=dtype)
  if not members:
    return model, converted[0]
  names = (MEMBER_NAMES[found["arch"]] if found.get("members")
           else [f"members_{i}" for i in range(members)])
  return model, {col: {n: v[col] for n, v in zip(names, converted) if col in v}
                 for col in dict.fromkeys(c for v in converted for c in v)}


def _part_shapes(found: Dict[str, Any], index: int) -> Optional[Dict[str, Any]]:
  """The variable shapes of member `index` when it is a part that takes no images (a mixing
  network): read off the whole model's; None for a classifier."""
  members = found.get("members", ())
  if index >= len(members) or members[index]["arch"] not in PARTS:
    return None
  shapes = jax.eval_shape(lambda: models.init_variables(
      create_model(found), jax.random.PRNGKey(0), found["image_shape"]))
  name = MEMBER_NAMES[found["arch"]][index]
  return {col: tree[name] for col, tree in shapes.items() if name in tree}


def _kwargs_text(found) -> str:
  kwargs = dict(found["kwargs"])
  return " " + ", ".join(f"{k}={v}" for k, v in kwargs.items()) if kwargs else ""


def load_robustbench(name: str, dataset: str = "cifar10", threat_model: str = "Linf",
                     model_dir: str = "./models", dtype: str = "float32"
                     ) -> Tuple[Any, Dict[str, Any]]:
  """(Flax model, {"params", "batch_stats"}) of RobustBench's zoo entry `name`, read from
  `<model_dir>/<dataset>/<threat_model>/<name>.pt` (RobustBench's own layout). The model
  takes NHWC images in [0, 1] and normalises them inside, as RobustBench's module does."""
  model, variables, _ = load_entry(name, dataset, threat_model, model_dir, dtype)
  return model, variables


def coverage(dataset: Optional[str] = None, zoo=zoo_recipes
             ) -> Dict[Tuple[str, str], Tuple[int, int]]:
  """{(dataset, threat model): (entries supported by name, entries)} of one zoo (the pinned
  wheel's by default, or `zoo_recipes_main`)."""
  return {(d, t): (sum("arch" in e for e in es.values()), len(es))
          for d, tables in zoo.RECIPES.items() if dataset in (None, d)
          for t, es in tables.items()}
