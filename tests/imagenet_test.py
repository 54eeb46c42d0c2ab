"""ImageNet: torchvision's ResNets in Flax against torchvision's own modules, RobustBench's
ImageNet entries by name, the JPEG pipeline on mock `imagenet2012` of real JPEG files, and a
MixACM run with ImageNet stems through it, evaluated with AutoAttack."""
import io
import json
import os

import jax
import numpy as np
from PIL import Image
import pytest

from mixacm_jax import models
from mixacm_jax.configs import default
from mixacm_jax.data import input_pipeline, jpeg
from mixacm_jax.errors import ConfigError
from mixacm_jax.port import convert

torch = pytest.importorskip("torch", reason="the references are PyTorch modules (port extra)")
from conftest import logits_against_torch  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position
from tools import robustbench_parity, robustbench_zoo, torch_reference  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position


def _torchvision_logits_and_ours(name: str, side: int):
  torch.manual_seed(0)
  net = robustbench_zoo.randomise_batchnorm(
      getattr(torch_reference.torchvision_models(), name)(num_classes=1000))
  *_, ours, ref = logits_against_torch(net, f"imagenet_{name}", side, num_classes=1000)
  return ref, ours


@pytest.mark.parametrize("name,side", [("resnet18", 224), ("resnet50", 224),
                                       ("resnet50", 288)])
def test_imagenet_resnets_give_torchvisions_logits(name, side):
  ref, ours = _torchvision_logits_and_ours(name, side)
  assert np.abs(ref).max() == pytest.approx(20, rel=1e-3)
  np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", ["resnet34", "resnet101", "resnet152", "wide_resnet50_2",
                                  "wide_resnet101_2", "resnext50_32x4d", "resnext101_32x8d"])
def test_every_imagenet_resnet_gives_torchvisions_logits(name):
  ref, ours = _torchvision_logits_and_ours(name, 64)  # any size works: global pooling
  np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)


def test_imagenet_resnets_sow_the_cifar_names_and_export_torchvisions_layout():
  cifar = models.create_model("resnet18", num_classes=10, base_width=4)
  imagenet = models.create_model("imagenet_resnet18", num_classes=10, base_width=4)
  assert models.feature_names(cifar, (32, 32, 3)) == models.feature_names(imagenet, (64, 64, 3))
  variables = models.init_variables(imagenet, jax.random.PRNGKey(0), (64, 64, 3))
  state = convert.flax_to_torch(variables, imagenet)
  assert "layer2.0.downsample.0.weight" in state and state["conv1.weight"].shape == (4, 3, 7, 7)
  with pytest.raises(ConfigError, match="basic blocks take width_per_group=64 and groups=1 only"):
    models.init_variables(models.create_model("imagenet_resnet18", num_classes=10,
                                              width_per_group=128),
                          jax.random.PRNGKey(0), (64, 64, 3))


def test_standard_r50_reads_torch_hubs_file_unless_a_copy_lies_in_the_zoo(tmp_path,
                                                                          monkeypatch):
  """RobustBench takes Standard_R50's weights from torch.hub's cache: so does the loader."""
  from mixacm_jax.errors import CheckpointError  # pylint: disable=g-import-not-at-top
  from mixacm_jax.port import zoo  # pylint: disable=g-import-not-at-top
  monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
  found = zoo.recipe("Standard_R50", "imagenet", "Linf")
  own = zoo.checkpoint_path("Standard_R50", "imagenet", "Linf", str(tmp_path / "models"))
  hub = os.path.join(str(tmp_path / "torch"), "hub", "checkpoints", "resnet50-0676ba61.pth")
  assert zoo.weight_files(found, own) == (hub,)
  with pytest.raises(CheckpointError, match="copy torch.hub's checkpoints/resnet50-0676ba61"):
    zoo.load_entry("Standard_R50", "imagenet", "Linf", str(tmp_path / "models"))
  net = torch_reference.torchvision_models().resnet50()
  os.makedirs(os.path.dirname(hub))
  torch.save(net.state_dict(), hub)
  model, variables, info = zoo.load_entry("Standard_R50", "imagenet", "Linf",
                                          str(tmp_path / "models"))
  assert info["source"] == hub and model.mean == (0.485, 0.456, 0.406)
  x = np.random.default_rng(0).random((1, 64, 64, 3), np.float32)
  with torch.no_grad():
    ref = net.eval()((torch.from_numpy(x.transpose(0, 3, 1, 2)) - torch.tensor(
        model.mean).view(1, 3, 1, 1)) / torch.tensor(model.std).view(1, 3, 1, 1)).numpy()
  np.testing.assert_allclose(np.asarray(model.apply(variables, x)), ref, atol=1e-4, rtol=1e-5)


def test_a_robustbench_imagenet_entry_loads_by_name_at_full_size(tmp_path):
  """Salman2020Do_R18 at 224 px: RobustBench's own module (normalize_model around
  torchvision's ResNet-18, random weights), saved in its file layout, loaded by name."""
  entry = robustbench_zoo.zoo_entries("imagenet")["Linf"]["Salman2020Do_R18"]
  diff, scale, _ = robustbench_parity.check_entry("Salman2020Do_R18", "imagenet", "Linf", entry,
                                               str(tmp_path))
  assert scale == pytest.approx(robustbench_parity.LOGIT_SCALE, rel=1e-3)
  assert diff < robustbench_parity.TOLERANCE


# --- the JPEG pipeline --------------------------------------------------------------------


def _jpeg_bytes(rng, h, w) -> bytes:
  smooth = np.cumsum(rng.integers(-8, 9, (h, w, 3)), axis=1)  # structure for the codec
  image = np.clip(128 + smooth, 0, 255).astype(np.uint8)
  out = io.BytesIO()
  Image.fromarray(image).save(out, "JPEG", quality=90)
  return out.getvalue()


@pytest.fixture
def mock_imagenet():
  """tfds.testing.mock_data serving real JPEG files of several sizes as imagenet2012, as its
  data source serves them to the pipeline (images undecoded)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  splits = {split: [{"image": _jpeg_bytes(rng, int(rng.integers(40, 80)),
                                          int(rng.integers(40, 80))),
                     "label": i % 10, "file_name": f"ILSVRC2012_val_{i:08d}.JPEG"}
                    for i in range(n)] for split, n in (("train", 24), ("validation", 12))}
  with tfds.testing.mock_data(as_data_source_fn=lambda self, split, **kw: splits[split]):
    yield splits


@pytest.fixture
def mock_imagenet_one_class(mock_imagenet):
  """The same images, all of class 0: a few steps learn to classify them (correctly, so that
  AutoAttack has points to attack)."""
  for examples in mock_imagenet.values():
    for example in examples:
      example["label"] = 0
  return mock_imagenet


def _imagenet_data(**overrides):
  cfg = default.data()
  cfg.update(name="imagenet2012", eval_split="validation", image_size=32, eval_resize=36,
             random_flip=True, crop_padding=0)
  cfg.update(**overrides)
  return cfg


def test_eval_crops_are_robustbenchs_res256crop224(mock_imagenet):
  """Resize(256) + CenterCrop(224) + ToTensor, torchvision's own transforms on the image
  Pillow decodes, against ours (simplejpeg's decoding)."""
  torch_reference.torchvision_models()
  import torchvision.transforms as transforms  # pylint: disable=g-import-not-at-top
  reference = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224),
                                  transforms.ToTensor()])
  for example in mock_imagenet["validation"][:4]:
    ref = reference(Image.open(io.BytesIO(example["image"])).convert("RGB")).numpy()
    ours = jpeg.eval_example(example, size=224, resize_to=256)["image"] / 255.0
    assert ours.shape == (224, 224, 3)
    diff = np.abs(ours - ref.transpose(1, 2, 0))
    assert diff.max() <= 2 / 255 and diff.mean() < 0.2 / 255, (diff.max(), diff.mean())


def test_random_resized_crops_follow_torchvisions_rule():
  rng = np.random.default_rng(0)
  for height, width in [(60, 80), (500, 375), (30, 300)]:
    for _ in range(200):
      top, left, h, w = jpeg.random_resized_crop_box(height, width, rng, 0.08)
      assert 0 <= top and top + h <= height and 0 <= left and left + w <= width
      if (h, w) != (height, width) and (top or left):  # a drawn box, not the fallback
        assert 0.08 * height * width * 0.9 <= h * w
  # An image too thin for any box falls back to its centre, the ratio clamped to [3/4, 4/3].
  assert jpeg.random_resized_crop_box(10, 1000, rng, 0.9) == (0, 493, 10, 13)


def test_jpeg_pipeline_trains_and_evaluates_on_mock_imagenet(mock_imagenet, tmp_path):
  cfg = _imagenet_data()
  info = input_pipeline.get_info(cfg)
  assert (info.image_shape, info.num_classes, info.num_train, info.num_eval) == (
      (32, 32, 3), 1000, 24, 12)
  first = next(input_pipeline.train_batches(cfg, 8, seed=3))
  again = next(input_pipeline.train_batches(cfg, 8, seed=3))
  other = next(input_pipeline.train_batches(cfg, 8, seed=4))
  assert first["image"].shape[-3:] == (32, 32, 3) and first["image"].dtype == np.float32
  assert 0 <= first["image"].min() and first["image"].max() <= 1
  np.testing.assert_array_equal(first["image"], again["image"])  # a function of the seed
  assert not np.array_equal(first["image"], other["image"])
  batches = list(input_pipeline.eval_batches(cfg, 8))
  labels = np.concatenate([b["label"].reshape(-1)[b["mask"].reshape(-1) > 0] for b in batches])
  np.testing.assert_array_equal(labels, [e["label"] for e in mock_imagenet["validation"]])
  # RobustBench-style ids (class folder / file name) select a subset of the eval split.
  ids = tmp_path / "ids.txt"
  ids.write_text("n01440764/ILSVRC2012_val_00000003.JPEG\nn0/ILSVRC2012_val_00000007.JPEG\n"
                 "n0/ILSVRC2012_val_99999999.JPEG\n")
  listed = _imagenet_data(eval_ids=str(ids))
  assert input_pipeline.get_info(listed).num_eval == 2
  batch = next(input_pipeline.eval_batches(listed, 8))
  assert list(batch["label"].reshape(-1)[:2]) == [3, 7]


def test_variable_size_images_without_image_size_are_a_clear_error(mock_imagenet):
  with pytest.raises(ConfigError, match="set data.image_size"):
    input_pipeline.get_info(_imagenet_data(image_size=0))


def test_robustbench_ids_ship_with_the_package():
  from mixacm_jax.configs import imagenet  # pylint: disable=g-import-not-at-top
  ids = input_pipeline.read_ids(imagenet.ROBUSTBENCH_IDS)
  assert len(ids) == 5000 and all(i.startswith("ILSVRC2012_val_") for i in ids)
  installed = os.path.join(robustbench_zoo.zoo_package(), "helper_files",
                           "imagenet_test_image_ids.txt")
  assert ids == input_pipeline.read_ids(installed)


# --- MixACM with ImageNet stems, end to end -------------------------------------------------


@pytest.mark.slow
def test_mixacm_with_imagenet_stems_trains_on_mock_imagenet_and_eval_runs_autoattack(
    mock_imagenet_one_class, tmp_path):
  from mixacm_jax.cli import modes  # pylint: disable=g-import-not-at-top
  from mixacm_jax.configs import imagenet  # pylint: disable=g-import-not-at-top
  from mixacm_jax.training import train  # pylint: disable=g-import-not-at-top

  def tiny(config):
    config.data = _imagenet_data(num_threads=2)
    for model in (config.model, config.teacher.model):
      model.name = "imagenet_resnet18"
      model.kwargs.update(base_width=4, stage_sizes=(1, 1, 1, 1))
    config.optim.update(batch_size=8, num_steps=2, warmup_epochs=0.0, learning_rate=0.5)
    config.train_evals.pgd.update(attacks="clean,pgd2", num_examples=8)
    config.eval.update(batch_size=8, num_examples=2)
    config.checkpoint.update(every_steps=2, async_save=False)
    config.log_every_steps = 1
    return config

  teacher = tiny(imagenet.get_config())
  teacher.objective.name = "natural"
  teacher.optim.num_steps = 4
  train.train_and_evaluate(teacher, str(tmp_path / "teacher"))
  student = tiny(imagenet.mixacm_config("imagenet_resnet18", ""))
  student.teacher.checkpoint = str(tmp_path / "teacher")
  summary = train.train_and_evaluate(student, str(tmp_path / "student"))
  assert summary["steps"] == 2 and np.isfinite(summary["clean_accuracy"])
  student.eval.attacks = "clean,autoattack"
  assert modes.run("eval", student, str(tmp_path / "student")) == 0
  with open(tmp_path / "student" / "robustness.json") as f:
    report = json.load(f)
  assert report["clean_accuracy"] > 0  # points to attack
  stages = report["attacks"]["autoattack"]["after_each_stage"]
  assert list(stages) == ["apgd-ce", "apgd-t", "fab-t", "square"]
  assert report["attacks"]["autoattack"]["robust_accuracy"] <= report["clean_accuracy"]


def test_imagenet_resized_reads_as_a_fixed_size_dataset():
  """imagenet_resized/32x32 (images of one size, decoded by TFDS): data.image_size stays 0."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  cfg = default.data()
  cfg.update(name="imagenet_resized/32x32", eval_split="validation")
  with tfds.testing.mock_data(num_examples=16):
    info = input_pipeline.get_info(cfg)
    batch = next(input_pipeline.train_batches(cfg, 8, seed=0))
  assert (info.image_shape, info.num_classes) == ((32, 32, 3), 1000)
  assert batch["image"].shape[-3:] == (32, 32, 3) and batch["image"].max() <= 1
