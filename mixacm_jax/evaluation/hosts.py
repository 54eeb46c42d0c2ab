"""Agreement between hosts: on several hosts every host must make the same pmap calls, so
batch counts, batch sizes and journal replays are agreed on before they are used."""
import jax
from jax.experimental import multihost_utils
import numpy as np

from mixacm_jax.attacks import keys as attack_keys


def agreed_count(n: int) -> int:
  """The largest `n` over all hosts."""
  if jax.process_count() == 1:
    return n
  return int(np.max(multihost_utils.process_allgather(np.asarray(n))))


def all_have(found: bool) -> bool:
  """Whether every host found its part of a chunk in its journal: a chunk is replayed only
  where all have it."""
  if jax.process_count() == 1:
    return found
  return bool(np.all(multihost_utils.process_allgather(np.asarray(found))))


def point_keys(key: jax.Array, index: np.ndarray) -> np.ndarray:
  """(N, 2): the key of each point, from its index among this host's evaluated points (on
  several hosts, and the host's index): a point is attacked the same in any chunk, batch
  size or company, and as `run_autoattack` attacks it."""
  if jax.process_count() > 1:
    key = jax.random.fold_in(key, jax.process_index())
  return np.asarray(attack_keys.of_points(key, index))
