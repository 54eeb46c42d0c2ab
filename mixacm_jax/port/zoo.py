"""RobustBench's model zoo by name, offline: the recipe of an entry (`zoo_recipes`, generated
from the installed robustbench's own zoo files), the file where RobustBench's `load_model`
keeps it, and the Flax model with its weights. Nothing is downloaded, nothing in a file runs;
torch is not needed."""
import difflib
import os
from typing import Any, Dict, Optional, Tuple

from mixacm_jax import models
from mixacm_jax.errors import CheckpointError, ConfigError
from mixacm_jax.port import convert, state_dict as sd_lib, zoo_recipes

# RobustBench's spellings (its BenchmarkDataset / ThreatModel values).
DATASETS = {d.lower(): d for d in zoo_recipes.RECIPES}
THREAT_MODELS = {"linf": "Linf", "l2": "L2", "corruptions": "corruptions"}


def _canonical(dataset: str, threat_model: str) -> Tuple[str, str]:
  found = DATASETS.get(str(dataset).lower().replace("-", ""))
  if found is None:
    raise ConfigError(f"unknown RobustBench dataset {dataset!r}; known: "
                      f"{', '.join(zoo_recipes.RECIPES)}")
  threat = THREAT_MODELS.get(str(threat_model).lower())
  if threat is None or threat not in zoo_recipes.RECIPES[found]:
    raise ConfigError(f"unknown threat model {threat_model!r} for {found}; known: "
                      f"{', '.join(zoo_recipes.RECIPES[found])}")
  return found, threat


def recipe(name: str, dataset: str = "cifar10", threat_model: str = "Linf") -> Dict[str, Any]:
  """The recipe of a supported zoo entry; one-line ConfigError for an unknown or unsupported
  name, naming the nearest known names or why it is not supported."""
  dataset, threat = _canonical(dataset, threat_model)
  entries = zoo_recipes.RECIPES[dataset][threat]
  if name not in entries:
    elsewhere = [f"{d} {t}" for d, tables in zoo_recipes.RECIPES.items()
                 for t, es in tables.items() if name in es]
    hint = (f"it is an entry of {', '.join(elsewhere)}: set the dataset / threat model"
            if elsewhere else "nearest: " + (", ".join(
                difflib.get_close_matches(name, list(entries), n=3, cutoff=0.5)) or "none"))
    raise ConfigError(f"RobustBench has no {dataset} {threat} entry {name!r} (robustbench=="
                      f"{zoo_recipes.ROBUSTBENCH_VERSION}); {hint}")
  found = entries[name]
  if "unsupported" in found:
    raise ConfigError(f"RobustBench's {name} ({dataset} {threat}) has no Flax twin here: "
                      f"{found['unsupported']}")
  return found


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
  <name>.pt_m0.pt, ...; an entry built on torchvision's pretrained weights (Standard_R50)
  reads torch.hub's file, unless a copy lies at the entry's own path."""
  members = found.get("softmax_ensemble", 0)
  if members:
    return tuple(f"{path}_m{i}.pt" for i in range(members))
  if found.get("torchvision_weights") and not os.path.isfile(path):
    return (os.path.join(torch_hub_checkpoints(), found["torchvision_weights"]),)
  return (path,)


def create_model(found: Dict[str, Any], *, mean=None, std=None, dtype: str = "float32"):
  """The Flax model of a recipe; `mean` / `std` (from the file) override the recipe's."""
  mean = mean if mean is not None else found["mean"]
  std = std if std is not None else found["std"]
  if found.get("softmax_ensemble"):
    return models.SoftmaxEnsemble(
        members=tuple(_member(found, dtype) for _ in range(found["softmax_ensemble"])),
        num_classes=found["num_classes"], mean=mean, std=std, dtype=models.compute_dtype(dtype))
  return models.create_model(found["arch"], num_classes=found["num_classes"], mean=mean,
                             std=std, dtype=dtype, **dict(found["kwargs"]))


def _member(found, dtype):
  """One member of an ensemble: the inputs reach it normalised already."""
  return models.create_model(found["arch"], num_classes=found["num_classes"], dtype=dtype,
                             **dict(found["kwargs"]))


def load_entry(name: str, dataset: str = "cifar10", threat_model: str = "Linf",
               model_dir: str = "./models", dtype: str = "float32"
               ) -> Tuple[Any, Dict[str, Any], Dict[str, Any]]:
  """(model, variables, info) of a zoo entry; info holds the recipe, the file and the
  normalisation used."""
  found = recipe(name, dataset, threat_model)
  path = checkpoint_path(name, dataset, threat_model, model_dir)
  dataset, threat = _canonical(dataset, threat_model)
  members = found.get("softmax_ensemble", 0)
  files = weight_files(found, path)
  for file in files:
    if not os.path.isfile(file):
      fetch = (f"python -c \"from robustbench.utils import load_model; load_model('{name}', "
               f"model_dir='{model_dir}', dataset='{dataset}', threat_model='{threat}')\"")
      copy = (f"copy torch.hub's checkpoints/{found['torchvision_weights']} to {path} or "
              f"{file}" if found.get("torchvision_weights") else f"copy {model_dir} here")
      raise CheckpointError(f"{file} not found; mixacm_jax never downloads: fetch it where "
                            f"there is network with {fetch} and {copy}")
  nested = (found["checkpoint_key"],) + tuple(
      k for k in sd_lib.NESTED_KEYS if k != found["checkpoint_key"])
  converted, norm = [], {"mean": None, "std": None}
  for file in files:
    state, file_norm = sd_lib.clean_state_dict(sd_lib.read_weight_file(file, nested_keys=nested))
    norm = {k: norm[k] or file_norm[k] for k in norm}
    target = _member(found, dtype) if members else create_model(
        found, mean=file_norm["mean"], std=file_norm["std"], dtype=dtype)
    try:
      converted.append(convert.torch_to_flax(state, target, found["image_shape"]))
    except CheckpointError as e:
      raise CheckpointError(f"{file} does not hold RobustBench's {name} ({found['arch']}"
                            f"{_kwargs_text(found)}): {e}") from None
  model = create_model(found, mean=norm["mean"], std=norm["std"], dtype=dtype)
  variables = converted[0] if not members else {
      col: {f"members_{i}": v[col] for i, v in enumerate(converted)} for col in converted[0]}
  info = {"robustbench": name, "dataset": dataset, "threat_model": threat,
          "source": path if members else files[0],
          "arch": found["arch"], "kwargs": dict(found["kwargs"]),
          "num_classes": found["num_classes"], "mean": model.mean, "std": model.std,
          "image_shape": tuple(found["image_shape"]),
          "preprocessing": found.get("preprocessing"),
          "robustbench_version": zoo_recipes.ROBUSTBENCH_VERSION}
  return model, variables, info


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


def coverage(dataset: Optional[str] = None) -> Dict[Tuple[str, str], Tuple[int, int]]:
  """{(dataset, threat model): (entries supported by name, entries)}."""
  return {(d, t): (sum("arch" in e for e in es.values()), len(es))
          for d, tables in zoo_recipes.RECIPES.items() if dataset in (None, d)
          for t, es in tables.items()}
