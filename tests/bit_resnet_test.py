"""BiT's ResNetV2 in Flax against RobustBench's own `bit_rn_v2.py` (a tiny one with random
GroupNorm affine parameters and input normalisation): logits, stage activations, the export
back to its state_dict, and the zoo reader (also on BiT-M-R152x2, built on the meta device,
whose parameter names and shapes are checked against the Flax model's without any memory)."""
from flax import traverse_util
import jax
import numpy as np
import pytest

from mixacm_jax import models
from mixacm_jax.port import convert, rules, state_dict

torch = pytest.importorskip("torch", reason="the reference is RobustBench's PyTorch module")
from tools import robustbench_zoo  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position
from conftest import robustbench_architecture  # noqa: E402

TINY = dict(block_units=(1, 1, 1, 1), width_factor=1)
STAGES = ("stem", "stage1", "stage2", "stage3", "stage4", "features")
# CIFAR-10's statistics in place of the file's 0.5s: a per-channel mix-up would show.
MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)


def _tiny_net(seed: int = 0):
  """ResNetV2([1, 1, 1, 1], 1) with 10 classes, GroupNorms off scale 1 / shift 0 and the
  normalisation parameters off 0.5, in eval mode."""
  torch.manual_seed(seed)
  net = robustbench_architecture("bit_rn_v2").ResNetV2([1, 1, 1, 1], 1, head_size=10, zero_head=False, return_features=False)
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for m in net.modules():
      if isinstance(m, torch.nn.GroupNorm):
        m.weight.copy_(1 + 0.2 * torch.randn(m.weight.shape, generator=g))
        m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
    net.mean.copy_(torch.tensor(MEAN).view(3, 1, 1))
    net.std.copy_(torch.tensor(STD).view(3, 1, 1))
  return net.eval()


def _logits_at_scale(net, x, scale: float = 20.0):
  """The 1x1-convolution classifier scaled so that the largest |logit| on x is `scale`."""
  with torch.no_grad():
    factor = scale / float(net(x).abs().max())
    net.head.conv.weight.mul_(factor)
    net.head.conv.bias.mul_(factor)


def _reference(net, x):
  """(logits, {sown name: NHWC activation}) of the PyTorch module, through forward hooks."""
  acts = {}
  modules = {"stem": net.root, "features": net.head.avg,
             **{f"stage{i + 1}": net.body[i] for i in range(4)}}
  hooks = [m.register_forward_hook(
      lambda _m, _i, out, name=name: acts.__setitem__(name, out.detach().numpy()))
           for name, m in modules.items()]
  with torch.no_grad():
    logits = net(x).numpy()
  for h in hooks:
    h.remove()
  acts = {k: (v[:, :, 0, 0] if k == "features" else v.transpose(0, 2, 3, 1))
          for k, v in acts.items()}
  return logits, acts


def _port(net, side):
  state, norm = state_dict.clean_state_dict({k: v.numpy() for k, v in net.state_dict().items()})
  model = models.create_model("bit_resnetv2", num_classes=10, **norm, **TINY)
  return model, convert.torch_to_flax(state, model, (side, side, 3)), norm


# 32 px: each input pixel spread over 4x4 at 128; 64 px: over 2x2.
@pytest.mark.parametrize("side", [32, 64])
def test_tiny_bit_gives_robustbenchs_logits_and_stages(side):
  net = _tiny_net()
  x = torch.rand(2, 3, side, side, generator=torch.Generator().manual_seed(1))
  _logits_at_scale(net, x)
  ref, ref_acts = _reference(net, x)
  model, variables, norm = _port(net, side)
  assert norm == {"mean": pytest.approx(MEAN), "std": pytest.approx(STD)}
  out, acts, _ = models.apply_model(model, variables, x.numpy().transpose(0, 2, 3, 1),
                                    train=False, names=STAGES)
  assert np.abs(ref).max() == pytest.approx(20, rel=1e-3)
  np.testing.assert_allclose(np.asarray(out), ref, atol=1e-4, rtol=0)
  for name in STAGES:  # activations reach 100 here: within 1e-5 of each one's largest
    assert acts[name].shape == ref_acts[name].shape, name
    np.testing.assert_allclose(np.asarray(acts[name]), ref_acts[name], rtol=0,
                               atol=1e-5 * np.abs(ref_acts[name]).max(), err_msg=name)
  assert [acts[f"stage{i}"].shape[1] for i in range(1, 5)] == [32, 16, 8, 4]  # from 128


def test_tiny_bit_exports_its_state_dict():
  net = _tiny_net(seed=3)
  model, variables, _ = _port(net, 32)
  exported = convert.flax_to_torch(variables, model)
  original = {k: v.numpy() for k, v in net.state_dict().items()}
  # The input normalisation travels as the model's mean/std fields, not as weights.
  assert set(exported) == set(original) - {"mean", "std"}
  for k, v in exported.items():
    np.testing.assert_array_equal(v, original[k], err_msg=k)
  fresh = robustbench_architecture("bit_rn_v2").ResNetV2([1, 1, 1, 1], 1, head_size=10)
  missing, unexpected = fresh.load_state_dict(
      {k: torch.from_numpy(v) for k, v in exported.items()}, strict=False)
  assert sorted(missing) == ["mean", "std"] and not unexpected


# Reading the normalisation off parameters that require grad: torch warns, harmlessly.
@pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad")
def test_zoo_reader_names_the_registered_architectures():
  bit = robustbench_architecture("bit_rn_v2")
  with robustbench_zoo.weights_on_meta():
    big = bit.KNOWN_MODELS["BiT-M-R152x2"](head_size=10, zero_head=False,
                                           return_features=False)
  for net, expected in ((big, ("bit_r152x2", {})), (_tiny_net(), ("bit_resnetv2", TINY))):
    _, family = robustbench_zoo._family(net)  # pylint: disable=protected-access
    assert robustbench_zoo.registered_architecture(*family(net)) == expected
  # Its normalisation parameters are data (torch.tensor), real even on the meta device.
  assert robustbench_zoo._buffer_normalisation(big) == {  # pylint: disable=protected-access
      "mean": (0.5,) * 3, "std": (0.5,) * 3}
  # Every R152x2 weight (units 01 to 36) maps to a Flax parameter of its shape, and back.
  model = models.create_model("bit_r152x2", num_classes=10)
  expected = traverse_util.flatten_dict(jax.eval_shape(
      lambda: models.init_variables(model, jax.random.PRNGKey(0), (32, 32, 3))))
  mapped = {}
  for key, value in big.state_dict().items():
    if key in ("mean", "std"):
      continue
    path, array = rules.to_flax(key, np.broadcast_to(np.float32(0), value.shape),
                                rules.BIT_RESNET_V2)
    assert rules.to_torch(path, array, rules.BIT_RESNET_V2)[0] == key
    mapped[path] = array.shape
  assert mapped == {p: v.shape for p, v in expected.items()}
  assert sum(np.prod(s) for s in mapped.values()) > 230e6
