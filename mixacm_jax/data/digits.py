"""The embedded dataset: scikit-learn's bundled 8x8 handwritten digits (1797 real images, 10
classes), installed with the package and never downloaded, in fixed stratified splits."""
import functools
from typing import Dict, Tuple

import numpy as np

from mixacm_jax.errors import ConfigError

NAME = "digits"
IMAGE_SHAPE, NUM_CLASSES = (8, 8, 1), 10
SPLITS = ("train", "validation", "test")


def split_indices(labels: np.ndarray) -> Dict[str, np.ndarray]:
  """Fixed, stratified, disjoint splits of the 1797 digits: 36 test images per class (360),
  then 20 % of each class's remainder for validation (287), the rest for training (1149).
  Settings are chosen on validation; test is only for reported numbers."""
  rng = np.random.RandomState(0)
  test = np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:36] for c in range(10)])
  rest = np.setdiff1d(np.arange(len(labels)), test)
  val_rng = np.random.RandomState(1)
  validation = []
  for c in range(10):
    members = rest[labels[rest] == c]
    validation.append(val_rng.permutation(members)[:int(round(0.2 * len(members)))])
  validation = np.concatenate(validation)
  train = np.setdiff1d(rest, validation)
  return {"train": train, "validation": np.sort(validation), "test": np.sort(test)}


def arrays(split: str) -> Tuple[np.ndarray, np.ndarray]:
  """scikit-learn's bundled 8x8 handwritten digits (1797 real images, no download), one of
  SPLITS, pixels scaled from 0..16 to [0, 1]."""
  if split not in SPLITS:
    raise ConfigError(f"the embedded 'digits' dataset has splits {', '.join(map(repr, SPLITS))}"
                      f", not {split!r}")
  images, labels, splits = _load()
  return images[splits[split]], labels[splits[split]]


@functools.lru_cache(maxsize=1)
def _load():
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
  digits = load_digits()
  images = (digits.images.astype(np.float32) / 16.0)[..., None]
  labels = digits.target.astype(np.int32)
  return images, labels, split_indices(labels)
