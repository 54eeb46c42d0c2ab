"""ConvNeXt V2 (ConvNeXt, version=2) against RobustBench's convnext_v2.py (Meta's code; the
accurate base model of Bai2024MixedNUTS): logits, stage activations, the export in its layout,
and the zoo reader. The pinned wheel's file and the main branch's compute the same function
(they differ in whitespace and in importing timm.layers through its old alias)."""
import jax
import numpy as np
import pytest

from mixacm_jax import models
from mixacm_jax.errors import ConfigError
from mixacm_jax.port import convert

torch = pytest.importorskip("torch", reason="the reference is RobustBench's PyTorch module")
from tools import robustbench_parity, robustbench_zoo  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position
from conftest import robustbench_architecture  # noqa: E402

TINY = dict(depths=(1, 2, 1, 1), dims=(8, 16, 16, 32))
SOWN = ("stem", "stage1", "stage2", "stage3", "stage4", "features")


def _tiny_reference(seed=0):
  """A tiny ConvNeXtV2 with every parameter off its initial constant: GRN's gamma and beta
  (zeros: the block would be the identity plus a plain MLP), LayerNorm affines (1, 0) and
  the biases (0)."""
  torch.manual_seed(seed)
  net = robustbench_zoo.randomise_initial_constants(
      robustbench_architecture("convnext_v2").ConvNeXtV2(num_classes=10, **TINY), seed).eval()
  g = torch.Generator().manual_seed(seed + 1)
  with torch.no_grad():
    for name, p in net.named_parameters():
      if name.endswith(("grn.gamma", "grn.beta")):
        p.copy_((0.5 if name.endswith("gamma") else 0.2) * torch.randn(p.shape, generator=g))
    for m in net.modules():
      if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
        m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
  return net


def _state(net):
  """The state_dict without `mean` / `std`: parameters its forward never uses (RobustBench
  loads the MixedNUTS file, which lacks them, with strict=False)."""
  return {k: v.numpy() for k, v in net.state_dict().items() if k not in ("mean", "std")}


def _sown_by_reference(net, x):
  """NHWC stem, stage outputs and the head's normalised features of the PyTorch module."""
  modules = {"stem": net.downsample_layers[0], "features": net.norm,
             **{f"stage{i + 1}": net.stages[i] for i in range(4)}}
  out = {}
  hooks = [m.register_forward_hook(lambda _, __, y, n=n: out.__setitem__(n, y.detach().numpy()))
           for n, m in modules.items()]
  with torch.no_grad():
    logits = net(x).numpy()
  for h in hooks:
    h.remove()
  return logits, {n: (v.transpose(0, 2, 3, 1) if v.ndim == 4 else v) for n, v in out.items()}


@pytest.mark.parametrize("side", [32, 64])
def test_convnext_v2_gives_robustbenchs_logits_and_exports_its_state_dict(side):
  net = _tiny_reference()
  x = torch.rand(2, 3, side, side, generator=torch.Generator().manual_seed(1))
  robustbench_parity.logits_at_scale(net, x)
  ref, ref_sown = _sown_by_reference(net, x)
  with torch.no_grad():  # its mean / std really are unused: no input normalisation
    net.mean.add_(0.3)
    net.std.mul_(2.0)
    np.testing.assert_array_equal(net(x).numpy(), ref)
  assert np.abs(ref).max() == pytest.approx(20, rel=1e-4)

  state = _state(net)
  model = models.create_model("convnext", num_classes=10, version=2, **TINY)
  variables = convert.torch_to_flax(state, model, (side, side, 3))
  grn = variables["params"]["stage2_1"]["grn"]
  assert grn["gamma"].shape == grn["beta"].shape == (1, 1, 1, 64)
  assert "gamma" not in variables["params"]["stage2_1"]  # no layer scale
  out, sown, _ = models.apply_model(model, variables, x.numpy().transpose(0, 2, 3, 1),
                                    train=False, names=SOWN)
  np.testing.assert_allclose(np.asarray(out), ref, atol=1e-4, rtol=0)
  for name in SOWN:
    want = ref_sown[name]
    np.testing.assert_allclose(np.asarray(sown[name]), want, rtol=0,
                               atol=1e-4 * max(1.0, float(np.abs(want).max())), err_msg=name)

  # The export is the layout of convnext_v2.py, value for value; the module loads it with only
  # its unused mean / std missing (as RobustBench loads the MixedNUTS file).
  exported = convert.flax_to_torch(variables, model)
  assert sorted(exported) == sorted(state)
  for key, value in state.items():
    np.testing.assert_array_equal(exported[key], value, err_msg=key)
  fresh = robustbench_architecture("convnext_v2").ConvNeXtV2(num_classes=10, **TINY).eval()
  result = fresh.load_state_dict({k: torch.from_numpy(v) for k, v in exported.items()},
                                 strict=False)
  assert sorted(result.missing_keys) == ["mean", "std"] and not result.unexpected_keys
  with torch.no_grad():
    np.testing.assert_array_equal(fresh(x).numpy(), ref)


def test_convnext_v1_layout_and_block_are_unchanged_by_the_version_field():
  v1 = models.create_model("convnext", num_classes=10, **TINY)
  variables = models.init_variables(v1, jax.random.PRNGKey(0), (32, 32, 3))
  block = variables["params"]["stage2_1"]
  assert "gamma" in block and "grn" not in block
  assert "stages.1.blocks.1.gamma" in convert.flax_to_torch(variables, v1)


def test_convnext_v2_refuses_stems_and_layers_it_has_no_layout_for():
  for kwargs in (dict(stem="convstem", stem_width=4), dict(mean_sparse=True), dict(version=3)):
    model = models.create_model("convnext", num_classes=10, **{"version": 2, **TINY, **kwargs})
    with pytest.raises(ConfigError, match="version"):
      models.init_variables(model, jax.random.PRNGKey(0), (32, 32, 3))


def test_zoo_reader_names_bai2024_mixednuts_accurate_model_convnextv2_large():
  module = robustbench_architecture("convnext_v2")
  with robustbench_zoo.weights_on_meta():
    large = module.convnextv2_large(num_classes=1000)
    tiny = module.ConvNeXtV2(num_classes=10, **TINY)
  for net, want in ((large, ("convnextv2_large", {})),
                    (tiny, ("convnext", {**TINY, "version": 2}))):
    _, reader = robustbench_zoo._family(net)  # pylint: disable=protected-access
    arch, kwargs = robustbench_zoo.registered_architecture(*reader(net))
    assert (arch, {k: robustbench_zoo.tuple_or(v) for k, v in kwargs.items()}) == want
  model = models.create_model("convnextv2_large", num_classes=1000)
  assert (model.version, tuple(model.depths), tuple(model.dims)) == (
      2, (3, 3, 27, 3), (192, 384, 768, 1536))
