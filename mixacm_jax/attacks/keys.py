"""An attack's randomness: one raw key (2,) for the whole batch, or one key per example
(N, 2). The robustness report gives every point the key of its index, so what happens to a
point does not depend on the batch it is attacked in (the batch size, the chunking, the
points still robust beside it). A randomised model's noise is drawn per batch (`shared`)."""
from typing import Callable

import jax
import jax.numpy as jnp


def is_per_example(key: jax.Array) -> bool:
  return key.ndim == 2


def fold_in(key: jax.Array, data) -> jax.Array:
  """`jax.random.fold_in` of the batch key, or of each example's."""
  if is_per_example(key):
    return jax.vmap(lambda k: jax.random.fold_in(k, data))(key)
  return jax.random.fold_in(key, data)


def per_example(key: jax.Array, n: int) -> jax.Array:
  """(n, 2) keys: the given per-example keys, or example i's `fold_in(key, i)`."""
  return key if is_per_example(key) else of_points(key, jnp.arange(n))


def of_points(key: jax.Array, index) -> jax.Array:
  """(N, 2): point i's key is `fold_in(key, index[i])`, whatever batch it is in."""
  return jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.asarray(index))


def sample(key: jax.Array, x: jnp.ndarray, draw: Callable) -> jnp.ndarray:
  """`draw(key, shape)` with x's shape: one draw for the batch, or each example its own."""
  if is_per_example(key):
    return jax.vmap(lambda k, v: draw(k, (1,) + v.shape)[0])(key, x)
  return draw(key, x.shape)


def shared(key: jax.Array) -> jax.Array:
  """One key for what the batch shares (a randomised model's noise draws)."""
  return key[0] if is_per_example(key) else key
