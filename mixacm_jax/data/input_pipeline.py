"""Input pipelines: TFDS image datasets and the embedded `digits` dataset, through one Grain
path and without TensorFlow.

Batches are dicts of NumPy arrays shaped `[local_devices, per_device_batch, ...]`:
`image` float32 in [0, 1] (NHWC), `label` int32, and for eval a `mask` (1 real, 0 padding).
Training data is a Grain `MapDataset`: random access, so batch k of a run is a pure function of
(seed, k) -- each epoch a fresh permutation of this host's shard, augmentation seeded by the
example's position in the stream -- and a run resumed at step s reads batches s, s+1, ...
directly: no iterator state needs saving beside the checkpoint's step. TFDS datasets are read
through `tfds.data_source` (ArrayRecord files), which needs no TensorFlow. JPEG datasets of any
image size (ImageNet, `data.image_size` > 0) are decoded and cropped one image per Grain
element (`jpeg`), then batched; their eval split can be cut to the images `data.eval_ids`
names.
"""
import dataclasses
import functools
import math
import os
from typing import TYPE_CHECKING, Any, Dict, FrozenSet, Iterator, Optional, Tuple

import jax
import numpy as np

from mixacm_jax.data import digits
from mixacm_jax.errors import ConfigError, DataError

if TYPE_CHECKING:
  import grain  # pylint: disable=g-import-not-at-top

EMBEDDED_DATASETS = (digits.NAME,)


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  name: str
  image_shape: Tuple[int, int, int]
  num_classes: int
  num_train: int
  num_eval: int


class _ArraySource:
  """A random-access source over in-memory arrays (Grain's data source protocol)."""

  def __init__(self, images: np.ndarray, labels: np.ndarray):
    self.images, self.labels = images, labels

  def __len__(self) -> int:
    return len(self.labels)

  def __getitem__(self, i: int) -> Dict[str, np.ndarray]:
    return {"image": self.images[i], "label": self.labels[i]}


def _prepare_command(name: str, data_dir: Optional[str]) -> str:
  return f"`tfds build {name} --data_dir={data_dir or '<dir>'} --file_format=array_record`"


class _Subset:
  """The examples of `source` at `indices` (Grain's data source protocol)."""

  def __init__(self, source, indices):
    self.source, self.indices = source, indices

  def __len__(self) -> int:
    return len(self.indices)

  def __getitem__(self, i: int):
    return self.source[self.indices[i]]


def _tfds_source(name: str, split: str, data_dir: Optional[str], encoded: bool = False):
  """`tfds.data_source` of a prepared split; never downloads, one clear line when it can't.
  `encoded`: images as their JPEG bytes, decoded by `jpeg` (faster than TFDS' decoder)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  decoders = {"image": tfds.decode.SkipDecoding()} if encoded else None
  try:
    return tfds.data_source(name, split=split, data_dir=data_dir, download=False,
                            decoders=decoders)
  except tfds.core.registered.DatasetNotFoundError:
    raise ConfigError(f"unknown dataset {name!r}: not in TFDS and not one of the embedded "
                      f"datasets {EMBEDDED_DATASETS}") from None
  except NotImplementedError:  # TFRecord files (tfds' default format): no random access
    if tfds.builder(name, data_dir=data_dir).is_prepared():
      raise DataError(
          f"dataset {name!r} in data_dir={data_dir!r} is prepared as TFRecord files, which this "
          f"TensorFlow-free pipeline cannot read; prepare it as ArrayRecord: "
          f"{_prepare_command(name, data_dir)}") from None
  except (AssertionError, FileNotFoundError, ValueError, KeyError) as e:
    if "split" in str(e).lower() and "not found" in str(e).lower():
      raise ConfigError(f"dataset {name!r} has no split {split!r}: {e}") from None
  raise DataError(
      f"dataset {name!r} is not prepared in data_dir={data_dir!r} and this run does not "
      f"download. Prepare it once where there is network: {_prepare_command(name, data_dir)}, "
      "then pass --config.data.data_dir=<dir>.")


def encoded_images(data_cfg) -> bool:
  """Datasets of JPEGs of any size (ImageNet) are decoded and cropped to data.image_size."""
  return int(data_cfg.get("image_size", 0)) > 0


def _source(data_cfg, split: str, listed: bool = False):
  """A split's examples; `listed`: only those `data.eval_ids` names (the eval split's)."""
  if data_cfg.name == digits.NAME:
    return _ArraySource(*digits.arrays(split))
  source = _tfds_source(data_cfg.name, split, data_cfg.get("data_dir"),
                        encoded_images(data_cfg))
  if listed and data_cfg.get("eval_ids"):
    indices = _listed(data_cfg.name, split, data_cfg.get("data_dir"), data_cfg.eval_ids)
    return _Subset(source, indices)
  return source


def read_ids(path: str) -> FrozenSet[str]:
  """The file names listed in an id file, one per line, each optionally under its class
  folder (RobustBench's `n01440764/ILSVRC2012_val_00000293.JPEG`)."""
  if not os.path.isfile(path):
    raise ConfigError(f"data.eval_ids: no file {path}")
  with open(path) as f:
    ids = frozenset(os.path.basename(line.strip()) for line in f if line.strip())
  if not ids:
    raise ConfigError(f"data.eval_ids: {path} lists no image")
  return ids


def _file_names(source, chunk: int = 1024) -> Iterator[str]:
  for start in range(0, len(source), chunk):
    indices = range(start, min(start + chunk, len(source)))
    getitems = getattr(source, "__getitems__", None)
    for example in (getitems(list(indices)) if getitems else (source[i] for i in indices)):
      name = example["file_name"]
      yield os.path.basename(name.decode() if isinstance(name, bytes) else str(name))


@functools.lru_cache(maxsize=8)
def _listed(name: str, split: str, data_dir: Optional[str], ids_file: str) -> Tuple[int, ...]:
  """The indices of the examples of a split whose file names `ids_file` lists (one scan of
  the split's records; kept for the process)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  ids = read_ids(ids_file)
  if "file_name" not in tfds.builder(name, data_dir=data_dir).info.features:
    raise ConfigError(f"data.eval_ids selects images by file name, and {name!r} has no "
                      "file_name feature")
  source = _tfds_source(name, split, data_dir, encoded=True)
  print(f"data.eval_ids: looking up {len(ids)} images of {os.path.basename(ids_file)} among "
        f"{len(source)} of {name}/{split}", flush=True)
  indices = tuple(i for i, n in enumerate(_file_names(source)) if n in ids)
  if not indices:
    raise DataError(f"none of the {len(ids)} images of data.eval_ids={ids_file} is in "
                    f"{name}/{split}")
  if len(indices) < len(ids):
    print(f"data.eval_ids: {len(ids) - len(indices)} of the listed images are not in "
          f"{name}/{split}; evaluating the {len(indices)} found", flush=True)
  return indices


def get_info(data_cfg) -> DatasetInfo:
  """Shapes and sizes of a dataset, without reading its examples; an empty split is an error."""
  if data_cfg.name == digits.NAME:
    image_shape, num_classes = digits.IMAGE_SHAPE, digits.NUM_CLASSES
  else:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    try:
      builder = tfds.builder(data_cfg.name, data_dir=data_cfg.get("data_dir"))
    except tfds.core.registered.DatasetNotFoundError:
      raise ConfigError(f"unknown dataset {data_cfg.name!r}: not in TFDS and not one of the "
                        f"embedded datasets {EMBEDDED_DATASETS}") from None
    image_shape = tuple(builder.info.features["image"].shape)
    if encoded_images(data_cfg):
      image_shape = (int(data_cfg.image_size),) * 2 + image_shape[2:]
    elif None in image_shape:
      raise ConfigError(f"the images of {data_cfg.name!r} differ in size: set "
                        "data.image_size (e.g. 224) to decode and crop them")
    num_classes = builder.info.features["label"].num_classes
  sizes = [len(_source(data_cfg, data_cfg.train_split)),
           len(_source(data_cfg, data_cfg.eval_split, listed=True))]
  for split, size in zip((data_cfg.train_split, data_cfg.eval_split), sizes):
    if size <= 0:
      raise DataError(f"split {split!r} of dataset {data_cfg.name!r} is empty")
  return DatasetInfo(data_cfg.name, image_shape, num_classes, *sizes)


def _to_float(example: Dict[str, Any]) -> Dict[str, np.ndarray]:
  image = np.asarray(example["image"])
  scale = 255.0 if image.dtype == np.uint8 else 1.0
  return {"image": image.astype(np.float32) / scale,
          "label": np.asarray(example["label"], np.int32)}


def _grain():
  """Grain, imported when data is read (not when the package is imported), so that models,
  attacks and the train step import on machines without it (e.g. a stock JAX GPU image)."""
  import grain  # pylint: disable=g-import-not-at-top
  return grain


def _jpeg():
  """The JPEG module (simplejpeg, Pillow), imported when JPEGs are read, as Grain is."""
  from mixacm_jax.data import jpeg  # pylint: disable=g-import-not-at-top
  return jpeg


def _host_dataset(data_cfg, split: str, listed: bool = False) -> "grain.MapDataset":
  """This host's shard of a split (every process_count-th example) as float32 images, or as
  stored for JPEG datasets (decoded per example by the caller)."""
  ds = _grain().MapDataset.source(_source(data_cfg, split, listed))
  ds = ds[jax.process_index()::jax.process_count()]
  return ds if encoded_images(data_cfg) else ds.map(_to_float)


def local_batch_size(global_batch_size: int) -> int:
  """The batch this host feeds; the global batch must split evenly over all devices."""
  devices = jax.device_count()
  if global_batch_size <= 0 or global_batch_size % devices:
    raise ConfigError(f"batch size {global_batch_size} must be a positive multiple of the "
                      f"device count ({devices} devices over {jax.process_count()} hosts)")
  return global_batch_size // jax.process_count()


def augment(images: np.ndarray, rng: np.random.Generator, crop_padding: int,
            flip: bool) -> np.ndarray:
  """A batch (N, H, W, C): zero-pad each image by `crop_padding`, crop a random window back
  to size, and flip it horizontally with probability 1/2 (per image; one generator a batch,
  which keeps the Python work per step small)."""
  n, h, w = images.shape[:3]
  out = images
  if crop_padding:
    p = crop_padding
    padded = np.pad(images, ((0, 0), (p, p), (p, p), (0, 0)))
    offsets = rng.integers(0, 2 * p + 1, size=(n, 2))
    out = np.stack([padded[i, dy:dy + h, dx:dx + w] for i, (dy, dx) in enumerate(offsets)])
  if flip:
    mirrored = rng.random(n) < 0.5
    out = np.where(mirrored[:, None, None, None], out[:, :, ::-1], out)
  return np.ascontiguousarray(out)


def _device_shape(batch: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
  n = jax.local_device_count()
  return {k: v.reshape((n, v.shape[0] // n) + v.shape[1:]) for k, v in batch.items()}


def steps_per_epoch(data_cfg, global_batch_size: int) -> int:
  return max(1, get_info(data_cfg).num_train // global_batch_size)


def _read_options(data_cfg) -> "grain.ReadOptions":
  return _grain().ReadOptions(num_threads=int(data_cfg.get("num_threads", 2)),
                              prefetch_buffer_size=int(data_cfg.get("prefetch", 4)))


def _decoded_batches(examples: "grain.MapDataset", data_cfg, batch: int,
                     drop_remainder: bool) -> "grain.IterDataset":
  """Batches of JPEG examples, each decoded and cropped (as uint8) in its own Grain element:
  `data.num_threads` threads decode at once, `data.prefetch` batches ahead."""
  threads = int(data_cfg.get("num_threads", 2))
  options = _grain().ReadOptions(
      num_threads=threads,
      prefetch_buffer_size=max(threads, int(data_cfg.get("prefetch", 4)) * batch))
  return examples.to_iter_dataset(options).batch(
      batch, drop_remainder=drop_remainder).map(_to_float)


def _shuffled_train(data_cfg, batch: int, seed: int) -> "grain.MapDataset":
  """This host's training examples, epoch after epoch, each epoch shuffled."""
  base = _host_dataset(data_cfg, data_cfg.train_split)
  if len(base) < batch:
    raise DataError(f"split {data_cfg.train_split!r} of {data_cfg.name!r} has {len(base)} "
                    f"examples on this host, fewer than its batch of {batch}")
  # Grain reseeds the shuffle per epoch (seed + epoch); spread the run seeds apart.
  return base.shuffle(seed=(seed * 100003) % 2**31).repeat()


def jpeg_train_examples(data_cfg, global_batch_size: int, seed: int) -> "grain.MapDataset":
  """The endless training stream of a JPEG dataset as a random-access dataset of decoded,
  randomly cropped examples (uint8), each seeded by its position: batch k is examples
  k * batch ... (k + 1) * batch - 1."""
  crop = functools.partial(_jpeg().train_example, size=int(data_cfg.image_size),
                           scale_min=float(data_cfg.crop_scale_min),
                           flip=bool(data_cfg.random_flip))
  batch = local_batch_size(global_batch_size)
  return _shuffled_train(data_cfg, batch, seed).random_map(crop, seed=seed)


def train_dataset(data_cfg, global_batch_size: int, seed: int) -> "grain.MapDataset":
  """The endless training stream of this host as a random-access dataset of batches:
  epoch after epoch of shuffled, augmented examples, cut into batches (datasets of arrays;
  JPEG datasets: `jpeg_train_examples`)."""
  batch = local_batch_size(global_batch_size)
  shuffled = _shuffled_train(data_cfg, batch, seed)
  padding, flip = int(data_cfg.crop_padding), bool(data_cfg.random_flip)
  side = min(get_info(data_cfg).image_shape[:2])
  if not 0 <= padding <= side:
    raise ConfigError(f"data.crop_padding must be in [0, {side}] (the images' side), got "
                      f"{padding}")
  ds = shuffled.batch(batch, drop_remainder=True)
  if not (padding or flip):
    return ds
  # Augmented per batch, seeded by (seed, batch index): still a pure function of the step.
  return ds.random_map(lambda b, rng: {**b, "image": augment(b["image"], rng, padding, flip)},
                       seed=seed)


def train_batches(data_cfg, global_batch_size: int, seed: int,
                  start_step: int = 0) -> Iterator[Dict[str, np.ndarray]]:
  """Endless training batches from batch `start_step` on, read ahead by Grain threads."""
  if encoded_images(data_cfg):
    batch = local_batch_size(global_batch_size)
    examples = jpeg_train_examples(data_cfg, global_batch_size, seed)[start_step * batch:]
    stream = _decoded_batches(examples, data_cfg, batch, drop_remainder=True)
  else:
    stream = train_dataset(data_cfg, global_batch_size, seed)[start_step:].to_iter_dataset(
        _read_options(data_cfg))
  for example in stream:
    yield _device_shape(example)


def eval_batches(data_cfg, global_batch_size: int,
                 num_examples: Optional[int] = None) -> Iterator[Dict[str, np.ndarray]]:
  """One pass over the eval split (or its first ~`num_examples`, split over hosts). The last batch is
  padded and masked, and every host yields the same number of batches (pmap needs that)."""
  batch = local_batch_size(global_batch_size)
  info = get_info(data_cfg)
  ds = _host_dataset(data_cfg, data_cfg.eval_split, listed=True)
  total = info.num_eval if not num_examples else min(num_examples, info.num_eval)
  host_limit = math.ceil(total / jax.process_count())
  # A batch beyond the examples would only be padding: cut to the examples, per device.
  batch = min(batch, math.ceil(host_limit / jax.local_device_count()) * jax.local_device_count())
  num_batches = math.ceil(host_limit / batch)
  ds = ds[:host_limit]
  if encoded_images(data_cfg):
    crop = functools.partial(_jpeg().eval_example, size=int(data_cfg.image_size),
                             resize_to=int(data_cfg.eval_resize),
                             interpolation=data_cfg.get("eval_interpolation", "bilinear"))
    it = iter(_decoded_batches(ds.map(crop), data_cfg, batch, drop_remainder=False))
  else:
    it = iter(ds.batch(batch).to_iter_dataset(_read_options(data_cfg)))
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
