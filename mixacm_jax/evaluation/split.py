"""The evaluated points as the report batches them: padded to a multiple of the local batch,
with the mask of real entries, and compacted batches over the points still robust."""
from typing import Iterator, Tuple

import jax
import numpy as np

from mixacm_jax.data import input_pipeline
from mixacm_jax.evaluation import hosts


class Split:
  """Padded examples (a multiple of the local batch `batch`), the mask of real ones, and
  the reshapes between flat batches and the device axis."""

  def __init__(self, images: np.ndarray, labels: np.ndarray, real: np.ndarray, batch: int):
    pad = -len(labels) % batch
    self.images = np.concatenate([np.asarray(images, np.float32),
                                  np.zeros((pad,) + np.shape(images)[1:], np.float32)])
    self.labels = np.concatenate([np.asarray(labels, np.int32), np.zeros((pad,), np.int32)])
    self.real = np.concatenate([np.asarray(real, bool), np.zeros((pad,), bool)])
    self.batch = batch
    self.count = float(self.real.sum())
    self.n_dev = jax.local_device_count()

  def to_devices(self, v):
    return v.reshape((self.n_dev, -1) + v.shape[1:])

  @staticmethod
  def flat(v):
    return np.asarray(v).reshape((-1,) + v.shape[2:])

  def batches(self) -> Iterator[slice]:
    for i in range(0, len(self.labels), self.batch):
      yield slice(i, i + self.batch)

  def map_batches(self, program, p_vars, images: np.ndarray) -> Tuple[np.ndarray, ...]:
    """`program(p_vars, x, y)` over every batch of `images` (with this split's labels), each
    output flattened and concatenated."""
    outs = [program(p_vars, self.to_devices(images[part]), self.to_devices(self.labels[part]))
            for part in self.batches()]
    return tuple(np.concatenate([self.flat(o[k]) for o in outs]) for k in range(len(outs[0])))


def local_batch(batch_size: int, num_points: int) -> int:
  """This host's batch: its share of the global `batch_size`, no larger than the points
  (rounded up to a multiple of the local devices): a bigger batch would be only padding."""
  n_dev = jax.local_device_count()
  return min(input_pipeline.local_batch_size(batch_size),
             -(-hosts.agreed_count(num_points) // n_dev) * n_dev)


def padded_size(n: int, batch: int, multiple: int) -> int:
  """`batch`, or for a smaller remainder the next power of two (a multiple of `multiple`):
  few shapes to compile, little padding to attack."""
  size = multiple
  while size < n:
    size *= 2
  return min(size, batch)


def compact_batches(robust: np.ndarray, batch: int, multiple: int = 1):
  """Index batches over the still-robust points only, as AutoAttack runs each stage: a
  stage costs what is left to attack, not the whole split. Yields (selected indices, the
  same padded to `padded_size`, the mask of its real entries)."""
  idx = np.flatnonzero(robust)
  for i in range(hosts.agreed_count(-(-len(idx) // batch))):
    sel = idx[i * batch:(i + 1) * batch]
    size = padded_size(hosts.agreed_count(len(sel)), batch, multiple)
    valid = np.zeros((size,), bool)
    valid[:len(sel)] = True
    yield sel, np.concatenate([sel, np.zeros((size - len(sel),), sel.dtype)]), valid
