"""ResNeSt against RobustBench's own `resnest.py`, with few blocks: the port's logits and
stage activations, the export back to PyTorch, and the zoo reader on the full
ResNest152 built on the meta device."""
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch==2.13.0 is in requirements.txt; the port "
                                            "tests compare against PyTorch")

from mixacm_jax import models  # noqa: E402
from mixacm_jax.port import convert  # noqa: E402
from tools import robustbench_zoo as robustbench  # noqa: E402
from conftest import assert_exports_back, port_and_run, robustbench_architecture  # noqa: E402

STAGES = {"stem": "bn1", **{f"stage{i}": f"layer{i}" for i in range(1, 5)}}


# variant -> (the reference's arguments besides Bottleneck and its stages, the fields the zoo
# reader must find besides the stages, the image side).
VARIANTS = {
    # ResNest152's every choice: a deep stem, radix 4, avd after the split-attention, avg_down.
    "resnest152": (dict(radix=4, deep_stem=True, stem_width=64, avg_down=True, avd=True,
                        swish=True), {}, 32),
    # A plain stem (3x3, padding 3), radix 1 (sigmoid), the stride on the 3x3, ReLU.
    "plain": (dict(radix=1, groups=1, swish=False),
              dict(radix=1, deep_stem=False, avg_down=False, avd=False, activation="relu"), 32),
    # Two groups of half width, radix 2, avd first, avg_down in ceil mode on odd sides.
    "grouped": (dict(radix=2, groups=2, bottleneck_width=32, deep_stem=True, stem_width=16,
                     avg_down=True, avd=True, avd_first=True, swish=True),
                dict(radix=2, groups=2, bottleneck_width=32, stem_width=16, avd_first=True), 30),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_logits_stages_and_export_match_robustbenchs_resnest(variant):
  rb = robustbench_architecture("resnest")
  kwargs, fields, side = VARIANTS[variant]
  layers = [1, 2, 1, 1]
  factory = lambda: rb.ResNest(rb.Bottleneck, layers, num_classes=10, **kwargs)
  torch.manual_seed(len(variant))
  net = robustbench.randomise_batchnorm(factory(), seed=len(variant))
  with torch.no_grad():  # the default head gives logits too small to test
    net.fc.weight.normal_(0, 4 * net.fc.in_features ** -0.5,
                          generator=torch.Generator().manual_seed(2))
  arch, found = robustbench.registered_architecture(*robustbench._resnest(net))
  assert (arch, found) == ("resnest", {"stage_sizes": tuple(layers), **fields})
  x = torch.rand(2, 3, side, side, generator=torch.Generator().manual_seed(3))
  run = port_and_run(net, arch, found, x, STAGES)
  assert np.abs(run.ref).max() > 0.5  # random weights that do not vanish on the way
  np.testing.assert_allclose(run.logits, run.ref, atol=1e-4 * np.abs(run.ref).max(), rtol=0)
  # The stem's hook sees bn1's output, before the activation the Flax model sows after.
  run.acts["stem"] = net.relu(torch.from_numpy(run.acts["stem"])).numpy()
  for ours in STAGES:
    scale = max(1.0, float(np.abs(run.acts[ours]).max()))
    np.testing.assert_allclose(run.sown[ours], run.acts[ours], atol=1e-4 * scale, rtol=1e-4)
  if variant == "grouped":  # training: batch statistics in every BatchNorm, as PyTorch's
    x4 = torch.rand(4, 3, side, side, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
      ref_train = _copy_of(factory, net).train()(x4).numpy()
    out, _ = run.model.apply(run.variables, jnp.asarray(x4.numpy().transpose(0, 2, 3, 1)),
                             train=True, mutable=["batch_stats"])
    np.testing.assert_allclose(np.asarray(out), ref_train, atol=1e-3, rtol=1e-3)
  assert_exports_back(run.variables, run.model, net, factory, x, run.ref)


def _copy_of(factory, net):
  """A fresh module with `net`'s weights (a train-mode call updates its statistics)."""
  fresh = factory()
  fresh.load_state_dict(net.state_dict())
  return fresh


def test_zoo_reads_sehwags_resnest152():
  """RobustBench's Sehwag2021Proxy_ResNest152 as the zoo builds it, on the meta device: the
  recipe names resnest152 with no kwargs and no normalisation, and every tensor of the full
  network maps onto the Flax model with its shape."""
  rb = robustbench_architecture("resnest")
  with robustbench.weights_on_meta():
    net = rb.ResNest152()
  assert robustbench.registered_architecture(*robustbench._resnest(net)) == ("resnest152", {})
  recipe = robustbench.derive_recipe("Sehwag2021Proxy_ResNest152",
                                     {"model": rb.ResNest152, "gdrive_id": "-"}, "cifar10",
                                     lambda name: False)
  assert recipe["arch"] == "resnest152" and recipe["kwargs"] == {}
  assert recipe["mean"] is None and recipe["std"] is None and recipe["num_classes"] == 10
  shapes = {k: np.broadcast_to(np.float32(0), tuple(v.shape))
            for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
  model = models.create_model("resnest152", num_classes=10)
  variables = convert.torch_to_flax(shapes, model, (32, 32, 3))
  conv2 = variables["params"]["layer3_35"]["conv2"]
  assert conv2["conv"]["kernel"].shape == (3, 3, 256 // 4, 1024)  # 4 groups of 64 inputs
  assert conv2["fc1"]["kernel"].shape == (1, 1, 256, 256)  # max(256 * 4 / 4, 32)
  assert variables["params"]["layer2_0"]["downsample_conv"]["kernel"].shape == (1, 1, 256, 512)


def test_a_dilated_resnest_is_refused_though_its_weights_would_fit():
  """dilation=2 leaves layer4 at stride 1 (a stride-1 avd pool, the same weight shapes), which
  the Flax model does not build: the reader says so instead of porting it."""
  rb = robustbench_architecture("resnest")
  net = rb.ResNest(rb.Bottleneck, [1, 1, 1, 1], radix=2, avd=True, dilation=2)
  with pytest.raises(robustbench.Unsupported, match="dilated stages"):
    robustbench._resnest(net)
