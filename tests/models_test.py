"""Architectures: shapes, sown names, BatchNorm modes, padding, normalisation, registry."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mixacm_jax import models
from mixacm_jax.errors import ConfigError
from mixacm_jax.models import layers

EXPECTED_NAMES = {
    "resnet18": {"stem", "features"} | {f"stage{i}" for i in range(1, 5)}
                | {f"stage{i}_preact" for i in range(1, 5)},
    "resnet34": {"stem", "features"} | {f"stage{i}" for i in range(1, 5)}
                | {f"stage{i}_preact" for i in range(1, 5)},
    "preact_resnet18": {"stem", "features", "stage4_act"} | {f"stage{i}" for i in range(1, 5)},
    "wrn16_4": {"stem", "features", "stage1", "stage2", "stage3", "stage3_act"},
    "wrn28_10": {"stem", "features", "stage1", "stage2", "stage3", "stage3_act"},
    "wrn34_10": {"stem", "features", "stage1", "stage2", "stage3", "stage3_act"},
    "wrn70_16": {"stem", "features", "stage1", "stage2", "stage3", "stage3_act"},
    "dm_wrn70_16": {"stem", "features", "stage1", "stage2", "stage3", "stage3_act"},
    "dm_preact_resnet18": {"stem", "features", "stage4_act"} | {f"stage{i}" for i in range(1, 5)},
}
# Published parameter counts of the CIFAR-10 models (RobustBench / the original papers).
EXPECTED_PARAMS_M = {"resnet18": 11.17, "resnet34": 21.28, "preact_resnet18": 11.17,
                     "wrn16_4": 2.75, "wrn28_10": 36.48, "wrn34_10": 46.16, "wrn70_16": 266.8,
                     # RobustBench DMPreActResNet(depth=18): 3x3 shortcut convs (PyTorch count).
                     "dm_wrn70_16": 266.8, "dm_preact_resnet18": 12.55}


@pytest.mark.parametrize("name", sorted(EXPECTED_NAMES))
def test_full_size_shapes_names_and_param_counts(name):
  """Full-size models traced abstractly (no compute): logits, sown names, parameter count."""
  model = models.create_model(name, num_classes=10)
  variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((2, 32, 32, 3))))
  n_params = sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(variables["params"]))
  assert n_params / 1e6 == pytest.approx(EXPECTED_PARAMS_M[name], rel=0.01)
  assert set(models.feature_names(model, (32, 32, 3))) == EXPECTED_NAMES[name]
  logits = jax.eval_shape(lambda v: model.apply(v, jnp.zeros((2, 32, 32, 3))), variables)
  assert logits.shape == (2, 10) and logits.dtype == jnp.float32


TINY = {"resnet18": dict(base_width=4), "preact_resnet18": dict(base_width=4),
        "wrn": dict(depth=10, widen_factor=1)}


@pytest.mark.parametrize("name", sorted(TINY))
def test_apply_model_returns_requested_activations(name):
  model = models.create_model(name, num_classes=7, **TINY[name])
  variables = models.init_variables(model, jax.random.PRNGKey(0), (16, 16, 3))
  names = models.feature_names(model, (16, 16, 3))
  x = jax.random.uniform(jax.random.PRNGKey(1), (4, 16, 16, 3))
  logits, feats, _ = models.apply_model(model, variables, x, train=False, names=names)
  assert logits.shape == (4, 7)
  assert feats["stem"].shape[:3] == (4, 16, 16)
  assert feats["features"].shape == (4, feats["stage1"].shape[-1] * (
      8 if name != "wrn" else 4))  # the last stage is 8x (ResNet) or 4x (WRN) the first's width
  # Stages halve the spatial size after the first.
  assert feats["stage2"].shape[1] == 8
  with pytest.raises(ConfigError, match="does not sow"):
    models.apply_model(model, variables, x, train=False, names=["nope"])


def test_batchnorm_train_vs_eval():
  model = models.create_model("resnet18", num_classes=10, base_width=4)
  variables = models.init_variables(model, jax.random.PRNGKey(0), (8, 8, 3))
  x = jax.random.uniform(jax.random.PRNGKey(1), (8, 8, 8, 3))
  # Eval mode: each example's logits do not depend on the rest of the batch; stats unchanged.
  full, _, stats = models.apply_model(model, variables, x, train=False)
  single, _, _ = models.apply_model(model, variables, x[:1], train=False)
  np.testing.assert_allclose(full[:1], single, atol=1e-5)
  assert jax.tree_util.tree_all(jax.tree_util.tree_map(
      lambda a, b: bool(jnp.all(a == b)), stats, variables["batch_stats"]))
  # Train mode: batch statistics are used (logits depend on the batch) and stats move by 0.1.
  full_t, _, new_stats = models.apply_model(model, variables, x, train=True)
  single_t, _, _ = models.apply_model(model, variables, x[:2], train=True)
  assert not np.allclose(full_t[:2], single_t, atol=1e-4)
  h = jnp.asarray(x).astype(jnp.float32)
  conv1 = jax.lax.conv_general_dilated(h, variables["params"]["conv1"]["kernel"], (1, 1),
                                       ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"))
  np.testing.assert_allclose(new_stats["bn1"]["mean"], 0.1 * conv1.mean(axis=(0, 1, 2)),
                             rtol=1e-4, atol=1e-6)


def test_stride2_conv_pads_symmetrically_like_pytorch():
  """A 3x3 stride-2 conv with padding 1 on both sides, checked against NumPy loops."""
  conv = layers.conv(2, 3, 2)
  x = np.random.RandomState(0).rand(1, 6, 6, 3).astype(np.float32)
  params = conv.init(jax.random.PRNGKey(0), x)
  out = np.asarray(conv.apply(params, x))
  w = np.asarray(params["params"]["kernel"])
  padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  ref = np.zeros((1, 3, 3, 2), np.float32)
  for i in range(3):
    for j in range(3):
      patch = padded[0, 2 * i:2 * i + 3, 2 * j:2 * j + 3, :]
      ref[0, i, j] = np.einsum("hwc,hwco->o", patch, w)
  np.testing.assert_allclose(out, ref, atol=1e-5)


def test_input_normalisation_inside_model():
  mean, std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
  plain = models.create_model("preact_resnet18", num_classes=10, base_width=4)
  normed = models.create_model("preact_resnet18", num_classes=10, base_width=4, mean=mean, std=std)
  variables = models.init_variables(plain, jax.random.PRNGKey(0), (8, 8, 3))
  x = jax.random.uniform(jax.random.PRNGKey(1), (2, 8, 8, 3))
  a = normed.apply(variables, x)
  b = plain.apply(variables, (x - jnp.array(mean)) / jnp.array(std))
  np.testing.assert_allclose(a, b, atol=1e-5)


def test_bfloat16_compute_keeps_float32_params():
  model = models.create_model("resnet18", num_classes=10, base_width=4, dtype="bfloat16")
  variables = models.init_variables(model, jax.random.PRNGKey(0), (8, 8, 3))
  assert all(p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(variables["params"]))
  _, feats, _ = models.apply_model(model, variables, jnp.ones((2, 8, 8, 3)), train=False,
                                   names=["stage1"])
  assert feats["stage1"].dtype == jnp.bfloat16
  assert model.apply(variables, jnp.ones((2, 8, 8, 3))).dtype == jnp.float32


def test_unknown_architecture_lists_known_ones():
  with pytest.raises(ConfigError, match="unknown architecture 'resnet19'.*resnet18.*wrn34_10"):
    models.create_model("resnet19", num_classes=10)
  with pytest.raises(ConfigError, match="bad model.kwargs"):
    models.create_model("resnet18", num_classes=10, widht=3)


def test_dm_models_get_their_own_datasets_statistics_never_another():
  """DeepMind-style models keep mean/std as non-persistent buffers (never in the file): 10
  classes get CIFAR-10's, 100 CIFAR-100's, as RobustBench builds them; other counts must be
  given, not guessed."""
  from mixacm_jax.errors import ConfigError  # pylint: disable=g-import-not-at-top
  c10 = models.create_model("dm_wrn", num_classes=10, depth=10, widen_factor=1)
  c100 = models.create_model("dm_wrn", num_classes=100, depth=10, widen_factor=1)
  assert c10.mean == (0.4914, 0.4822, 0.4465) and c100.mean == (0.5071, 0.4865, 0.4409)
  assert c100.std == (0.2673, 0.2564, 0.2762)
  with pytest.raises(ConfigError, match="43 classes match no known dataset: set model.mean"):
    models.create_model("dm_preact_resnet18", num_classes=43)
  given = models.create_model("dm_wrn", num_classes=43, depth=10, widen_factor=1,
                              mean=(0.5,) * 3, std=(0.5,) * 3)
  assert given.mean == (0.5,) * 3
