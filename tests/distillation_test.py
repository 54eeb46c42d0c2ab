"""The robust distillation methods beside MixACM (IAD, AdaAD, MTARD, SAAD, and IGDM on any of
them): their terms against NumPy transcriptions of the authors' formulas, their inner
maximisations, and the same update on one and two devices."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mixacm_jax import models, objectives
from mixacm_jax.configs import default
from mixacm_jax.data import input_pipeline
from mixacm_jax.errors import ConfigError
from mixacm_jax.objectives import common, iad, igdm, mtard, peeraid, saad
from mixacm_jax.runtime import parallel
from mixacm_jax.training import teacher as teacher_lib, train


def _np_softmax(z):
  e = np.exp(z - z.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def _np_kl(target_logits, logits):
  """Per example: sum_c p_t (log p_t - log p_s), PyTorch's KLDivLoss(log p_s, p_t) summed."""
  p, q = _np_softmax(target_logits), _np_softmax(logits)
  return np.sum(p * (np.log(p) - np.log(q)), -1)


def _logits(seed, n=6, c=5, scale=2.0):
  return scale * np.asarray(jax.random.normal(jax.random.PRNGKey(seed), (n, c)), np.float64)


def test_iad_terms_match_the_authors_formula():
  t_nat, t_adv, s_adv, s_nat = (_logits(i) for i in range(4))
  y = np.arange(6) % 5
  cfg = default.objectives().iad
  cfg.temperature, cfg.beta = 2.0, 0.1
  kd, intro, ce = iad.iad_terms(*(jnp.asarray(v, jnp.float32) for v in (t_nat, t_adv, s_adv,
                                                                        s_nat)), y, cfg)
  w = _np_softmax(t_adv)[np.arange(6), y] ** 0.1
  np.testing.assert_allclose(kd, 4.0 * np.mean(_np_kl(t_nat / 2.0, s_adv / 2.0)), rtol=1e-5)
  np.testing.assert_allclose(intro, (1 - w) * _np_kl(s_nat, s_adv), rtol=1e-5)
  np.testing.assert_allclose(ce, np.mean(-np.log(_np_softmax(s_nat)[np.arange(6), y])),
                             rtol=1e-5)
  # The introspection's target is not detached (the code's kl_div backpropagates into it).
  g = jax.grad(lambda s: jnp.sum(iad.iad_terms(
      jnp.asarray(t_nat), jnp.asarray(t_adv), jnp.asarray(s_adv), s, y, cfg)[1]))(
          jnp.asarray(s_nat, jnp.float32))
  assert float(jnp.max(jnp.abs(g))) > 1e-3


def test_igdm_is_the_kl_of_the_logit_differences():
  tp, tm, sp, sm = (_logits(i) for i in range(4, 8))
  got = igdm.difference_kl(*(jnp.asarray(v, jnp.float32) for v in (tp, tm, sp, sm)))
  np.testing.assert_allclose(got, _np_kl(tp - tm, sp - sm), rtol=1e-5, atol=1e-7)


def test_mtard_balance_follows_the_authors_update():
  state = mtard.init_state(default.objectives().mtard)
  w, first, lr = 0.5, None, 0.025
  for l_nat, l_adv in [(2.0, 3.0), (1.5, 2.9), (1.0, 2.5), (0.8, 2.6)]:
    state = mtard.balance(state, jnp.float32(l_nat), jnp.float32(l_adv), lr)
    first = first or (l_nat, l_adv)  # the code's first batch's losses
    r_nat, r_adv = l_nat / first[0], l_adv / first[1]
    w = w - lr * (w - r_nat / (r_nat + r_adv))
    np.testing.assert_allclose(state["w_nat"], w, rtol=1e-6)
  assert float(state["w_nat"]) < 0.5  # the clean loss fell faster: its weight shrank


def _in_pmap(fn, *args):
  return jax.pmap(fn, axis_name=parallel.AXIS, devices=jax.devices()[:1])(
      *(jnp.asarray(a)[None] for a in args))


def test_saad_weights_from_the_teachers_entropy():
  t_adv = _logits(9, n=8)
  w, wn = (np.asarray(v[0]) for v in _in_pmap(lambda t: saad.sample_weights(t, 1.0), t_adv))
  p = _np_softmax(t_adv)
  h = -np.sum(p * np.log(p + 1e-12), -1)
  expected = np.maximum(5 * (h - h.min()), 0)
  np.testing.assert_allclose(w, expected, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(wn, (expected - expected.min()) / (expected.max() + 1e-8),
                             rtol=1e-5, atol=1e-6)
  # Renyi of order 2: -log sum p^2.
  np.testing.assert_allclose(saad.renyi_entropy(jnp.asarray(t_adv), 2.0),
                             -np.log(np.sum(p ** 2, -1)), rtol=1e-5)


class _Linear:
  """A linear 'teacher' T(x) = flatten(x) W, whose linearisation is exact."""

  def __init__(self, d, c=10):
    self.w = jax.random.normal(jax.random.PRNGKey(3), (d, c))

  def __call__(self, x, names=()):
    return x.reshape(x.shape[0], -1) @ self.w, {}


def test_saad_linearised_teacher_is_exact_on_the_label_for_a_linear_teacher(tiny_resnet):
  model, variables = tiny_resnet
  x = jax.random.uniform(jax.random.PRNGKey(1), (4, 8, 8, 1))
  y = jnp.array([0, 3, 5, 9])
  cfg = default.objectives().saad
  teacher = _Linear(64)
  ctx = _ctx(model, variables, cfg, teacher)
  target = saad.linearised_teacher(ctx, x, y)
  x2 = x + 0.03 * jax.random.normal(jax.random.PRNGKey(2), x.shape)
  got, exact, at_x = target(x2), teacher(x2)[0], teacher(x)[0]
  rows = jnp.arange(4)
  np.testing.assert_allclose(got[rows, y], exact[rows, y], rtol=1e-4, atol=1e-5)
  others = jnp.where(jax.nn.one_hot(y, 10) > 0, 0.0, got - at_x)
  assert float(jnp.max(jnp.abs(others))) == 0  # the other classes keep T(x)


def _ctx(model, variables, cfg, teacher):
  forward = train.make_forward(model)
  return objectives.ObjectiveContext(
      forward=lambda p, *a: forward(p["model"], *a), batch_stats=variables["batch_stats"],
      rng=jax.random.PRNGKey(0), cfg=cfg, teacher=teacher)


@pytest.mark.parametrize("name", ["adaad", "saad"])
def test_inner_maximisations_raise_the_disagreement_with_the_teacher(tiny_resnet, name):
  model, variables = tiny_resnet
  cfg = default.objectives()[name]
  cfg.attack.steps, cfg.attack.eps, cfg.attack.step_size = 5, 0.2, 0.05
  teacher = _Linear(64)
  ctx = _ctx(model, variables, cfg, teacher)
  x = jax.random.uniform(jax.random.PRNGKey(1), (8, 8, 8, 1))
  y = jnp.arange(8)
  target = (lambda v: teacher(v)[0]) if name == "adaad" else saad.linearised_teacher(ctx, x, y)
  params = {"model": variables["params"]}
  x_adv = common.kl_adversarial_examples(params, ctx, x, target)
  assert float(jnp.max(jnp.abs(x_adv - x))) <= 0.2 + 1e-6
  student = ctx.eval_logits_fn(params)
  kl = lambda v: float(common.kl_divergence(target(v), student(v)))  # what each maximises
  assert kl(x_adv) > kl(x)


@pytest.fixture
def distill_config(mixacm_config, tmp_path):
  """A tiny teacher checkpoint as both the robust and the clean teacher (MTARD)."""
  mixacm_config.clean_teacher = mixacm_config.teacher.copy_and_resolve_references()
  return mixacm_config


def _run(config, name, n_devices, batches, total_steps=4):
  info = input_pipeline.get_info(config.data)
  objective = objectives.get_objective(name)
  teacher = teacher_lib.load_teacher(config.teacher, info.num_classes, info.image_shape)
  extras = teacher_lib.extra_teachers(config, objective, info)
  model = models.create_model_from_config(config.model, info.num_classes)
  state = train.create_train_state(
      model, info.image_shape, config.optim, seed=0, steps_per_epoch=10, total_steps=100,
      objective_params=train.init_objective_params(config.objective, objective, model, teacher,
                                                   info.image_shape, seed=0),
      objective_state=train.init_objective_state(config.objective, objective, model,
                                                 info.image_shape, seed=0))
  devices = jax.devices()[:n_devices]
  variables = teacher.variables
  if extras:
    variables = {"teacher": variables, **{r: t.variables for r, t in extras.items()}}
  step = train.make_p_train_step(config.objective, model, objective, teacher.model,
                                 devices=devices, total_steps=total_steps,
                                 extra_teachers={r: t.model for r, t in extras.items()} or None)
  p_state, p_teachers = (parallel.replicate(state, devices=devices),
                         parallel.replicate(variables, devices=devices))
  for b in batches:
    b = {k: v.reshape((n_devices, -1) + v.shape[2:]) for k, v in b.items()}
    p_state, metrics = step(p_state, b, p_teachers)
  return state, parallel.unreplicate(p_state), parallel.unreplicate(metrics)


# KL-driven sign steps (AdaAD, SAAD, RSLAD) start near a zero gradient, where float rounding
# flips signs between device splits: those run with no attack step (start, passes and every
# term still run), as TRADES does in train_test; the CE-driven ones with two.
@pytest.mark.parametrize("name,steps,igdm_alpha", [
    ("iad", 2, 1.0), ("adaad", 0, 1.0), ("mtard", 2, 0.0), ("saad", 0, 1.0),
    ("ard", 2, 2.0), ("rslad", 0, 2.0), ("peeraid", 0, 0.0)])
def test_one_vs_two_devices_same_update(distill_config, name, steps, igdm_alpha):
  if jax.device_count() < 2:
    pytest.skip("needs 2 devices (set XLA_FLAGS=--xla_force_host_platform_device_count=2)")
  distill_config.objective.name = name
  cfg = distill_config.objective[name]
  cfg.attack.steps = steps
  if "igdm_alpha" in cfg:
    cfg.igdm_alpha = igdm_alpha
  if name == "iad":
    cfg.begin = 0.25  # the introspection joins at the second step
  it = input_pipeline.train_batches(distill_config.data, 16, seed=0)
  batches = [next(it) for _ in range(3)]
  start, one, m1 = _run(distill_config, name, 1, batches)
  _, two, m2 = _run(distill_config, name, 2, batches)
  diffs = jax.tree_util.tree_map(lambda a, b: float(jnp.max(jnp.abs(a - b))),
                                 (one.params, one.batch_stats, one.objective_state),
                                 (two.params, two.batch_stats, two.objective_state))
  assert max(jax.tree_util.tree_leaves(diffs)) < 1e-5
  for k in m1:
    np.testing.assert_allclose(m1[k], m2[k], rtol=1e-4, atol=1e-6, err_msg=k)
  moved = jax.tree_util.tree_map(lambda a, b: float(jnp.max(jnp.abs(a - b))),
                                 start.params["model"], one.params["model"])
  # SAAD's weights scale with the teacher's entropy spread, small for a random teacher.
  assert max(jax.tree_util.tree_leaves(moved)) > (1e-5 if name == "saad" else 1e-3)
  if igdm_alpha and "igdm_alpha" in cfg:
    assert float(m1["igdm"]) > 0
  if name == "iad":
    assert float(m1["introspection"]) > 0
  if name == "mtard":
    assert float(one.objective_state["w_nat"]) != 0.5  # the balance moved
  if name == "peeraid":  # the peer trained too, weights and statistics
    for tree in ("params", "objective_state"):
      peer = getattr(one, tree)["objective" if tree == "params" else "peer_batch_stats"]
      before = getattr(start, tree)["objective" if tree == "params" else "peer_batch_stats"]
      assert max(jax.tree_util.tree_leaves(jax.tree_util.tree_map(
          lambda a, b: float(jnp.max(jnp.abs(a - b))), peer, before))) > 1e-4


def test_mtard_needs_its_clean_teacher_and_counts_both(distill_config, tmp_path):
  distill_config.objective.name = "mtard"
  distill_config.objective.mtard.attack.steps = 1
  distill_config.optim.num_steps = 2
  clean = distill_config.clean_teacher
  distill_config.clean_teacher = default.frozen_model()
  with pytest.raises(ConfigError, match="objective mtard needs clean teacher: set "
                                        r"--config.clean_teacher.checkpoint"):
    train.train_and_evaluate(distill_config, str(tmp_path / "no_clean"))
  distill_config.clean_teacher = clean
  result = train.train_and_evaluate(distill_config, str(tmp_path / "mtard"))
  assert result["teacher_forward_passes"] == 2 * 2 * 32  # the robust and the clean teacher
  assert result["passes_per_example"] == (1 + 2) * 2 + 2
  summary = json.loads((tmp_path / "mtard" / "summary.json").read_text())
  assert summary["epoch_seconds"] > summary["train_seconds"]  # 2 steps of a 35-step epoch


def test_peeraid_losses_match_the_authors_formula():
  p_adv, s_adv, s_nat = (_logits(i, c=10) for i in (11, 12, 13))
  y = np.arange(6)
  cfg = default.objectives().peeraid
  cfg.lambda1 = 0.5  # every term on
  peer, student = peeraid.peeraid_losses(*(jnp.asarray(v, jnp.float32) for v in (
      p_adv, s_adv, s_adv, s_nat)), y, cfg)
  ce = lambda z: np.mean(-np.log(_np_softmax(z)[np.arange(6), y]))
  # KLDivLoss() (reduction 'mean'): the sum over batch and classes over B * C.
  klm = lambda target, z, t: np.sum(_np_kl(target / t, z / t)) / (6 * 10)
  np.testing.assert_allclose(peer, ce(p_adv) + 0.1 * klm(s_adv, p_adv, 1.0), rtol=1e-5)
  np.testing.assert_allclose(student, 0.5 * ce(s_adv) + 25 * klm(p_adv, s_adv, 5.0)
                             + 25 * klm(s_nat, s_adv, 5.0), rtol=1e-5)
  # The peer learns from the student's adversarial outputs, not the other way round.
  g = jax.grad(lambda p: peeraid.peeraid_losses(p, jnp.asarray(s_adv), jnp.asarray(s_adv),
                                                jnp.asarray(s_nat), y, cfg)[1])(
                                                    jnp.asarray(p_adv, jnp.float32))
  assert float(jnp.max(jnp.abs(g))) == 0


def test_passes_count_the_teacher_inside_the_attack():
  cfg = default.objectives()
  cfg.adaad.attack.steps = 10
  cost = objectives.get_objective("adaad").training_cost(cfg, steps=1, batch_size=1)
  # 10 attack steps through both models, then S and T at x_adv.
  assert cost["teacher_forward_passes"] == 11 and cost["teacher_backward_passes"] == 10
  assert cost["passes_per_example"] == 11 + 11 + 11 + 10
  cfg.adaad.igdm_alpha = 1.0  # + S(x - delta) forward and backward, T(x - delta)
  assert objectives.get_objective("adaad").training_cost(
      cfg, steps=1, batch_size=1)["passes_per_example"] == 43 + 3
