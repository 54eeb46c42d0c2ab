"""Training objectives: one small module per method, all plugged into the same train step.

An objective's `loss_fn(params, ctx, batch) -> (loss, (new_batch_stats, metrics))` gets
`params = {"model": ..., "objective": ...}` and an `ObjectiveContext` (the student forward
function, its BatchNorm state, the step's RNG, the objective's config, the frozen teacher).
`passes(cfg)` counts the network passes one example costs per step, for the cost report.
"""
import dataclasses
from typing import Callable, Dict, Optional

from mixacm_jax.errors import ConfigError
from mixacm_jax.objectives import ard, kd, mixacm, natural, pgd_at, rslad, trades
from mixacm_jax.objectives.common import ObjectiveContext  # noqa: F401


@dataclasses.dataclass(frozen=True)
class Objective:
  loss_fn: Callable
  # cfg -> {"forward": student forwards, "backward": student backwards, "teacher_forward": ...}
  passes: Callable
  needs_teacher: bool = False
  # (rng, cfg, student_shapes, teacher_shapes) -> params learned beside the model
  init_params: Optional[Callable] = None
  # (cfg) -> (student names, teacher names) the objective reads
  feature_names: Optional[Callable] = None


OBJECTIVES: Dict[str, Objective] = {
    "natural": Objective(natural.loss_fn, natural.passes),
    "pgd_at": Objective(pgd_at.loss_fn, pgd_at.passes),
    "trades": Objective(trades.loss_fn, trades.passes),
    "mixacm": Objective(mixacm.loss_fn, mixacm.passes, True, mixacm.init_params,
                        mixacm.feature_names),
    "kd": Objective(kd.loss_fn, kd.passes, True),
    "ard": Objective(ard.loss_fn, ard.passes, True),
    "rslad": Objective(rslad.loss_fn, rslad.passes, True),
}


def get_objective(name: str) -> Objective:
  if name not in OBJECTIVES:
    raise ConfigError(f"unknown objective {name!r}; known: {', '.join(sorted(OBJECTIVES))}")
  return OBJECTIVES[name]
