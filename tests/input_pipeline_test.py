"""Input pipeline: the embedded dataset, augmentation, determinism, resume, eval masking, TFDS."""
import os

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from mixacm_jax.configs import default
from mixacm_jax.data import digits, input_pipeline
from mixacm_jax.errors import ConfigError, DataError


@pytest.fixture
def data_cfg():
  return default.get_config().data


def test_digits_info_and_split_are_disjoint(data_cfg):
  info = input_pipeline.get_info(data_cfg)
  assert (info.image_shape, info.num_classes, info.num_eval) == ((8, 8, 1), 10, 360)
  train_x, _ = digits.arrays("train")
  test_x, test_y = digits.arrays("test")
  assert np.bincount(test_y).tolist() == [36] * 10
  train_rows = {x.tobytes() for x in train_x}
  assert sum(x.tobytes() in train_rows for x in test_x) < 10  # digits has a few duplicates


def test_digits_validation_split_is_disjoint_stratified_and_fixed():
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
  labels = load_digits().target
  splits = digits.split_indices(labels)
  train, val, test = (set(splits[k].tolist()) for k in ("train", "validation", "test"))
  assert not (train & val or train & test or val & test)
  assert len(train | val | test) == len(labels) == 1797
  # Stratified: each class is ~20 % of its non-test examples (within rounding).
  for c in range(10):
    rest = np.sum(labels == c) - 36
    assert abs(np.sum(labels[splits["validation"]] == c) - 0.2 * rest) <= 0.5
  assert len(val) == 287 and len(train) == 1797 - 360 - 287
  # Fixed: the same indices on every call, independent of any global NumPy state.
  np.random.seed(123)
  again = digits.split_indices(labels)
  for k in splits:
    np.testing.assert_array_equal(splits[k], again[k])
  # The arrays served are those rows, and the validation split feeds evaluation.
  x_val, y_val = digits.arrays("validation")
  np.testing.assert_array_equal(y_val, labels[splits["validation"]])
  cfg = default.get_config().data
  cfg.eval_split = "validation"
  assert input_pipeline.get_info(cfg).num_eval == len(x_val)
  batch = next(input_pipeline.eval_batches(cfg, 300))
  assert batch["mask"].sum() == 287
  np.testing.assert_array_equal(batch["label"].reshape(-1)[:287], y_val)


def test_train_batches_shape_range_and_determinism(data_cfg):
  it = input_pipeline.train_batches(data_cfg, 32, seed=0)
  b = next(it)
  n = jax.local_device_count()
  assert b["image"].shape == (n, 32 // n, 8, 8, 1) and b["label"].shape == (n, 32 // n)
  assert b["image"].dtype == np.float32 and 0.0 <= b["image"].min() and b["image"].max() <= 1.0
  again = next(input_pipeline.train_batches(data_cfg, 32, seed=0))
  np.testing.assert_array_equal(b["image"], again["image"])
  other = next(input_pipeline.train_batches(data_cfg, 32, seed=1))
  assert not np.array_equal(b["label"], other["label"])


def test_resume_position_reproduces_the_stream(data_cfg):
  """start_step=k yields exactly what an uninterrupted stream yields from its k-th batch,
  across an epoch boundary."""
  per_epoch = input_pipeline.steps_per_epoch(data_cfg, 256)
  full = input_pipeline.train_batches(data_cfg, 256, seed=3)
  stream = [next(full) for _ in range(per_epoch + 3)]
  resumed = input_pipeline.train_batches(data_cfg, 256, seed=3, start_step=per_epoch - 1)
  for expected in stream[per_epoch - 1:]:
    got = next(resumed)
    np.testing.assert_array_equal(got["image"], expected["image"])
  # A new epoch reshuffles.
  assert not np.array_equal(stream[0]["label"], stream[per_epoch]["label"])


def test_augmentation_crops_and_flips_within_padding():
  image = (np.arange(64, dtype=np.float32) / 64.0).reshape(8, 8, 1)
  batch = np.stack([image] * 40)
  outs = input_pipeline.augment(batch, np.random.default_rng(0), 2, True)
  assert outs.shape == (40, 8, 8, 1)
  # Every output is the original shifted by at most 2 pixels (zero fill) and maybe mirrored.
  padded = np.pad(image, ((2, 2), (2, 2), (0, 0)))
  windows = [padded[i:i + 8, j:j + 8] for i in range(5) for j in range(5)]
  mirrored = [w[:, ::-1] for w in windows]
  for o in outs:
    assert any(np.array_equal(o, w) for w in windows + mirrored)
  assert len({o.tobytes() for o in outs}) > 5  # each image draws its own window and flip
  assert any(any(np.array_equal(o, w) for w in mirrored) and
             not any(np.array_equal(o, w) for w in windows) for o in outs)
  np.testing.assert_array_equal(outs, input_pipeline.augment(batch, np.random.default_rng(0),
                                                             2, True))
  np.testing.assert_array_equal(input_pipeline.augment(batch, np.random.default_rng(0), 0, False),
                                batch)


def test_training_stream_is_random_access_and_augmented(data_cfg):
  """Batch k of the stream is the k-th item of a Grain MapDataset: what resume relies on."""
  ds = input_pipeline.train_dataset(data_cfg, 32, seed=5)
  it = input_pipeline.train_batches(data_cfg, 32, seed=5)
  stream = [next(it) for _ in range(3)]
  np.testing.assert_array_equal(ds[2]["image"], stream[2]["image"].reshape(32, 8, 8, 1))
  # Augmentation is on: the batch is not just shuffled originals.
  train_x, _ = digits.arrays("train")
  originals = {x.tobytes() for x in train_x}
  assert sum(x.tobytes() not in originals for x in ds[0]["image"]) > 10


def test_eval_counts_every_example_once(data_cfg):
  info = input_pipeline.get_info(data_cfg)
  labels, masks = [], []
  for b in input_pipeline.eval_batches(data_cfg, 64):
    assert b["image"].shape[:2] == (jax.local_device_count(), 64 // jax.local_device_count())
    labels.append(b["label"].reshape(-1))
    masks.append(b["mask"].reshape(-1))
  labels, masks = np.concatenate(labels), np.concatenate(masks)
  assert masks.sum() == info.num_eval == 360
  assert len(masks) == 64 * 6 and masks[-24:].sum() == 0  # 360 = 5*64 + 40: 24 padded
  np.testing.assert_array_equal(np.bincount(labels[masks > 0]), [36] * 10)
  limited = list(input_pipeline.eval_batches(data_cfg, 64, num_examples=100))
  assert sum(b["mask"].sum() for b in limited) == 100


def test_batch_not_divisible_by_devices(data_cfg):
  if jax.device_count() < 2:
    pytest.skip("needs 2 devices (set XLA_FLAGS=--xla_force_host_platform_device_count=2)")
  with pytest.raises(ConfigError, match="batch size 33 must be a positive multiple of the "
                                        "device count \\(2 devices"):
    next(input_pipeline.train_batches(data_cfg, 33, seed=0))


def test_tfds_dataset_through_the_same_pipeline(data_cfg):
  data_cfg.name, data_cfg.crop_padding, data_cfg.random_flip = "cifar10", 4, True
  with tfds.testing.mock_data(num_examples=70):
    info = input_pipeline.get_info(data_cfg)
    assert info.image_shape == (32, 32, 3) and info.num_classes == 10
    b = next(input_pipeline.train_batches(data_cfg, 16, seed=0))
    assert b["image"].shape[-3:] == (32, 32, 3) and b["image"].max() <= 1.0
    evals = list(input_pipeline.eval_batches(data_cfg, 16))
    assert sum(e["mask"].sum() for e in evals) == 70


def test_unprepared_tfds_dataset_fails_fast_with_how_to(data_cfg, tmp_path, monkeypatch):
  data_cfg.name, data_cfg.data_dir = "cifar10", str(tmp_path)
  with pytest.raises(DataError, match=f"'cifar10' is not prepared in data_dir=.*{tmp_path}.*"
                                      "tfds build cifar10 .*--file_format=array_record"):
    input_pipeline.get_info(data_cfg)
  data_cfg.name = "no_such_dataset_xyz"
  with pytest.raises(ConfigError, match="unknown dataset 'no_such_dataset_xyz'"):
    input_pipeline.get_info(data_cfg)
  # Prepared as TFRecord (what tfds does by default): TFDS refuses random access.
  def tfrecord_only(*args, **kwargs):
    raise NotImplementedError("Random access data source for file format FileFormat.TFRECORD")
  monkeypatch.setattr(tfds, "data_source", tfrecord_only)
  monkeypatch.setattr(tfds.core.DatasetBuilder, "is_prepared", lambda self: True)
  data_cfg.name = "cifar10"
  with pytest.raises(DataError, match="prepared as TFRecord files.*--file_format=array_record"):
    input_pipeline.get_info(data_cfg)


def test_core_imports_and_trains_without_tensorflow(tmp_path):
  """The core, with `tensorflow` made unimportable: import, a few training steps, eval."""
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  code = f"""
import sys
sys.modules["tensorflow"] = None  # any `import tensorflow` now raises ImportError
from mixacm_jax.configs import default
from mixacm_jax.cli import modes
from mixacm_jax.data import input_pipeline
from mixacm_jax.evaluation import robustness
from mixacm_jax.training import train, teacher
from mixacm_jax.port import convert
config = default.get_config()
config.optim.num_steps, config.train_evals.pgd.attacks = 3, "clean,pgd1"
config.model.kwargs.base_width, config.model.kwargs.stage_sizes = 4, (1, 1)
result = train.train_and_evaluate(config, {str(tmp_path)!r})
assert 0 <= result["robust_accuracy"] <= 1
assert "tensorflow" not in [m for m in sys.modules if sys.modules[m] is not None]
print("OK", result["steps"])
"""
  out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True,
                       timeout=300)
  assert out.returncode == 0 and "OK 3" in out.stdout, out.stderr[-2000:]


def test_models_attacks_and_the_train_step_import_without_grain_or_tensorflow():
  """A stock JAX GPU image has none of these: the benchmarks' imports must not need them
  (only reading data does)."""
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  code = """
import sys
for blocked in ("tensorflow", "tensorflow_datasets", "grain", "simplejpeg"):
  sys.modules[blocked] = None  # `import` of these now raises ImportError
from mixacm_jax.training import train
from mixacm_jax import objectives
from mixacm_jax.runtime import parallel
from mixacm_jax.evaluation import robustness
from mixacm_jax.attacks import autoattack
from mixacm_jax.port import convert
print("OK")
"""
  out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True,
                       timeout=120)
  assert out.returncode == 0 and "OK" in out.stdout, out.stderr[-2000:]
