"""The device axis and the batch axis: pytrees onto and off the pmap device axis, host
devices on CPU, per-example values broadcast against a batch."""
import jax
import numpy as np

from mixacm_jax.errors import ConfigError

AXIS = "batch"  # the axis name of every pmapped step in this project


def use_host_devices(n: int) -> None:
  """`n` CPU devices, each pmapped batch split over them (data parallelism within one host,
  as on a pod). Must come before JAX computes anything; GPU/TPU runs ignore it."""
  try:
    jax.config.update("jax_num_cpu_devices", int(n))
  except RuntimeError as e:
    raise ConfigError(f"host devices must be set before JAX computes anything ({e})") from None


def replicate(tree, devices=None):
  """One copy of each leaf per local device, placed exactly as the pmapped steps (axis
  'batch') return their outputs: a step fed its own outputs then runs the program compiled
  for its first call (flax's `replicate` gives a different sharding, which cost a second
  compilation of the train step)."""
  if not jax.tree_util.tree_leaves(tree):
    return tree
  n = len(devices) if devices else jax.local_device_count()
  stacked = jax.tree_util.tree_map(
      lambda x: np.broadcast_to(np.asarray(x), (n,) + np.shape(x)), tree)
  return jax.pmap(lambda x: x, axis_name=AXIS, devices=devices)(stacked)


def unreplicate(tree):
  """The first device's copy of each leaf. (flax's `unreplicate` returns the whole shard,
  leading axis included, when the pmap ran on a single device.)"""
  def first(x):
    if isinstance(x, jax.Array):
      return x.addressable_shards[0].data[0]
    return x[0]
  return jax.tree_util.tree_map(first, tree)


def per_example(v, like):
  """`v` (one value per example, shape (N,)) reshaped to (N, 1, ..., 1) so that it
  broadcasts against the batch `like` (N, ...): masks and scales of whole examples."""
  return v.reshape((-1,) + (1,) * (like.ndim - 1))
