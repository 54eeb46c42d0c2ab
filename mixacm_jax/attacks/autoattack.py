"""AutoAttack (Croce & Hein, ICML 2020): attacks run in sequence, each on the points that
all earlier ones left correctly classified; robust accuracy after each is reported.

Versions (eps and norm from the config):
- `standard`: APGD-CE (100 iterations), APGD-T (targeted DLR, 9 target classes, 100
  iterations each), FAB-T (9 target classes, 100 iterations each), Square (5000 queries);
- `plus`: APGD-CE and APGD-DLR (5 restarts each), untargeted FAB (5 restarts), Square,
  APGD-T, FAB-T (9 target classes each), as the original's `plus`;
- `rand`, for randomized models: APGD-CE and APGD-DLR, 100 iterations, each gradient an
  EOT average over 20 draws of the model's randomness (`logits_fn(x, rng=key)`);
- `apgd`: APGD-CE and APGD-T only (a cheaper subset);
- custom: any stages joined by `+`, e.g. `apgd-ce+square`, with their standard settings.

Under L1, `standard` is the original's L1 recipe: APGD-CE (5 restarts) and APGD-T (5 target
classes), both with APGD's large-radius phases (`use_largereps`), then FAB-T and Square in
their L1 forms. As in the original, only `standard` sets `use_largereps`; other versions
run under L1 with their own settings.

A stage's `n_restarts` (and a targeted stage's target classes) are passes of the runner:
each restart attacks only the points every earlier pass left robust, with a key of its own,
as the original runs them; FAB's restarts after the first begin from a random point.

The stages and versions are defined here; they are run, on arrays or over a dataset, by the
robustness report's engine (`evaluation.robustness`: `run_autoattack`, `report_on_arrays`).
"""
import functools
from typing import Any, Callable, Dict, List, Mapping, NamedTuple, Optional, Tuple

from mixacm_jax.attacks import apgd as apgd_lib, fab as fab_lib, square as square_lib, targets

EOT_ITER = 20

# name -> attack(logits_fn, x, y, key, *, eps, norm, **overrides) -> (x_adv, fooled), with the
# original AutoAttack's settings as keyword defaults (each can be overridden by keyword).
STAGES: Dict[str, Callable] = {
    "apgd-ce": functools.partial(apgd_lib.apgd, n_iter=100, loss="ce"),
    "apgd-dlr": functools.partial(apgd_lib.apgd, n_iter=100, loss="dlr"),
    "apgd-t": functools.partial(apgd_lib.apgd_targeted, n_iter=100, n_target_classes=9),
    "fab": functools.partial(fab_lib.fab_untargeted, n_iter=100),
    "fab-t": functools.partial(fab_lib.fab_targeted, n_iter=100, n_target_classes=9),
    "square": functools.partial(square_lib.square, n_queries=5000),
    # eot_iter: EOT_ITER, read when the stage is called (see call_stage)
    "apgd-ce-eot": functools.partial(apgd_lib.apgd, n_iter=100, loss="ce"),
    "apgd-dlr-eot": functools.partial(apgd_lib.apgd, n_iter=100, loss="dlr"),
}
# Settings the runner reads (passes), not the attack functions.
RUNNER_SETTINGS = ("n_restarts",)
# version -> its stages in order, each with the version's settings beside the stage's own.
VERSIONS: Dict[str, List[Tuple[str, Dict[str, Any]]]] = {
    "standard": [("apgd-ce", {}), ("apgd-t", {}), ("fab-t", {}), ("square", {})],
    "plus": [("apgd-ce", {"n_restarts": 5}), ("apgd-dlr", {"n_restarts": 5}),
             ("fab", {"n_restarts": 5}), ("square", {}), ("apgd-t", {}), ("fab-t", {})],
    "rand": [("apgd-ce-eot", {}), ("apgd-dlr-eot", {})],
    "apgd": [("apgd-ce", {}), ("apgd-t", {})],
}
L1_VERSIONS = {"standard": [("apgd-ce", {"n_restarts": 5, "use_largereps": True}),
                            ("apgd-t", {"n_target_classes": 5, "use_largereps": True}),
                            ("fab-t", {}), ("square", {})]}


class StagePass(NamedTuple):
  """One call of a stage by the runner, on the points still robust: a target class rank
  (None: untargeted), a restart (0: the first) and the settings that pass adds (FAB's random
  start after its first restart)."""
  rank: Optional[int]
  restart: int
  settings: Tuple[Tuple[str, Any], ...] = ()


def get_stage(name: str) -> Callable:
  if name not in STAGES:
    raise ValueError(f"unknown AutoAttack stage {name!r}; known: {', '.join(STAGES)}")
  return STAGES[name]


def is_targeted(name: str) -> bool:
  """Whether a stage attacks ranked target classes (its settings name n_target_classes)."""
  return "n_target_classes" in getattr(get_stage(name), "keywords", {})


def stage_ranks(name: str, num_classes: int,
                settings: Optional[Mapping[str, Any]] = None) -> List[Optional[int]]:
  """The target ranks a runner attacks one by one, each on the points still robust (as the
  original AutoAttack stops attacking a point once it is broken); [None] for an untargeted
  stage (one call)."""
  if not is_targeted(name):
    return [None]
  n = dict(settings or {}).get("n_target_classes", get_stage(name).keywords["n_target_classes"])
  return list(targets.target_ranks(n, num_classes))


def stage_passes(name: str, num_classes: int,
                 settings: Optional[Mapping[str, Any]] = None) -> List[StagePass]:
  """The runner's calls of a stage, in the original's order: for each target rank, each
  restart (`n_restarts`, default 1)."""
  restarts = int(dict(settings or {}).get("n_restarts", 1))
  fresh_start = (("random_start", True),) if get_stage(name).func is fab_lib.fab_untargeted \
      else ()
  return [StagePass(rank, r, fresh_start if r else ())
          for rank in stage_ranks(name, num_classes, settings) for r in range(restarts)]


def call_stage(name: str, logits_fn, x, y, key, rank, *, eps: float, norm: str, **settings):
  """One stage (or, with `rank`, one target class of a targeted stage) -> (x_adv, fooled)."""
  extra = {} if rank is None else {"target_rank": rank}
  if name.endswith("-eot"):
    settings = {"eot_iter": EOT_ITER, **settings}
  settings = {k: v for k, v in settings.items() if k not in RUNNER_SETTINGS}
  return get_stage(name)(logits_fn, x, y, key, eps=eps, norm=norm, **settings, **extra)


def _version(version: str, norm: str) -> List[Tuple[str, Dict[str, Any]]]:
  versions = {**VERSIONS, **L1_VERSIONS} if norm == "l1" else VERSIONS
  if version in versions:
    return versions[version]
  stages = [s.strip() for s in version.split("+")]
  if "+" in version or version in STAGES:
    unknown = [s for s in stages if s not in STAGES]
    if len(set(stages)) < len(stages):
      raise ValueError(f"the custom AutoAttack version {version!r} repeats a stage; give each "
                       "stage once (restarts: overrides such as {'apgd-ce': {'n_restarts': 5}})")
    if not unknown:
      return [(s, {}) for s in stages]
    raise ValueError(f"unknown AutoAttack stage {unknown[0]!r} in the custom version "
                     f"{version!r}; known stages: {', '.join(STAGES)}")
  raise ValueError(f"unknown AutoAttack version {version!r}; known: {', '.join(versions)}, "
                   "or stages joined by '+' (e.g. apgd-ce+square)")


def get_version(version: str, norm: str = "linf") -> List[str]:
  """The stages of a version (or of a custom `+`-joined list) under `norm`, in order."""
  return [name for name, _ in _version(version, norm)]


def version_settings(version: str, norm: str = "linf") -> Dict[str, Dict[str, Any]]:
  """The settings a version gives its stages beside their own (e.g. `plus`'s restarts)."""
  return {name: dict(extra) for name, extra in _version(version, norm) if extra}
