"""The loop over target classes shared by the targeted attacks (APGD-T, FAB-T).

Targets are ranked at the clean input: rank 2 is the most likely wrong class, rank 3 the
next, ... A `target_rank` may be a traced integer, so one compiled program serves every
rank when a runner attacks rank by rank only the points still robust (as the original
AutoAttack does: a broken point stops costing compute).

Targeted PGD's target (`choose`): a random class other than the label, the least likely class
at the clean input, or one given class for every point."""
from typing import Callable, Optional

import jax
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


TARGET_MODES = ("random", "least_likely")  # or a class index, e.g. "3"


def choose(target: str, clean_logits: jnp.ndarray, y: jnp.ndarray, key) -> jnp.ndarray:
  """(N,) target classes: `random` (uniform over the classes other than y, from each
  point's key), `least_likely` (the smallest clean logit) or a class index for all points
  (a point of that class is never moved away from it: it counts as robust)."""
  num_classes = clean_logits.shape[-1]
  if target == "least_likely":
    return jnp.argmin(clean_logits, -1).astype(y.dtype)
  if target == "random":
    point_keys = keys.fold_in(keys.per_example(key, y.shape[0]), 0x7A46)
    offset = jax.vmap(lambda k: jax.random.randint(k, (), 1, num_classes))(point_keys)
    return ((y + offset) % num_classes).astype(y.dtype)
  return jnp.full_like(y, int(target))
