"""ResNeXt: the AugMix CifarResNeXt (RobustBench's `resnext.py`) against its own module, small
(logits, stages, export back), and the zoo's Hendrycks2020AugMix_ResNeXt entries read off
their full modules on the meta device. torchvision's ResNeXts: tests/imagenet_test.py."""
import importlib.util

import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch==2.13.0 is in requirements.txt; the port "
                                            "tests compare against PyTorch")

from mixacm_jax import models  # noqa: E402
from mixacm_jax.port import convert, state_dict as sd_lib  # noqa: E402
from tools import robustbench_zoo as robustbench  # noqa: E402

STAGES = {"stem": "bn_1", "stage1": "stage_1", "stage2": "stage_2", "stage3": "stage_3"}


def _resnext_module():
  if importlib.util.find_spec("robustbench") is None:
    pytest.skip("robustbench is not installed (pip install --no-deps -r requirements-port.txt)")
  return robustbench.architecture_module("resnext")


def test_cifar_resnext_gives_its_logits_stages_and_exports_its_layout():
  rx = _resnext_module()
  # Two blocks per stage, 2 groups of 8 at 64 planes: every kind of layer, narrow inside.
  factory = lambda: rx.CifarResNeXt(rx.ResNeXtBottleneck, depth=20, cardinality=2,
                                    base_width=8, num_classes=10)
  torch.manual_seed(0)
  net = robustbench.randomise_batchnorm(factory())
  arch, kwargs = robustbench.registered_architecture(*robustbench._cifar_resnext(net))
  assert (arch, kwargs) == ("resnet", {"stage_sizes": (2, 2, 2), "block": "bottleneck",
                                       "groups": 2, "width_per_group": 8})
  acts = {}
  for ours, theirs in STAGES.items():
    net.get_submodule(theirs).register_forward_hook(
        lambda m, i, o, ours=ours: acts.__setitem__(ours, o.detach().numpy()))
  x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
  with torch.no_grad():
    ref = net(x).numpy()
  acts["stem"] = np.maximum(acts["stem"], 0)  # the hook sees bn_1's output, before its ReLU
  state, _ = sd_lib.clean_state_dict({k: v.numpy() for k, v in net.state_dict().items()})
  model = models.create_model(arch, num_classes=10, **kwargs)
  variables = convert.torch_to_flax(state, model, (32, 32, 3))
  logits, feats, _ = models.apply_model(model, variables,
                                        jnp.asarray(x.numpy().transpose(0, 2, 3, 1)),
                                        train=False, names=list(STAGES))
  assert np.abs(ref).max() > 0.5
  np.testing.assert_allclose(np.asarray(logits), ref, atol=1e-4 * np.abs(ref).max(), rtol=0)
  for ours in STAGES:
    np.testing.assert_allclose(np.asarray(feats[ours]), acts[ours].transpose(0, 2, 3, 1),
                               atol=1e-4, rtol=1e-4)
  exported = convert.flax_to_torch(variables, model)
  theirs = net.state_dict()
  assert set(exported) == set(theirs)
  for key, value in exported.items():
    np.testing.assert_array_equal(value, theirs[key].numpy(), err_msg=key)
  fresh = factory()
  fresh.load_state_dict({k: torch.from_numpy(v) for k, v in exported.items()})
  with torch.no_grad():
    np.testing.assert_array_equal(fresh.eval()(x).numpy(), ref)


@pytest.mark.parametrize("dataset,classes", [("cifar10", 10), ("cifar100", 100)])
def test_zoo_reads_the_augmix_resnext_29(dataset, classes):
  """Hendrycks2020AugMix_ResNeXt as the zoo builds it: resnext29_4x32d without kwargs, its
  mu / sigma buffers (0.5) as mean and std, every tensor of the full network in place."""
  _resnext_module()
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
