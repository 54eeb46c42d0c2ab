"""AutoAttack (Croce & Hein, ICML 2020): attacks run in sequence, each on the points that
all earlier ones left correctly classified; robust accuracy after each is reported.

Versions, for L-inf and L2 alike (eps and norm from the config):
- `standard`: APGD-CE (100 iterations), APGD-T (targeted DLR, 9 target classes, 100
  iterations each), FAB-T (9 target classes, 100 iterations each), Square (5000 queries);
- `rand`, for randomized models: APGD-CE and APGD-DLR, 100 iterations, each gradient an
  EOT average over 20 draws of the model's randomness (`logits_fn(x, rng=key)`);
- `apgd`: APGD-CE and APGD-T only (a cheaper subset).

The stages and versions are defined here; they are run, on arrays or over a dataset, by the
robustness report's engine (`evaluation.robustness`: `run_autoattack`, `report_on_arrays`).
"""
import functools
from typing import Any, Callable, Dict, List, Mapping, Optional

from mixacm_jax.attacks import apgd as apgd_lib, fab as fab_lib, square as square_lib, targets

EOT_ITER = 20

# name -> attack(logits_fn, x, y, key, *, eps, norm, **overrides) -> (x_adv, fooled), with the
# original AutoAttack's settings as keyword defaults (each can be overridden by keyword).
STAGES: Dict[str, Callable] = {
    "apgd-ce": functools.partial(apgd_lib.apgd, n_iter=100, loss="ce"),
    "apgd-dlr": functools.partial(apgd_lib.apgd, n_iter=100, loss="dlr"),
    "apgd-t": functools.partial(apgd_lib.apgd_targeted, n_iter=100, n_target_classes=9),
    "fab-t": functools.partial(fab_lib.fab_targeted, n_iter=100, n_target_classes=9),
    "square": functools.partial(square_lib.square, n_queries=5000),
    # eot_iter: EOT_ITER, read when the stage is called (see call_stage)
    "apgd-ce-eot": functools.partial(apgd_lib.apgd, n_iter=100, loss="ce"),
    "apgd-dlr-eot": functools.partial(apgd_lib.apgd, n_iter=100, loss="dlr"),
}
VERSIONS: Dict[str, List[str]] = {
    "standard": ["apgd-ce", "apgd-t", "fab-t", "square"],
    "rand": ["apgd-ce-eot", "apgd-dlr-eot"],
    "apgd": ["apgd-ce", "apgd-t"],
}


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


def call_stage(name: str, logits_fn, x, y, key, rank, *, eps: float, norm: str, **settings):
  """One stage (or, with `rank`, one target class of a targeted stage) -> (x_adv, fooled)."""
  extra = {} if rank is None else {"target_rank": rank}
  if name.endswith("-eot"):
    settings = {"eot_iter": EOT_ITER, **settings}
  return get_stage(name)(logits_fn, x, y, key, eps=eps, norm=norm, **settings, **extra)


def get_version(version: str) -> List[str]:
  if version not in VERSIONS:
    raise ValueError(f"unknown AutoAttack version {version!r}; known: {', '.join(VERSIONS)}")
  return list(VERSIONS[version])
