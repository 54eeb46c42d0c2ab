"""Training objectives: one small function per method, all plugged into the same train step.

An objective is `loss_fn(params, ctx, batch) -> (loss, (new_batch_stats, metrics))`, where
`ctx` (an `ObjectiveContext`) holds the student forward function, its BatchNorm state,
the step's RNG, the objective's config and (for distillation) the frozen teacher.
"""
from typing import Callable, Dict

from mixacm_jax.errors import ConfigError
from mixacm_jax.objectives import natural, pgd_at, trades
from mixacm_jax.objectives.common import ObjectiveContext  # noqa: F401

OBJECTIVES: Dict[str, Callable] = {
    "natural": natural.loss_fn,
    "pgd_at": pgd_at.loss_fn,
    "trades": trades.loss_fn,
}


def get_objective(name: str) -> Callable:
  if name not in OBJECTIVES:
    raise ConfigError(f"unknown objective {name!r}; known: {', '.join(sorted(OBJECTIVES))}")
  return OBJECTIVES[name]
