"""The loop over target classes shared by the targeted attacks (APGD-T, FAB-T).

Targets are ranked at the clean input: rank 2 is the most likely wrong class, rank 3 the
next, ... A `target_rank` may be a traced integer, so one compiled program serves every
rank when a runner attacks rank by rank only the points still robust (as the original
AutoAttack does: a broken point stops costing compute)."""
from typing import Callable, Optional

import jax.numpy as jnp

from mixacm_jax.attacks import keys
from mixacm_jax.runtime import parallel


def target_ranks(n_target_classes: int, num_classes: int) -> range:
  return range(2, min(n_target_classes, num_classes - 1) + 2)


def over_targets(attack_one: Callable, logits_fn: Callable, x, y, key, *,
                 n_target_classes: int, target_rank: Optional[int] = None):
  """`attack_one(y_target, key) -> (x_adv, fooled)` towards each ranked target class in
  turn, keeping for each point the first success; with `target_rank`, that rank only."""
  clean = logits_fn(x)
  order = jnp.argsort(clean, axis=-1)  # ascending: the last column is the predicted class
  num_classes = clean.shape[-1]

  def one(rank):
    k = None if key is None else keys.fold_in(key, rank)  # FAB-T takes no key
    return attack_one(jnp.take(order, num_classes - rank, axis=1), k)

  if target_rank is not None:
    return one(target_rank)
  x_out, fooled = x, jnp.argmax(clean, -1) != y
  for rank in target_ranks(n_target_classes, num_classes):
    x_t, fooled_t = one(rank)
    take = fooled_t & ~fooled
    x_out = jnp.where(parallel.per_example(take, x), x_t, x_out)
    fooled = fooled | fooled_t
  return x_out, fooled
