"""Diffenderfer et al.'s CARD networks: the binarised WidePreActResNet (RobustBench's
`CARD_resnet.py`) against its own module, small (logits, stages, export back), and the zoo's
CARD decks (six networks averaged after softmax) read off their full modules on the meta
device."""
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch==2.13.0 is in requirements.txt; the port "
                                            "tests compare against PyTorch")

from mixacm_jax import models  # noqa: E402
from mixacm_jax.port import convert, state_dict as sd_lib  # noqa: E402
from tools import robustbench_zoo as robustbench  # noqa: E402
from conftest import assert_exports_back, port_and_run, robustbench_architecture  # noqa: E402

STAGES = ("stem", "stage1", "stage2", "stage3", "stage4")


def test_wide_preact_resnet_gives_its_logits_and_exports_its_layout():
  card = robustbench_architecture("CARD_resnet")
  # Its widths (64, 192, 384, 768), fewer blocks; layer1's block and layer2's second keep
  # their width, so their identity shortcuts carry the pre-activation.
  factory = lambda: card.WidePreActResNet(num_blocks=[1, 2, 1, 1])
  torch.manual_seed(0)
  net = robustbench.randomise_batchnorm(factory())
  with torch.no_grad():  # logits of a usable size (a test at 1e-4 means something)
    net.fc.weight.mul_(8)
  arch, kwargs = robustbench.registered_architecture(*robustbench._card_wide_preact_resnet(net))
  assert (arch, kwargs) == ("preact_resnet", {
      "stage_sizes": (1, 2, 1, 1), "stage_widths": (64, 192, 384, 768), "shortcut_bn": True,
      "bn_affine": False, "preact_identity": True, "conv_head": True})
  x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
  run = port_and_run(net, arch, kwargs, x, dict(zip(
      STAGES, ("conv1", "layer1", "layer2", "layer3", "layer4"))))
  assert np.abs(run.ref).max() > 0.5
  np.testing.assert_allclose(run.logits, run.ref, atol=1e-4 * np.abs(run.ref).max(), rtol=0)
  for ours in STAGES:
    scale = max(1.0, float(np.abs(run.acts[ours]).max()))
    np.testing.assert_allclose(run.sown[ours], run.acts[ours], atol=1e-4 * scale, rtol=1e-4,
                               err_msg=ours)
  assert_exports_back(run.variables, run.model, net, factory, x, run.ref)


@pytest.mark.parametrize("name,arch,kwargs,head", [
    ("Diffenderfer2021Winning_Binary_CARD_Deck", "card_wide_preact_resnet18", {},
     (1, 1, 768, 10)),
    ("Diffenderfer2021Winning_LRR_CARD_Deck", "resnet18", {"base_width": 128}, (1024, 10))])
def test_zoo_reads_the_card_decks_as_softmax_ensembles_of_six(name, arch, kwargs, head):
  robustbench_architecture("CARD_resnet")
  entry = robustbench.zoo_entries("cifar10")["corruptions"][name]
  recipe = robustbench.derive_recipe(name, entry, "cifar10", lambda n: False)
  assert (recipe["arch"], recipe["kwargs"], recipe["softmax_ensemble"]) == (arch, kwargs, 6)
  assert recipe["mean"] == (0.491, 0.482, 0.447) and recipe["std"] == (0.247, 0.243, 0.262)
  with robustbench.weights_on_meta():
    member = entry["model"]().models[0]
  state, _ = sd_lib.clean_state_dict({k: np.broadcast_to(np.float32(0), tuple(v.shape))
                                      for k, v in member.state_dict().items()})
  variables = convert.torch_to_flax(state, models.create_model(arch, num_classes=10, **kwargs),
                                    (32, 32, 3))
  assert variables["params"]["fc"]["kernel"].shape == head
