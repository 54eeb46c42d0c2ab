"""Moving pytrees onto and off the pmap device axis."""
import jax
from flax import jax_utils

replicate = jax_utils.replicate


def unreplicate(tree):
  """The first device's copy of each leaf. (flax's `unreplicate` returns the whole shard,
  leading axis included, when the pmap ran on a single device.)"""
  def first(x):
    if isinstance(x, jax.Array):
      return x.addressable_shards[0].data[0]
    return x[0]
  return jax.tree_util.tree_map(first, tree)
