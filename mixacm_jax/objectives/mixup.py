"""Mixup (Zhang et al. 2018) over the global batch, the same on 1 device or N, and mixup
training alone as an objective: the cross-entropy on mixed inputs, no teacher, no ACM term.

The objective is MixACM's control: what robustness mixup makes by itself, at the same budget.
The partner of each example is drawn by a permutation of the *global* batch (all-gathered
over the pmap axis), so splitting the batch over more devices does not change the mix.
"""
from typing import Dict, Optional, Tuple

import jax
import jax.numpy as jnp

from mixacm_jax.objectives.natural import passes  # noqa: F401  (one forward, one backward)
from mixacm_jax.runtime import parallel


def sample_lambda(key: jax.Array, alpha: float, shape=()) -> jnp.ndarray:
  """lambda ~ Beta(alpha, alpha); alpha <= 0 disables mixing (lambda = 1)."""
  if alpha <= 0:
    return jnp.ones(shape, jnp.float32)
  return jax.random.beta(key, alpha, alpha, shape).astype(jnp.float32)


def mix_batch(batch: Dict[str, jnp.ndarray], key: jax.Array, alpha: float, *,
              per_example: bool = False, example_offset=0,
              axis_name: Optional[str] = parallel.AXIS
              ) -> Tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
  """Returns (x_mix, y_partner, lam): x_mix = lam * x_i + (1 - lam) * x_j, lam of shape (n,).

  `key` must be the same on every device; `example_offset` is this device's first global index.
  `axis_name=None` mixes within this batch only (outside pmap, e.g. in a plain jitted step).
  """
  x, y = batch["image"], batch["label"]
  n = y.shape[0]
  if axis_name is None:
    all_x, all_y = x, y
  else:
    all_x = jax.lax.all_gather(x, axis_name, tiled=True)
    all_y = jax.lax.all_gather(y, axis_name, tiled=True)
  perm_key, lam_key = jax.random.split(key)
  perm = jax.random.permutation(perm_key, all_y.shape[0])
  partner = jax.lax.dynamic_slice_in_dim(perm, example_offset, n)
  if per_example:
    lam_all = sample_lambda(lam_key, alpha, (all_y.shape[0],))
    lam = jax.lax.dynamic_slice_in_dim(lam_all, example_offset, n)
  else:
    lam = jnp.full((n,), sample_lambda(lam_key, alpha))
  lam_x = parallel.per_example(lam, x)
  x_mix = lam_x * x + (1.0 - lam_x) * all_x[partner]
  return x_mix, all_y[partner], lam


def mixup_cross_entropy(logits, y_a, y_b, lam) -> jnp.ndarray:
  """lam * CE(logits, y_a) + (1 - lam) * CE(logits, y_b), batch mean."""
  log_p = jax.nn.log_softmax(logits)
  ce_a = -jnp.take_along_axis(log_p, y_a[:, None], axis=1)[:, 0]
  ce_b = -jnp.take_along_axis(log_p, y_b[:, None], axis=1)[:, 0]
  return jnp.mean(lam * ce_a + (1.0 - lam) * ce_b)


def mixup_accuracy(logits, y_a, y_b, lam) -> jnp.ndarray:
  pred = jnp.argmax(logits, -1)
  return jnp.mean(lam * (pred == y_a) + (1.0 - lam) * (pred == y_b))


def loss_fn(params, ctx, batch):
  """`ctx.cfg` is `config.objective.mixup` (alpha, per_example)."""
  x, y_partner, lam = mix_batch(batch, jax.random.fold_in(ctx.rng, 1), ctx.cfg.alpha,
                                per_example=ctx.cfg.per_example,
                                example_offset=ctx.example_offset)
  logits, _, new_batch_stats = ctx.forward(params, ctx.batch_stats, x, True, ())
  loss = mixup_cross_entropy(logits, batch["label"], y_partner, lam)
  return loss, (new_batch_stats, {"loss": loss, "ce": loss, "accuracy": mixup_accuracy(
      logits, batch["label"], y_partner, lam)})
