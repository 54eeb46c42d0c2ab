"""SGD with momentum, weight decay on conv/dense kernels only, and learning-rate schedules."""
import jax
import optax

from mixacm_jax.errors import ConfigError


def _kernel_mask(params, decay_objective: bool = True):
  """True for conv/dense kernels: PyTorch-trained robust models decay those, and the
  custom of not decaying BatchNorm scales and biases is followed here. `decay_objective`
  False exempts what the objective learns beside the model (MixACM's ACM transformations)."""
  def decayed(path, _):
    if not decay_objective and getattr(path[0], "key", None) == "objective":
      return False
    return getattr(path[-1], "key", None) == "kernel"
  return jax.tree_util.tree_map_with_path(decayed, params)


def create_schedule(cfg, steps_per_epoch: int, total_steps: int) -> optax.Schedule:
  warmup = int(cfg.warmup_epochs * steps_per_epoch)
  if cfg.schedule == "cosine":
    return optax.warmup_cosine_decay_schedule(0.0 if warmup else cfg.learning_rate,
                                              cfg.learning_rate, warmup, max(total_steps, warmup + 1))
  if cfg.schedule == "piecewise":
    boundaries = {int(e * steps_per_epoch): cfg.decay_factor for e in cfg.decay_epochs}
    constant = optax.piecewise_constant_schedule(cfg.learning_rate, boundaries)
    if not warmup:
      return constant
    return optax.join_schedules([optax.linear_schedule(0.0, cfg.learning_rate, warmup), constant],
                                [warmup])
  if cfg.schedule == "constant":
    return optax.constant_schedule(cfg.learning_rate)
  raise ConfigError(f"unknown schedule {cfg.schedule!r}; known: cosine, piecewise, constant")


def create_optimizer(cfg, steps_per_epoch: int, total_steps: int) -> optax.GradientTransformation:
  """PyTorch-style SGD: the weight decay term joins the gradient before momentum."""
  return optax.chain(
      optax.masked(optax.add_decayed_weights(cfg.weight_decay),
                   lambda p: _kernel_mask(p, cfg.get("decay_acm_transforms", True))),
      optax.sgd(create_schedule(cfg, steps_per_epoch, total_steps), momentum=cfg.momentum or None,
                nesterov=bool(cfg.nesterov)))
