"""Input pipelines: TFDS image datasets and the embedded `digits` dataset, through one interface.

Batches are dicts of NumPy arrays shaped `[local_devices, per_device_batch, ...]`:
`image` float32 in [0, 1] (NHWC), `label` int32, and for eval a `mask` (1 real, 0 padding).
Training order and augmentation are pure functions of (seed, epoch, index), so a run
resumed at step s sees exactly the batches an uninterrupted run sees from step s on.
"""
import dataclasses
import math
from typing import Dict, Iterator, Optional, Tuple

import jax
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from mixacm_jax.errors import ConfigError, DataError

# tf.data must never grab a GPU/TPU that JAX owns.
tf.config.set_visible_devices([], "GPU")

EMBEDDED_DATASETS = ("digits",)


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  name: str
  image_shape: Tuple[int, int, int]
  num_classes: int
  num_train: int
  num_eval: int


DIGITS_SPLITS = ("train", "validation", "test")


def digits_split_indices(labels: np.ndarray) -> Dict[str, np.ndarray]:
  """Fixed, stratified, disjoint splits of the 1797 digits: 36 test images per class (360),
  then 20 % of each class's remainder for validation (288), the rest for training (1149).
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


def _digits_arrays(split: str) -> Tuple[np.ndarray, np.ndarray]:
  """scikit-learn's bundled 8x8 handwritten digits (1797 real images, no download), one of
  DIGITS_SPLITS, pixels scaled from 0..16 to [0, 1]."""
  if split not in DIGITS_SPLITS:
    raise ConfigError(f"the embedded 'digits' dataset has splits {', '.join(map(repr, DIGITS_SPLITS))}"
                      f", not {split!r}")
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
  digits = load_digits()
  images = (digits.images.astype(np.float32) / 16.0)[..., None]
  labels = digits.target.astype(np.int32)
  keep = digits_split_indices(labels)[split]
  return images[keep], labels[keep]


def _check_tfds_prepared(name: str, data_dir: Optional[str]) -> tfds.core.DatasetBuilder:
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError:
    raise ConfigError(f"unknown dataset {name!r}: not in TFDS and not one of the embedded "
                      f"datasets {EMBEDDED_DATASETS}") from None
  try:  # not builder.is_prepared(): tfds.testing.mock_data patches as_dataset only
    builder.as_dataset(split=list(builder.info.splits)[0] if builder.info.splits else "train")
  except (AssertionError, FileNotFoundError, tf.errors.NotFoundError, ValueError):
    raise DataError(
        f"dataset {name!r} is not prepared in data_dir={builder.data_dir!r} and this run does not "
        f"download. Prepare it once where there is network: `tfds build {name} "
        f"--data_dir=<dir>`, then pass --config.data.data_dir=<dir>.") from None
  return builder


def _split_size(builder, split: str) -> int:
  if builder.info.splits:
    if split not in builder.info.splits:
      raise ConfigError(f"dataset {builder.name!r} has no split {split!r}; it has "
                        f"{sorted(builder.info.splits)}")
    return builder.info.splits[split].num_examples
  # No split metadata (tfds.testing.mock_data): count the examples.
  return int(builder.as_dataset(split=split).cardinality())


def get_info(data_cfg) -> DatasetInfo:
  """Shapes and sizes of a dataset, without reading it; an empty split is an error."""
  if data_cfg.name == "digits":
    train, test = _digits_arrays(data_cfg.train_split), _digits_arrays(data_cfg.eval_split)
    info = DatasetInfo("digits", (8, 8, 1), 10, len(train[1]), len(test[1]))
  else:
    builder = _check_tfds_prepared(data_cfg.name, data_cfg.get("data_dir"))
    info = DatasetInfo(builder.name, tuple(builder.info.features["image"].shape),
                       builder.info.features["label"].num_classes,
                       _split_size(builder, data_cfg.train_split),
                       _split_size(builder, data_cfg.eval_split))
  for split, size in ((data_cfg.train_split, info.num_train), (data_cfg.eval_split, info.num_eval)):
    if size <= 0:
      raise DataError(f"split {split!r} of dataset {data_cfg.name!r} is empty")
  return info


def _host_dataset(data_cfg, split: str) -> tf.data.Dataset:
  """This host's shard of a split as {'image': float32 [0,1], 'label': int32}, in a fixed order."""
  if data_cfg.name == "digits":
    images, labels = _digits_arrays(split)
    index = np.arange(len(labels))[jax.process_index()::jax.process_count()]
    ds = tf.data.Dataset.from_tensor_slices({"image": images[index], "label": labels[index]})
  else:
    builder = _check_tfds_prepared(data_cfg.name, data_cfg.get("data_dir"))
    host_split = tfds.split_for_jax_process(split, drop_remainder=False)
    ds = builder.as_dataset(split=host_split, shuffle_files=False,
                            read_config=tfds.ReadConfig(shuffle_seed=0))
    ds = ds.map(lambda ex: {"image": tf.cast(ex["image"], tf.float32) / 255.0,
                            "label": tf.cast(ex["label"], tf.int32)},
                num_parallel_calls=tf.data.AUTOTUNE)
  return ds


def local_batch_size(global_batch_size: int) -> int:
  """The batch this host feeds; the global batch must split evenly over all devices."""
  devices = jax.device_count()
  if global_batch_size <= 0 or global_batch_size % devices:
    raise ConfigError(f"batch size {global_batch_size} must be a positive multiple of the "
                      f"device count ({devices} devices over {jax.process_count()} hosts)")
  return global_batch_size // jax.process_count()


def augment(image: tf.Tensor, seed: tf.Tensor, crop_padding: int, flip: bool) -> tf.Tensor:
  """Zero-pad by `crop_padding`, random crop back, optional horizontal flip (stateless ops)."""
  if crop_padding:
    shape = tf.shape(image)
    padded = tf.pad(image, [[crop_padding] * 2, [crop_padding] * 2, [0, 0]])
    image = tf.image.stateless_random_crop(padded, shape, seed=seed)
  if flip:
    image = tf.image.stateless_random_flip_left_right(image, seed=seed + 1)
  return image


def _device_shape(batch: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
  n = jax.local_device_count()
  return {k: v.reshape((n, v.shape[0] // n) + v.shape[1:]) for k, v in batch.items()}


def steps_per_epoch(data_cfg, global_batch_size: int) -> int:
  return max(1, get_info(data_cfg).num_train // global_batch_size)


def train_batches(data_cfg, global_batch_size: int, seed: int,
                  start_step: int = 0) -> Iterator[Dict[str, np.ndarray]]:
  """Endless training batches starting at `start_step` (epochs of whole batches; the tail
  of each shuffled epoch is dropped)."""
  batch = local_batch_size(global_batch_size)
  base = _host_dataset(data_cfg, data_cfg.train_split)
  host_examples = int(base.cardinality()) if base.cardinality() >= 0 else None
  if host_examples == 0:
    raise DataError(f"split {data_cfg.train_split!r} of {data_cfg.name!r} is empty on this host")
  per_epoch = steps_per_epoch(data_cfg, global_batch_size)
  epoch, skip = divmod(start_step, per_epoch)
  padding, flip = int(data_cfg.crop_padding), bool(data_cfg.random_flip)
  while True:
    ds = base.enumerate().shuffle(data_cfg.shuffle_buffer, seed=seed * 100003 + epoch,
                                  reshuffle_each_iteration=False)
    ds = ds.map(lambda i, ex: {"image": augment(ex["image"], tf.stack(
                    [tf.cast(seed, tf.int64) * 7919 + epoch, i]), padding, flip),
                                "label": ex["label"]},
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(batch, drop_remainder=True).take(per_epoch).skip(skip)
    for example in tfds.as_numpy(ds.prefetch(2)):
      yield _device_shape(example)
    epoch, skip = epoch + 1, 0


def eval_batches(data_cfg, global_batch_size: int,
                 num_examples: Optional[int] = None) -> Iterator[Dict[str, np.ndarray]]:
  """One pass over the eval split (or its first ~`num_examples`, split over hosts). The last batch is
  padded and masked, and every host yields the same number of batches (pmap needs that)."""
  batch = local_batch_size(global_batch_size)
  info = get_info(data_cfg)
  ds = _host_dataset(data_cfg, data_cfg.eval_split)
  total = info.num_eval if not num_examples else min(num_examples, info.num_eval)
  host_limit = math.ceil(total / jax.process_count())
  if total == 0:
    raise DataError(f"split {data_cfg.eval_split!r} of {data_cfg.name!r} is empty")
  num_batches = math.ceil(host_limit / batch)
  ds = ds.take(host_limit).batch(batch).prefetch(2)
  it = iter(tfds.as_numpy(ds))
  for _ in range(num_batches):
    example = next(it, None)
    if example is None:  # this host's shard ran out first: an all-padding batch
      example = {"image": np.zeros((0, *info.image_shape), np.float32),
                 "label": np.zeros((0,), np.int32)}
    n = example["label"].shape[0]
    example["mask"] = np.ones((n,), np.float32)
    if n < batch:
      example = {k: np.concatenate([v, np.zeros((batch - n, *v.shape[1:]), v.dtype)])
                 for k, v in example.items()}
    yield _device_shape(example)
