"""ResNeXt: the AugMix CifarResNeXt (RobustBench's `resnext.py`) against its own module, small
(logits, stages, export back), and the zoo's Hendrycks2020AugMix_ResNeXt entries read off
their full modules on the meta device. torchvision's ResNeXts: tests/imagenet_test.py."""
import jax
import numpy as np
import pytest
from flax import traverse_util

torch = pytest.importorskip("torch", reason="torch==2.13.0 is in requirements.txt; the port "
                                            "tests compare against PyTorch")

from mixacm_jax import models  # noqa: E402
from mixacm_jax.port import convert, rules as rules_lib, state_dict as sd_lib  # noqa: E402
from tools import robustbench_zoo as robustbench  # noqa: E402
from conftest import assert_exports_back, port_and_run, robustbench_architecture  # noqa: E402

STAGES = {"stem": "bn_1", "stage1": "stage_1", "stage2": "stage_2", "stage3": "stage_3"}


def test_cifar_resnext_gives_its_logits_stages_and_exports_its_layout():
  rx = robustbench_architecture("resnext")
  # Two blocks per stage, 2 groups of 8 at 64 planes: every kind of layer, narrow inside.
  factory = lambda: rx.CifarResNeXt(rx.ResNeXtBottleneck, depth=20, cardinality=2,
                                    base_width=8, num_classes=10)
  torch.manual_seed(0)
  net = robustbench.randomise_batchnorm(factory())
  arch, kwargs = robustbench.registered_architecture(*robustbench._cifar_resnext(net))
  assert (arch, kwargs) == ("resnet", {"stage_sizes": (2, 2, 2), "block": "bottleneck",
                                       "groups": 2, "width_per_group": 8})
  x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
  run = port_and_run(net, arch, kwargs, x, STAGES)
  run.acts["stem"] = np.maximum(run.acts["stem"], 0)  # the hook sees bn_1's, before its ReLU
  assert np.abs(run.ref).max() > 0.5
  np.testing.assert_allclose(run.logits, run.ref, atol=1e-4 * np.abs(run.ref).max(), rtol=0)
  for ours in STAGES:
    np.testing.assert_allclose(run.sown[ours], run.acts[ours], atol=1e-4, rtol=1e-4)
  assert_exports_back(run.variables, run.model, net, factory, x, run.ref)


@pytest.mark.parametrize("dataset,classes", [("cifar10", 10), ("cifar100", 100)])
def test_zoo_reads_the_augmix_resnext_29(dataset, classes):
  """Hendrycks2020AugMix_ResNeXt as the zoo builds it: resnext29_4x32d without kwargs, its
  mu / sigma buffers (0.5) as mean and std, every tensor of the full network in place."""
  robustbench_architecture("resnext")
  entry = robustbench.zoo_entries(dataset)["corruptions"]["Hendrycks2020AugMix_ResNeXt"]
  recipe = robustbench.derive_recipe("Hendrycks2020AugMix_ResNeXt", entry, dataset,
                                     lambda name: False)
  assert (recipe["arch"], recipe["kwargs"], recipe["num_classes"]) == (
      "resnext29_4x32d", {}, classes)
  assert recipe["mean"] == (0.5,) * 3 and recipe["std"] == (0.5,) * 3
  with robustbench.weights_on_meta():
    net = entry["model"]()
  state, _ = sd_lib.clean_state_dict({k: np.broadcast_to(np.float32(0), tuple(v.shape))
                                      for k, v in net.state_dict().items()})
  model = models.create_model("resnext29_4x32d", num_classes=classes)
  variables = convert.torch_to_flax(state, model, (32, 32, 3))
  assert variables["params"]["layer3_2"]["conv2"]["kernel"].shape == (3, 3, 128, 512)


@pytest.mark.parametrize("arch,kwargs,written,also_read", [
    # A grouped CIFAR-stem ResNet writes CifarResNeXt's names, and reads torchvision's too.
    ("resnet", dict(stage_sizes=(1, 1, 1), block="bottleneck", groups=2, width_per_group=8),
     rules_lib.CIFAR_RESNEXT, rules_lib.TORCHVISION_RESNET),
    # A CifarResNeXt of cardinality 1 is an ungrouped ResNet: its names still read.
    ("resnet", dict(stage_sizes=(1, 1, 1), block="bottleneck", width_per_group=16),
     rules_lib.RESNET, rules_lib.CIFAR_RESNEXT),
    # A PreActResNet with conv-bn shortcuts but a linear head: the plain layout names them.
    ("preact_resnet", dict(stage_sizes=(1, 1), shortcut_bn=True, bn_affine=False),
     rules_lib.PREACT_RESNET, rules_lib.PREACT_RESNET)])
def test_each_layout_a_model_reads_gives_back_its_variables(arch, kwargs, written, also_read):
  model = models.create_model(arch, num_classes=10, **kwargs)
  variables = models.init_variables(model, jax.random.PRNGKey(0), (32, 32, 3))
  exported = convert.flax_to_torch(variables, model)
  flat = traverse_util.flatten_dict(jax.device_get(variables))
  for rules in (written, also_read):
    state = dict(rules_lib.to_torch(path, np.asarray(v), rules) for path, v in flat.items())
    if rules is written:
      assert set(state) == set(exported) - {k for k in exported if "num_batches" in k}
    back = convert.torch_to_flax(state, model, (32, 32, 3))
    jax.tree_util.tree_map(np.testing.assert_array_equal, back, jax.device_get(variables))
