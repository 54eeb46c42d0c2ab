"""Proof that every supported RobustBench entry loads by name with RobustBench's logits.

For each supported entry: its own PyTorch module (built by the zoo's constructor, random
weights and BatchNorm statistics), saved as RobustBench lays a file out (under the key its
loader opens, with DataParallel prefixes), loaded back with `zoo.load_robustbench`, and the
logits of both on the same random images compared. Entries with the same class and recipe
are checked once. Needs torch; runs outside CI (about 8 minutes on 2 CPU cores):

    python -m tools.robustbench_parity             # writes docs/robustbench_parity.md
    python -m tools.robustbench_parity --only=Zhang2019Theoretically,Ding2020MMA
    python -m tools.robustbench_parity --source=<RobustBench checkout>  # its main branch:
                                                   # docs/robustbench_parity_main.md
"""
import argparse
import os
import sys
import tempfile
import time
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

from mixacm_jax.port import zoo, zoo_recipes, zoo_recipes_main
from tools import robustbench_zoo as robustbench

TOLERANCE = 1e-4
LOGIT_SCALE = 20.0  # the largest |logit| of each check; trained CIFAR models reach 10-30
REPORTS = {"wheel": os.path.join(robustbench.ROOT, "docs", "robustbench_parity.md"),
           "main": os.path.join(robustbench.ROOT, "docs", "robustbench_parity_main.md")}


def save_as_robustbench(net, recipe, path: str) -> None:
  """The layouts RobustBench's loader reads: {'last': {...}} for the entries it opens at
  'last', else {'state_dict': {'module.' + key}} (Carmon et al.'s DataParallel files); for
  the ImageNet entries the wrapped network's keys (the loader adds the wrapper's `model.`),
  and for those on torchvision's pretrained weights torch.hub's plain state_dict, at the
  entry's own path (which the loader reads before torch.hub's cache: the user's cache is
  never touched)."""
  import torch  # pylint: disable=g-import-not-at-top
  net, _ = robustbench.unwrap_normalize_model(net)
  if recipe.get("hub_weights"):
    torch.save(net.state_dict(), path)
    return
  if recipe.get("softmax_ensemble") or recipe.get("members"):  # a file per member, as
    members = net.models if recipe.get("softmax_ensemble") else ensemble_members(net)
    for i, member in enumerate(members):  # RobustBench keeps them
      member, _ = robustbench.unwrap_normalize_model(member)
      torch.save({"state_dict": {f"module.{k}": v for k, v in member.state_dict().items()}},
                 f"{path}_m{i}.pt")
    if type(net).__name__ == "CompositeModelWrapper":  # the mixing network and its BatchNorm
      comp = net._comp_model  # pylint: disable=protected-access
      torch.save({"model": comp.policy_net.state_dict(), "bn": comp.bn.state_dict()},
                 f"{path}_m{len(members)}.pt")
    return
  state = net.state_dict()
  if recipe["checkpoint_key"] == "last":
    payload = {"last": state, "best": state, "epoch": 30}
  else:
    payload = {"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 99}
  torch.save(payload, path)


def ensemble_members(net):
  """A mixed classifier's member classifiers in RobustBench's file order: accurate, then
  robust (Bai et al. 2023's mixing network is saved after them)."""
  if type(net).__name__ == "CompositeModelWrapper":
    return tuple(net._comp_model.models)  # pylint: disable=protected-access
  return (net.std_model, net.rob_model)


def member_inputs(net, x):
  """What each member classifier sees: the composite's accurate member takes x resized."""
  import torch  # pylint: disable=g-import-not-at-top
  if type(net).__name__ == "CompositeModelWrapper" and net._comp_model.resize:  # pylint: disable=protected-access
    return (torch.nn.functional.interpolate(x, size=(128, 128), mode="bilinear"), x)
  return (x, x)


def classifier_layer(net):
  """The last Linear, else the last convolution (BiT's 1x1-convolution head)."""
  import torch  # pylint: disable=g-import-not-at-top
  layers = [m for m in net.modules() if isinstance(m, torch.nn.Linear)]
  return (layers or [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)])[-1]


def logits_at_scale(net, x, scale: float = LOGIT_SCALE) -> None:
  """Scales the classifier so that the largest |logit| on `x` is `scale`, as in trained
  models: random weights without trained BatchNorm give logits anywhere from 0.1 to 1e4,
  where a fixed tolerance means nothing."""
  import torch  # pylint: disable=g-import-not-at-top
  classifier = classifier_layer(net)
  with torch.no_grad():
    out = net(x)
    factor = scale / float((out[0] if isinstance(out, tuple) else out).abs().max())
    classifier.weight.mul_(factor)
    if classifier.bias is not None:
      classifier.bias.mul_(factor)


CALIBRATED = "calibrated"  # the alias of an entry checked with calibrated BatchNorm
# ... and of one whose float32 stays chaotic even so (BiT-M-R152x2 with random weights: its
# float32 logits and RobustBench's are each 1e-4 from the float64 ones), checked in float64.
FLOAT64 = "float64"
NOTES = {CALIBRATED: "BatchNorm calibrated", FLOAT64: "in float64"}


def calibrate_batchnorm(net, x) -> None:
  """Running statistics set to those of `x` (as training leaves them): a deep random network
  with random statistics can be chaotic, its float32 and float64 logits far apart."""
  import torch  # pylint: disable=g-import-not-at-top
  members = (tuple(zip(ensemble_members(net), member_inputs(net, x)))
             if type(net).__name__ in robustbench.MIXED_CLASSIFIERS else ())
  for member, inputs in members:  # a mixed classifier runs only with its members in eval mode
    calibrate_batchnorm(member, inputs)
  inside = {id(m) for member, _ in members for m in member.modules()}
  norms = [m for m in net.modules() if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d))
           and id(m) not in inside]
  for m in norms:
    m.reset_running_stats()
    m.momentum = None  # the cumulative average: one batch sets the statistics
  if norms:
    with torch.no_grad():
      net.train()(x)
  net.eval()


def float64_logits(net, x) -> np.ndarray:
  """The module's logits computed in float64 (on a copy; plain tensor attributes, such as a
  mean / std, too)."""
  import copy  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  wide = copy.deepcopy(net).double()
  for module in wide.modules():
    for key, value in vars(module).items():
      if isinstance(value, torch.Tensor) and value.is_floating_point():
        setattr(module, key, value.double())
  with torch.no_grad():
    return wide(x.double()).numpy()


def in_float64(module):
  """A Flax model and its submodule fields (an ensemble's members) computing in float64; to
  be applied inside `jax.enable_x64(True)` on float64 variables."""
  import dataclasses  # pylint: disable=g-import-not-at-top
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  def wide(value):
    if isinstance(value, nn.Module):
      return in_float64(value)
    return tuple(map(wide, value)) if isinstance(value, tuple) else value
  fields = {f.name: wide(getattr(module, f.name)) for f in dataclasses.fields(module)
            if f.name not in ("parent", "name")}
  if "dtype" in fields:
    fields["dtype"] = jnp.float64
  return module.clone(**fields)


def _flax_float64_logits(model, variables, x) -> np.ndarray:
  import jax  # pylint: disable=g-import-not-at-top
  with jax.enable_x64(True):
    wide = jax.tree_util.tree_map(lambda v: np.asarray(v, np.float64), variables)
    return np.asarray(in_float64(model).apply(wide, x.numpy().astype(np.float64).transpose(
        0, 2, 3, 1)))


def check_entry(name: str, dataset: str, threat: str, entry: dict, model_dir: str,
                batch: int = 2, seed: int = 0, calibrate: bool = False
                ) -> Tuple[float, float, str]:
  """(max |logit difference| between RobustBench's module and the by-name Flax model,
  max |logit| of RobustBench's module, how: "" or CALIBRATED or FLOAT64). A module whose own
  float32 logits are chaotic with random statistics is checked again with its BatchNorm
  calibrated; one still chaotic is compared in float64, its own and the Flax model's."""
  import torch  # pylint: disable=g-import-not-at-top
  recipe = zoo.recipe(name, dataset, threat)
  torch.manual_seed(seed)
  with robustbench.pretrained_recorded([]), robustbench.cuda_as_cpu():  # random, no download
    net = robustbench.randomise_batchnorm(
        robustbench.constructor(name, entry, dataset, threat)(), seed)
  robustbench.randomise_learned_activations(net, seed)
  # MeanSparse's hard threshold turns float32 rounding differences near it into jumps of
  # threshold * std, which millions of activations at full size always meet: here its
  # thresholds stay 0; tests/timm_families_test.py proves the layers with thresholds on,
  # on the same classes at smaller sizes.
  robustbench.randomise_initial_constants(net, seed, mean_sparse_threshold=0.0)
  h, w, c = recipe["image_shape"]
  x = torch.rand(batch, c, h, w, generator=torch.Generator().manual_seed(seed + 1))
  if calibrate:
    calibrate_batchnorm(net, x)
  if recipe.get("softmax_ensemble"):  # each member's logits at scale; the output is probs
    for member in net.models:
      logits_at_scale(member, (x - net.mu) / net.sigma)
  elif recipe.get("members"):  # mixed classifiers: each member normalises its own input
    for member, inputs in zip(ensemble_members(net), member_inputs(net, x)):
      logits_at_scale(member, inputs)
  else:
    logits_at_scale(net, x)
  path = zoo.checkpoint_path(name, dataset, threat, model_dir)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  save_as_robustbench(net, recipe, path)
  with torch.no_grad():
    ref = net(x).numpy()
  ref64 = float64_logits(net, x)
  chaotic = float(np.max(np.abs(ref - ref64))) > TOLERANCE
  del net
  if chaotic and not calibrate:
    _remove(zoo.weight_files(recipe, path), model_dir)
    return check_entry(name, dataset, threat, entry, model_dir, batch, seed, calibrate=True)
  model, variables = zoo.load_robustbench(name, dataset, threat, model_dir)
  _remove(zoo.weight_files(recipe, path), model_dir)
  scale = float(np.max(np.abs(ref)))
  if chaotic:  # still, calibrated or with no BatchNorm to calibrate: compare in float64
    return float(np.max(np.abs(_flax_float64_logits(model, variables, x) - ref64))), scale, \
        FLOAT64
  out = np.asarray(model.apply(variables, x.numpy().transpose(0, 2, 3, 1)))
  return float(np.max(np.abs(out - ref))), scale, CALIBRATED if calibrate else ""


def _remove(files, model_dir: str) -> None:
  for file in files:
    if file.startswith(model_dir) and os.path.exists(file):
      os.remove(file)


def run(only: Optional[Sequence[str]] = None, report: Optional[str] = None,
        source: Optional[str] = None) -> Dict:
  """Checks the entries of the pinned wheel's zoo, or with `source` (a RobustBench checkout)
  those of its main branch, against that zoo's own modules."""
  zoo_module = zoo_recipes_main if source else zoo_recipes
  if source:
    version = robustbench.source_version(source)
    if version != zoo_module.ROBUSTBENCH_VERSION:
      raise SystemExit(f"{source} is at {version}, the recipes were derived from "
                       f"{zoo_module.ROBUSTBENCH_VERSION}: derive them again first "
                       f"(python -m tools.robustbench_zoo --source={source})")
  robustbench.zoo_package(source)
  results = {}
  seen: Dict[tuple, tuple] = {}
  with tempfile.TemporaryDirectory() as model_dir:
    for dataset, tables in zoo_module.RECIPES.items():
      if not any("arch" in e for es in tables.values() for e in es.values()):
        continue
      entries = robustbench.zoo_entries(dataset)
      for threat, recipes in tables.items():
        for name, recipe in recipes.items():
          if "arch" not in recipe or (only and name not in only):
            continue
          entry = entries[threat][name]
          with robustbench.weights_on_meta(), robustbench.pretrained_recorded([]), \
              robustbench.cuda_as_cpu():
            build = robustbench.constructor(name, entry, dataset, threat)
            cls = type(robustbench.unwrap_normalize_model(build())[0])
          signature = (cls.__module__, cls.__qualname__, repr(recipe))
          if signature in seen:
            results[(dataset, threat, name)] = seen[signature][:2] + (seen[signature][2],)
            continue
          start = time.time()
          diff, scale, how = check_entry(name, dataset, threat, entry, model_dir)
          seen[signature] = (diff, scale, f"{dataset} {threat} {name}")
          results[(dataset, threat, name)] = (diff, scale, how)
          print(f"{dataset:8s} {threat:11s} {name:42s} {recipe['arch']:18s} "
                f"max|dlogit| {diff:.1e} of max|logit| {scale:.1e} "
                + (f"({NOTES[how]}) " if how else "") +
                f"({time.time() - start:.0f} s)", flush=True)
  if report:
    with open(report, "w") as f:
      f.write(render(results, zoo_module))
  return results


def render(results, zoo_module=zoo_recipes) -> str:
  bad = sum(d > TOLERANCE for d, _, _ in results.values())
  lines = [
      "# RobustBench entries by name: logits against RobustBench's own modules", "",
      "Written by `python -m tools.robustbench_parity` ("
      f"{zoo.zoo_name(zoo_module.ROBUSTBENCH_VERSION)}, {time.strftime('%Y-%m-%d')}): each "
      "supported entry's "
      "PyTorch module from the zoo's own constructor, random weights and BatchNorm "
      "statistics, saved in RobustBench's file layout, loaded with "
      "`mixacm_jax.load_robustbench`, and the largest logit difference on two random images, "
      f"the classifier scaled so that the largest |logit| is {LOGIT_SCALE:g} (as in trained "
      "models; random weights give anything from 0.1 to 1e4). "
      "Entries with the same class and recipe are checked once (\"as\"). A module whose own "
      "float32 and float64 logits differ by more than the tolerance with random statistics "
      "(a deep network made chaotic) is checked with its BatchNorm statistics set to those of "
      "the input, as training leaves them (\"BatchNorm calibrated\"); one that stays chaotic "
      "(BiT-M-R152x2: GroupNorm, nothing to calibrate) is compared in float64, RobustBench's "
      "module and the Flax model alike (each member's logits rounded to float32; \"in "
      "float64\"). MeanSparse's "
      "thresholds stay 0 here (a hard threshold turns float32 rounding near it into jumps); "
      "its layers are proven with thresholds on at smaller sizes of the same classes "
      "(tests/timm_families_test.py).", "",
      f"{len(results)} entries, {len(results) - bad} within {TOLERANCE:g}.", "",
      "| dataset | threat model | entry | architecture | max abs logit difference | "
      "max abs logit |", "|---|---|---|---|---|---|"]
  for (dataset, threat, name), (diff, scale, alias) in results.items():
    arch = zoo_module.RECIPES[dataset][threat][name]["arch"]
    note = f" ({NOTES.get(alias) or 'as ' + alias})" if alias else ""
    lines.append(f"| {dataset} | {threat} | {name} | {arch} | {diff:.1e}{note} | {scale:.1e} |")
  return "\n".join(lines) + "\n"


def read_report(path: str):
  """{(dataset, threat, name): (diff, scale, alias)} of a written report's table."""
  results = {}
  with open(path) as f:
    for line in f:
      cells = [c.strip() for c in line.strip().strip("|").split("|")]
      if len(cells) != 6 or cells[0] in ("dataset", "---"):
        continue
      diff, _, note = cells[4].partition(" (")
      alias = next((k for k, v in NOTES.items() if note.startswith(v)),
                   note.removeprefix("as ").rstrip(")"))
      results[tuple(cells[:3])] = (float(diff), float(cells[5]), alias)
  return results


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--only", default="", help="comma-separated entry names")
  parser.add_argument("--source", default="", help="a RobustBench checkout (its main branch)")
  parser.add_argument("--update", action="store_true",
                      help="with --only: replace those entries' rows in the written report")
  args = parser.parse_args(argv)
  only = [n for n in args.only.split(",") if n]
  report = REPORTS["main" if args.source else "wheel"]
  results = run(only, report=None if only else report, source=args.source or None)
  if only and args.update:
    zoo_module = zoo_recipes_main if args.source else zoo_recipes
    merged = {**read_report(report), **results}
    order = [(d, t, n) for d, tables in zoo_module.RECIPES.items() for t, recipes in
             tables.items() for n, r in recipes.items() if "arch" in r and (d, t, n) in merged]
    with open(report, "w") as f:
      f.write(render({k: merged[k] for k in order}, zoo_module))
  worst = max(d for d, _, _ in results.values())
  print(f"{len(results)} entries; worst max|dlogit| {worst:.2e} (tolerance {TOLERANCE:g})")
  return 0 if worst <= TOLERANCE else 1


if __name__ == "__main__":
  sys.exit(main())
