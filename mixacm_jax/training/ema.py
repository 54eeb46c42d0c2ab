"""Weight averaging: an exponential moving average of the model's weights, kept in the train
state beside the raw ones, checkpointed with them and evaluated beside them (Gowal et al.
2020; Rebuffi et al. 2021 train most RobustBench entries so). `optim.ema.decay` = 0 is off.

    ema_t = decay * ema_{t-1} + (1 - decay) * w_t,   ema_0 = w_0

Only the weights are averaged; the averaged model uses the raw model's BatchNorm statistics,
as the PyTorch re-implementations of those papers copy them. What the objective learns beside
the model (MixACM's ACM transformations) is not averaged: it is dropped at inference.
"""
import jax
import jax.numpy as jnp
import optax


def enabled(ema_cfg) -> bool:
  return bool(ema_cfg and ema_cfg.get("decay", 0.0))


def initial(model_params, ema_cfg):
  """The average's start, w_0 (a copy of the model's weights), or {} when it is off."""
  return jax.tree.map(jnp.array, model_params) if enabled(ema_cfg) else {}


def update(ema_params, model_params, decay: float):
  """One step of the average towards the updated weights."""
  return optax.incremental_update(model_params, ema_params, step_size=1.0 - decay)
