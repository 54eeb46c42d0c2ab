"""AlexNet against torchvision's own module: logits, stages and the export back, at ImageNet's
224 (a 6x6 map: the adaptive pool is the identity) and at 127 (a 3x3 map that the pool
spreads over 6x6 bins). The main branch's 'AlexNet' entry: tests/zoo_test.py's recipes."""
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch==2.13.0 is in requirements.txt; the port "
                                            "tests compare against PyTorch")

from mixacm_jax import models  # noqa: E402
from mixacm_jax.models import alexnet  # noqa: E402
from mixacm_jax.port import convert  # noqa: E402
from tools import robustbench_parity, robustbench_zoo, torch_reference  # noqa: E402

# Our sown name -> the index of the torchvision module whose output it is.
STAGES = {"stem": 2, "stage1": 5, "stage2": 7, "stage3": 9, "stage4": 12}


def test_adaptive_pool_matches_torchs_on_every_kind_of_bin():
  x = np.random.default_rng(0).normal(size=(2, 13, 7, 3)).astype(np.float32)
  for size in (1, 3, 6, 7, 13):
    ref = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(x.transpose(0, 3, 1, 2)),
                                                  size).numpy().transpose(0, 2, 3, 1)
    np.testing.assert_allclose(np.asarray(alexnet.adaptive_avg_pool(jnp.asarray(x), size)),
                               ref, atol=1e-6, err_msg=str(size))


@pytest.mark.parametrize("side", [224, 127])
def test_alexnet_gives_torchvisions_logits_and_stages_and_exports_its_layout(side):
  torch.manual_seed(0)
  net = torch_reference.torchvision_models().alexnet(num_classes=10).eval()
  assert robustbench_zoo.registered_architecture(*robustbench_zoo._alexnet(net)) == (
      "alexnet", {})
  acts = {}
  for ours, index in STAGES.items():
    net.features[index].register_forward_hook(
        lambda m, i, o, ours=ours: acts.__setitem__(ours, o.detach().numpy()))
  x = torch.rand(2, 3, side, side, generator=torch.Generator().manual_seed(1))
  robustbench_parity.logits_at_scale(net, x)
  with torch.no_grad():
    ref = net(x).numpy()
  state = {k: v.numpy() for k, v in net.state_dict().items()}
  model = models.create_model("alexnet", num_classes=10)
  variables = convert.torch_to_flax(state, model, (side, side, 3))
  logits, feats, _ = models.apply_model(model, variables,
                                        jnp.asarray(x.numpy().transpose(0, 2, 3, 1)),
                                        train=False, names=list(STAGES) + ["features"])
  np.testing.assert_allclose(np.asarray(logits), ref, atol=1e-4, rtol=0)
  for ours in STAGES:
    np.testing.assert_allclose(np.asarray(feats[ours]), acts[ours].transpose(0, 2, 3, 1),
                               atol=1e-4, rtol=1e-4, err_msg=ours)
  exported = convert.flax_to_torch(variables, model)
  assert set(exported) == set(state)
  for key, value in exported.items():
    np.testing.assert_array_equal(value, state[key], err_msg=key)

