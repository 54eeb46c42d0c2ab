"""The mixed classifiers of RobustBench's zoo against its own modules: MixedNUTS (Bai et al.
2024, NonLinMixedClassifier and its logit maps) and adaptive smoothing (Bai et al. 2023,
CompositeModel with its mixing network). Tiny BiT accurate members and DM WideResNet robust
members with random weights, saved as RobustBench keeps each entry's files, read by the zoo's
recipe and compared on logits and on input gradients (through RobustBench's autograd path)."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import distil_from_zoo, robustbench_architecture
from mixacm_jax.models import mixed_nuts
from mixacm_jax.port import zoo

torch = pytest.importorskip("torch", reason="the reference is RobustBench's PyTorch module")
from tools import robustbench_parity, robustbench_zoo  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position

MAP = dict(scale=5.0, power=4.0, clamp_bias=-1.1)  # RobustBench's CIFAR-10 constants
ALPHA = 0.9


def _mixed_net(seed=0):
  maps, mixing = robustbench_architecture("output_maps"), robustbench_architecture("mixing_net")
  bit, dm = robustbench_architecture("bit_rn_v2"), robustbench_architecture("dm_wide_resnet")
  torch.manual_seed(seed)
  accurate = bit.ResNetV2([1, 1, 1, 1], 1, head_size=10, zero_head=False)
  robust = robustbench_zoo.randomise_batchnorm(
      dm.DMWideResNet(depth=10, width=1, activation_fn=dm.Swish), seed)
  net = mixing.NonLinMixedClassifier(accurate, robust, {
      "std_map": maps.HardMaxMap(), "alpha": ALPHA, "alpha_diffable": ALPHA,
      "rob_map": maps.LNClampPowerScaleMap(ln_k=250, **MAP)})
  net = robustbench_zoo.randomise_initial_constants(net, seed)
  x = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(seed + 1))
  for member in robustbench_parity.ensemble_members(net):
    robustbench_parity.logits_at_scale(member.eval(), x)
  return net.eval(), x


def test_standardised_top_k_and_the_robust_map_match_robustbenchs():
  maps = robustbench_architecture("output_maps")
  logits = np.random.default_rng(0).normal(0, 5, (3, 1000))
  for k in (250, 1000):
    theirs = maps.normalize_topk(torch.tensor(logits), k=k).numpy()
    ours = mixed_nuts.standardize_top_k(jnp.asarray(logits, jnp.float32), k)
    np.testing.assert_allclose(ours, theirs, atol=2e-5)
  theirs = maps.LNClampPowerScaleMap(ln_k=250, **MAP)(torch.tensor(logits[:, :10])).numpy()
  ours = mixed_nuts.clamp_power_scale(
      mixed_nuts.standardize_top_k(jnp.asarray(logits[:, :10], jnp.float32), 250), **MAP)
  np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-4)


def _compare_through_the_zoo(net, x, recipe, tmp_path):
  """Saves `net` in RobustBench's files, loads them by `recipe`; logits and input gradients
  of the true class's output against the module's."""
  path = str(tmp_path / "entry.pt")
  robustbench_parity.save_as_robustbench(net, recipe, path)
  model, variables = zoo.load_files(recipe, zoo.weight_files(recipe, path))
  with torch.no_grad():
    ref = net(x).numpy()
  images = jnp.asarray(x.numpy().transpose(0, 2, 3, 1))
  out = np.asarray(model.apply(variables, images))
  np.testing.assert_allclose(out, ref, atol=1e-4 * max(1.0, np.abs(ref).max()))
  # The parity tool's float64 comparison (for modules chaotic in float32): the same to the
  # float32 rounding of the members' logits (the heads return float32).
  np.testing.assert_allclose(robustbench_parity._flax_float64_logits(model, variables, x),  # pylint: disable=protected-access
                             robustbench_parity.float64_logits(net, x), atol=1e-6)
  labels = np.arange(len(x)) % 10
  x_grad = x.clone().requires_grad_(True)
  net(x_grad)[torch.arange(len(x)), torch.tensor(labels)].sum().backward()
  grad = jax.grad(lambda v: model.apply(variables, v)[jnp.arange(len(x)), labels].sum())(images)
  theirs = x_grad.grad.numpy().transpose(0, 2, 3, 1)
  # As a whole, not element by element: BiT upsamples its input 4x before a max-pool, whose
  # near-ties float32 rounding breaks either way (float64 JAX matches torch to 1e-9 there).
  assert np.linalg.norm(grad - theirs) <= 1e-3 * np.linalg.norm(theirs)


def test_mixed_nuts_loads_robustbenchs_two_files_and_gives_its_logits_and_gradients(tmp_path):
  net, x = _mixed_net()
  recipe = {"arch": "mixed_nuts", **robustbench_zoo._mixed_nuts(net),  # pylint: disable=protected-access
            "mean": None, "std": None, "image_shape": (32, 32, 3), "checkpoint_key": "state_dict"}
  assert [m["arch"] for m in recipe["members"]] == ["bit_resnetv2", "dm_wrn"]
  assert recipe["kwargs"] == pytest.approx(dict(alpha=ALPHA, ln_k=250, **MAP))
  assert recipe["num_classes"] == 10
  with torch.no_grad():  # the members disagree somewhere: the mixing is exercised
    assert (net.std_model(x).argmax(1) != net.rob_model(x).argmax(1)).any()
  _compare_through_the_zoo(net, x, recipe, tmp_path)


def _composite_net(monkeypatch, seed=0):
  """RobustBench's CompositeModel with a tiny BiT (1 unit per stage, width 1) and a DM
  WRN-10-4 in place of BiT-M-R152x2 and WRN-70-16 (the mixing network sized for them), its
  BatchNorms random, in eval mode, the constants of its CIFAR-100 EDM entry."""
  comp = robustbench_architecture("comp_model")
  bit, dm = robustbench_architecture("bit_rn"), robustbench_architecture("dm_rn")
  monkeypatch.setitem(bit.KNOWN_MODELS, "BiT-M-R152x2",
                      lambda **kw: bit.ResNetV2([1, 1, 1, 1], 1, **kw))
  wrn = dm.WideResNet
  monkeypatch.setattr(comp.dm_rn, "WideResNet",
                      lambda **kw: wrn(**{**kw, "depth": 10, "width": 4}))
  torch.manual_seed(seed)
  with robustbench_zoo.cuda_as_cpu():
    model = comp.CompositeModel({
        "std_model_type": "rn152", "rob_model_type": "wrn7016_silu", "in_planes": (256, 64),
        "gamma": 2.5, "use_policy": True, "policy_graph": True, "pn_version": 4,
        "parallel": False, "num_classes": 10})
  model.set_gamma_scale_bias(gamma_scale=2., gamma_bias=1.3)
  model.set_alpha_scale_bias(alpha_scale=.15, alpha_bias=.84)
  model.set_base_model_scale(std_scale=2., rob_scale=1.)
  net = robustbench_zoo.randomise_initial_constants(robustbench_zoo.randomise_batchnorm(
      comp.CompositeModelWrapper(model, parallel=False), seed), seed)
  x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(seed + 1))
  for member, inputs in zip(robustbench_parity.ensemble_members(net),
                            robustbench_parity.member_inputs(net, x)):
    robustbench_parity.logits_at_scale(member, inputs)
  return net.eval(), x


def test_adaptive_smoothing_loads_robustbenchs_three_files_and_gives_its_logits_and_gradients(
    tmp_path, monkeypatch):
  net, x = _composite_net(monkeypatch)
  recipe = {"arch": "adaptive_smoothing", **robustbench_zoo._adaptive_smoothing(net),  # pylint: disable=protected-access
            "mean": None, "std": None, "image_shape": (32, 32, 3), "checkpoint_key": "state_dict"}
  assert [m["arch"] for m in recipe["members"]] == ["bit_resnetv2", "dm_wrn", "mixing_net"]
  assert recipe["members"][0]["kwargs"]["input_side"] == 0 and recipe["num_classes"] == 10
  assert recipe["kwargs"] == pytest.approx(dict(
      accurate_side=128, gamma_scale=2., gamma_bias=1.3, alpha_scale=.15, alpha_bias=.84,
      accurate_scale=2., robust_scale=1.))
  with torch.no_grad():  # the mixing weight varies with the input: the network is exercised
    _, gammas = net.comp_model(x)
    assert float(gammas.std()) > 0.05
  _compare_through_the_zoo(net, x, recipe, tmp_path)


def test_a_mixed_classifier_hands_out_its_members_stages_for_acm():
  """A member sows under its own name: `robust/stage2` is the robust member's stage, usable
  as a teacher stage of MixACM; a name no member sows is one clear error."""
  from mixacm_jax import models  # pylint: disable=g-import-not-at-top
  member = dict(num_classes=10, depth=10, widen_factor=1)
  model = models.create_model("mixed_nuts", num_classes=10, alpha=0.9,
                              accurate=models.create_model("wrn", **member),
                              robust=models.create_model("dm_wrn", **member))
  x = jnp.ones((2, 32, 32, 3)) * 0.5
  variables = models.init_variables(model, jax.random.PRNGKey(0), (32, 32, 3))
  assert "robust/stage2" in models.feature_names(model, (32, 32, 3))
  _, acts, _ = models.apply_model(model, variables, x, train=False, names=("robust/stage2",))
  robust = models.create_model("dm_wrn", **member)
  _, alone, _ = models.apply_model(robust, {k: v["robust"] for k, v in variables.items()}, x,
                                   train=False, names=("stage2",))
  np.testing.assert_array_equal(acts["robust/stage2"], alone["stage2"])
  with pytest.raises(models.ConfigError, match=r"does not sow \['stage2'\].*'robust/stage2'"):
    models.apply_model(model, variables, x, train=False, names=("stage2",))


@pytest.mark.slow
def test_a_mixed_nuts_entry_by_name_teaches_mixacm_on_its_robust_members_stages(
    tmp_path, monkeypatch, tiny_config):
  """Bai2024MixedNUTS by name (its recipe at a tiny size, its two files as RobustBench keeps
  them) as the teacher of two MixACM steps on mock CIFAR-10, ACM on the robust member."""
  from mixacm_jax.port import zoo_recipes_main  # pylint: disable=g-import-not-at-top
  net, _ = _mixed_net()
  name = "Bai2024MixedNUTS"
  recipe = {**zoo_recipes_main.RECIPES["cifar10"]["Linf"][name],
            **robustbench_zoo._mixed_nuts(net)}  # pylint: disable=protected-access
  monkeypatch.setitem(zoo_recipes_main.RECIPES["cifar10"]["Linf"], name, recipe)
  path = zoo.checkpoint_path(name, model_dir=str(tmp_path / "models"))
  (tmp_path / "models" / "cifar10" / "Linf").mkdir(parents=True)
  robustbench_parity.save_as_robustbench(net, recipe, path)
  result = distil_from_zoo(tiny_config, name, str(tmp_path / "models"),
                           ("stage1:robust/stage1", "stage2:robust/stage2"),
                           str(tmp_path / "student"))
  assert result["steps"] == 2 and result["teacher_forward_passes"] > 0
  with open(tmp_path / "student" / "metrics.jsonl") as f:
    logged = [json.loads(line) for line in f if line.strip()]
  acm = [v for row in logged for k, v in row.items() if k.endswith("acm_stage2__robust.stage2")]
  assert acm and all(np.isfinite(acm)) and max(acm) > 0
