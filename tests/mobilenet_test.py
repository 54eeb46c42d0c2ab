"""MobileNetV2: torchvision's ImageNet form against torchvision's module, the CIFAR form's
layout (kuangliu's pytorch-cifar, the robust distillation papers' student), its stages for
ACM, and a MixACM distillation into it."""
import jax
import numpy as np
import pytest

from mixacm_jax import models
from mixacm_jax.port import convert, state_dict
from mixacm_jax.training import train

torch = pytest.importorskip("torch", reason="the reference is torchvision's module (port extra)")
from conftest import logits_against_torch  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position
from tools import robustbench_zoo, torch_reference  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position


@pytest.mark.parametrize("side", [224, 64])
def test_imagenet_form_gives_torchvisions_logits(side):
  torch.manual_seed(0)
  net = robustbench_zoo.randomise_batchnorm(
      torch_reference.torchvision_models().mobilenet_v2(num_classes=1000))
  *_, ours, ref = logits_against_torch(net, "imagenet_mobilenet_v2", side, num_classes=1000)
  assert np.abs(ref).max() == pytest.approx(20, rel=1e-3)
  np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)


def test_cifar_form_has_the_layout_and_size_of_the_papers_student():
  model = models.create_model("mobilenet_v2", num_classes=10)
  variables = models.init_variables(model, jax.random.PRNGKey(0), (32, 32, 3))
  # kuangliu's MobileNetV2(num_classes=10) has 2,296,922 parameters.
  assert sum(x.size for x in jax.tree_util.tree_leaves(variables["params"])) == 2_296_922
  state = convert.flax_to_torch(variables, model)
  assert {"conv1.weight", "layers.0.conv1.weight", "layers.1.shortcut.0.weight",
          "layers.16.bn3.running_var", "conv2.weight", "linear.bias"} <= set(state)
  # Stride 1 with equal widths: identity; stride 2: no shortcut at all.
  assert not any(k.startswith(("layers.2.shortcut", "layers.3.shortcut")) for k in state)
  assert state["layers.1.conv2.weight"].shape == (96, 1, 3, 3)  # depthwise, 6 x 16 wide
  back = convert.torch_to_flax(state_dict.clean_state_dict(state)[0], model, (32, 32, 3))
  same = jax.tree_util.tree_map(lambda a, b: bool(np.array_equal(a, b)), variables, back)
  assert all(jax.tree_util.tree_leaves(same))


def test_stages_sit_at_a_cifar_resnets_resolutions():
  model = models.create_model("mobilenet_v2", num_classes=10, width_mult=0.25, last_width=64)
  names = ("stem", "stage1", "stage2", "stage3", "stage4", "features")
  shapes = models.feature_names(model, (32, 32, 3))
  assert set(names) <= set(shapes)
  variables = models.init_variables(model, jax.random.PRNGKey(0), (32, 32, 3))
  _, feats, _ = models.apply_model(model, variables, np.zeros((1, 32, 32, 3), np.float32),
                                   train=False, names=names[:5])
  assert [feats[n].shape[1] for n in names[:5]] == [32, 32, 16, 8, 4]
  assert [feats[n].shape[-1] for n in names[:5]] == [8, 8, 8, 24, 64]


def test_mixacm_distils_a_resnet_teacher_into_a_mobilenet_student(mixacm_config, tmp_path):
  mixacm_config.model.name = "mobilenet_v2"
  mixacm_config.model.kwargs = {"width_mult": 0.25, "last_width": 32}
  mixacm_config.objective.mixacm.acm.stages = ("stem", "stage1", "stage2")
  mixacm_config.optim.num_steps = 2
  result = train.train_and_evaluate(mixacm_config, str(tmp_path))
  assert result["steps"] == 2 and np.isfinite(result["clean_accuracy"])
  kernels = result["state"].params["objective"]
  assert kernels["stage2"]["kernel"].shape == (8, 16)  # student 8 wide -> teacher 16
