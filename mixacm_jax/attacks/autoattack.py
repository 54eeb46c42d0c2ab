"""AutoAttack (Croce & Hein, ICML 2020): attacks run in sequence, each on the points that
all earlier ones left correctly classified; robust accuracy after each is reported.

Versions, for L-inf and L2 alike (eps and norm from the config):
- `standard`: APGD-CE (100 iterations), APGD-T (targeted DLR, 9 target classes, 100
  iterations each), FAB-T (9 target classes, 100 iterations each), Square (5000 queries);
- `rand`, for randomized models: APGD-CE and APGD-DLR, 100 iterations, each gradient an
  EOT average over 20 draws of the model's randomness (`logits_fn(x, rng=key)`);
- `apgd`: APGD-CE and APGD-T only (a cheaper subset).
"""
import functools
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import jax
import numpy as np

from mixacm_jax.attacks import (apgd as apgd_lib, fab as fab_lib, keys, loop, square as square_lib,
                                targets)

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


@functools.partial(jax.jit, static_argnames=("logits_fn", "name", "norm", "settings"))
def _compiled_stage(x, y, key, rank, eps, *, logits_fn, name, norm, settings):
  """Compiled once per (logits_fn, stage, settings, shape); the target rank and eps are
  traced, so one program serves every target class and every eps."""
  return call_stage(name, logits_fn, x, y, key, rank, eps=eps, norm=norm, **dict(settings))


def _run_stage(x, y, key, rank, *, logits_fn, name, eps, norm, settings):
  """One stage: on CPU its loop runs from Python over jitted steps (see `loop`); elsewhere
  the stage is one compiled program."""
  if loop.host_driven():
    return call_stage(name, logits_fn, x, y, key, rank, eps=eps, norm=norm, **dict(settings))
  return _compiled_stage(x, y, key, rank, eps, logits_fn=logits_fn, name=name, norm=norm,
                         settings=settings)


def run_autoattack(logits_fn: Callable, x, y, key: jax.Array, *, eps: float,
                   norm: str = "linf", version: str = "standard",
                   overrides: Optional[Mapping[str, Mapping[str, Any]]] = None,
                   per_example: bool = False):
  """The whole AutoAttack on one batch: each stage of `version`, jitted, runs only on the
  points every earlier stage left correctly classified (so a stage costs what is left; a
  targeted stage goes target class by target class, each on the points still robust).

  Each point's randomness comes from `key` and its index in `x` (so a point is attacked the
  same whichever points are still robust beside it, and in `evaluate`'s report).
  Returns (x_adv, robust_after): the adversarial inputs (the first found for each point; the
  clean input where none was), and for each stage a boolean array, True where the point is
  still correctly classified after it. `overrides` changes a stage's settings, e.g.
  `{"square": {"n_queries": 1000}}`. With `per_example`, a third element holds what the
  robustness report's per-example table does: `clean_prediction`, `broken_by` (the stage
  that broke each point, '' if robust, 'clean' if misclassified already), `margin` (true
  logit minus the largest other at the returned point) and `perturbation` (its norm).
  """
  x, y = np.asarray(x), np.asarray(y)
  overrides = overrides or {}
  x_adv = x.copy()
  clean_logits = np.asarray(logits_fn(x))
  robust = clean_logits.argmax(-1) == y
  broken_by = np.where(robust, "", "clean").astype(object)
  robust_after = {}
  stages = get_version(version)
  if clean_logits.shape[-1] < 3 and any("dlr" in s or s == "apgd-t" for s in stages):
    raise ValueError(f"AutoAttack's {version} version uses the DLR loss, which needs at least "
                     f"3 classes; the model has {clean_logits.shape[-1]}")
  for i, name in enumerate(stages):
    settings = tuple(sorted(overrides.get(name, {}).items()))
    for rank in stage_ranks(name, clean_logits.shape[-1], dict(settings)):
      idx = np.flatnonzero(robust)
      if not len(idx):
        break
      adv, fooled = _run_stage(x[idx], y[idx], keys.of_points(jax.random.fold_in(key, i), idx),
                               None if rank is None else np.int32(rank), logits_fn=logits_fn,
                               name=name, eps=float(eps), norm=norm, settings=settings)
      fooled = np.asarray(fooled)
      x_adv[idx[fooled]] = np.asarray(adv)[fooled]
      robust[idx[fooled]] = False
      broken_by[idx[fooled]] = name
    robust_after[name] = robust.copy()
  if not per_example:
    return x_adv, robust_after
  logits = np.asarray(logits_fn(x_adv))
  true = np.take_along_axis(logits, y[:, None], 1)[:, 0]
  others = np.where(np.eye(logits.shape[-1], dtype=bool)[y], -np.inf, logits).max(-1)
  d = (x_adv - x).reshape(len(x), -1)
  examples = {"clean_prediction": clean_logits.argmax(-1), "broken_by": broken_by.tolist(),
              "margin": true - others,
              "perturbation": np.abs(d).max(1) if norm == "linf" else np.linalg.norm(d, axis=1)}
  return x_adv, robust_after, examples
