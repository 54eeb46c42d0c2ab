"""Training objectives: one small module per method, all plugged into the same train step.

An objective's `loss_fn(params, ctx, batch) -> (loss, (new_batch_stats, metrics))` gets
`params = {"model": ..., "objective": ...}` and an `ObjectiveContext` (the student forward
function, its BatchNorm state, the step's RNG, the method's settings, the frozen teacher).
`passes(cfg)` counts the network passes one example costs per step, for the cost report.
An objective with a state of its own across steps (`init_state`, e.g. MTARD's loss balance)
gets it as `ctx.state` and returns `(loss, (new_batch_stats, metrics, new_state))`.
Every hook's `cfg` is the method's own group of the config, `config.objective.<name>`
(`Objective.settings`), e.g. `objective.trades.beta`, `objective.mixacm.w_acm`.
"""
import dataclasses
from typing import Callable, Dict, Optional, Tuple

from mixacm_jax.errors import ConfigError
from mixacm_jax.objectives import (adaad, ard, fast_at, iad, kd, mart, mixacm, mixup, mtard,
                                  natural, peeraid, pgd_at, rslad, saad, trades)
from mixacm_jax.objectives.common import ObjectiveContext  # noqa: F401


@dataclasses.dataclass(frozen=True)
class Objective:
  name: str
  loss_fn: Callable
  # cfg -> {"forward": student forwards, "backward": student backwards, "teacher_forward": ...}
  passes: Callable
  needs_teacher: bool = False
  # (rng, cfg, student_shapes, teacher_shapes) -> params learned beside the model
  init_params: Optional[Callable] = None
  # (cfg) -> (student names, teacher names) the objective reads
  feature_names: Optional[Callable] = None
  # (cfg) -> None, raising ConfigError for a setting that cannot work (checked up front)
  check_settings: Optional[Callable] = None
  # (cfg) -> the objective's state before the first step (a pytree of arrays)
  init_state: Optional[Callable] = None
  # the config sections of further frozen teachers, {role: section name} (MTARD's clean one)
  extra_teachers: Tuple[Tuple[str, str], ...] = ()
  # trains a peer of the student's architecture beside it (PeerAiD): its weights are
  # params["objective"]["peer"], its BatchNorm statistics ctx.state["peer_batch_stats"]
  trains_peer: bool = False

  def settings(self, objective_cfg):
    """This method's group of `config.objective` (what its hooks get as `cfg`)."""
    if self.name not in objective_cfg:
      raise ConfigError(f"objective.{self.name} (the settings of objective {self.name!r}) is "
                        "missing from the config")
    return objective_cfg[self.name]

  def training_cost(self, objective_cfg, steps: int, batch_size: int,
                    repeated_steps: int = 0) -> Dict[str, float]:
    """Network passes spent on training under `config.objective`: the per example-step
    counts times the examples seen; `repeated_steps` of them ran the objective twice (AWP's
    proxy pass), and `passes_per_example` is then the mean over the steps."""
    per = self.passes(self.settings(objective_cfg))
    runs = (steps + repeated_steps) * batch_size
    teacher_backward = per.get("teacher_backward", 0)  # to the input, inside an attack
    one = per["forward"] + per["backward"] + per["teacher_forward"] + teacher_backward
    return {"student_forward_passes": per["forward"] * runs,
            "student_backward_passes": per["backward"] * runs,
            "teacher_forward_passes": per["teacher_forward"] * runs,
            "teacher_backward_passes": teacher_backward * runs,
            "passes_per_example": one * (steps + repeated_steps) / max(steps, 1)}


OBJECTIVES: Dict[str, Objective] = {o.name: o for o in (
    Objective("natural", natural.loss_fn, natural.passes),
    Objective("pgd_at", pgd_at.loss_fn, pgd_at.passes),
    Objective("fast_at", fast_at.loss_fn, fast_at.passes),
    Objective("mixup", mixup.loss_fn, mixup.passes),
    Objective("trades", trades.loss_fn, trades.passes),
    Objective("mart", mart.loss_fn, mart.passes),
    Objective("mixacm", mixacm.loss_fn, mixacm.passes, True, mixacm.init_params,
              mixacm.feature_names, mixacm.check_settings),
    Objective("kd", kd.loss_fn, kd.passes, True),
    Objective("ard", ard.loss_fn, ard.passes, True),
    Objective("rslad", rslad.loss_fn, rslad.passes, True),
    Objective("iad", iad.loss_fn, iad.passes, True, check_settings=iad.check_settings),
    Objective("adaad", adaad.loss_fn, adaad.passes, True, check_settings=adaad.check_settings),
    Objective("mtard", mtard.loss_fn, mtard.passes, True, check_settings=mtard.check_settings,
              init_state=mtard.init_state,
              extra_teachers=(("clean_teacher", "clean_teacher"),)),
    Objective("saad", saad.loss_fn, saad.passes, True),
    Objective("peeraid", peeraid.loss_fn, peeraid.passes, trains_peer=True),
)}


def get_objective(name: str) -> Objective:
  if name not in OBJECTIVES:
    raise ConfigError(f"unknown objective {name!r}; known: {', '.join(sorted(OBJECTIVES))}")
  return OBJECTIVES[name]
