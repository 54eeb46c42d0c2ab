"""Objective pieces against NumPy; TRADES and PGD-AT make examples in the ball."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mixacm_jax import models, objectives
from mixacm_jax.configs import default
from mixacm_jax.objectives import common, pgd_at, trades
from mixacm_jax.training import train


def test_kl_divergence_against_numpy():
  rng = np.random.RandomState(0)
  t, s = rng.randn(5, 7).astype(np.float32), rng.randn(5, 7).astype(np.float32)
  for temp in (1.0, 4.0):
    p = np.exp(t / temp) / np.exp(t / temp).sum(1, keepdims=True)
    q = np.exp(s / temp) / np.exp(s / temp).sum(1, keepdims=True)
    ref = np.mean(np.sum(p * (np.log(p) - np.log(q)), 1))
    np.testing.assert_allclose(common.kl_divergence(t, s, temp), ref, rtol=1e-5)


def _ctx(cfg, model, variables):
  forward = train.make_forward(model)
  return objectives.ObjectiveContext(
      forward=lambda p, *args: forward(p["model"], *args), batch_stats=variables["batch_stats"],
      rng=jax.random.PRNGKey(0), cfg=cfg)


def test_adversarial_examples_in_ball_and_raise_the_loss(tiny_resnet):
  config = default.get_config()
  model, variables = tiny_resnet
  params = {"model": variables["params"]}
  x = jax.random.uniform(jax.random.PRNGKey(1), (8, 8, 8, 1))
  batch = {"image": x, "label": jnp.arange(8) % 10}
  ctx = _ctx(config.objective.pgd_at, model, variables)  # TRADES' attack is the same
  assert config.objective.trades.attack == config.objective.pgd_at.attack
  eps = config.objective.pgd_at.attack.eps
  logits_fn = ctx.eval_logits_fn(params)
  clean_loss = common.cross_entropy(logits_fn(x), batch["label"])
  for x_adv in (pgd_at.adversarial_examples(params, ctx, batch),
                trades.adversarial_examples(params, ctx, batch)):
    assert float(jnp.max(jnp.abs(x_adv - x))) <= eps + 1e-6
    assert float(x_adv.min()) >= 0 and float(x_adv.max()) <= 1
  adv_loss = common.cross_entropy(logits_fn(pgd_at.adversarial_examples(
      params, ctx, batch)), batch["label"])
  assert float(adv_loss) > float(clean_loss)


def test_example_keys_do_not_depend_on_the_device_split():
  ctx = objectives.ObjectiveContext(forward=None, batch_stats=None, rng=jax.random.PRNGKey(3),
                                    cfg=None)
  whole = ctx.example_keys(8)
  halves = [objectives.ObjectiveContext(forward=None, batch_stats=None,
                                        rng=jax.random.PRNGKey(3), cfg=None,
                                        example_offset=o).example_keys(4) for o in (0, 4)]
  np.testing.assert_array_equal(whole, np.concatenate(halves))


def _losses_at_betas(config, name, tiny_resnet):
  """({beta: loss} for beta 0 and 6 on one tiny batch, the metrics at beta 6) of the objective
  `name` whose settings group has a `beta`; its KL term is positive at both."""
  model, variables = tiny_resnet
  params = {"model": variables["params"]}
  batch = {"image": jax.random.uniform(jax.random.PRNGKey(1), (8, 8, 8, 1)),
           "label": jnp.arange(8) % 10}
  objective = objectives.get_objective(name)
  losses = {}
  for beta in (0.0, 6.0):
    config.objective[name].beta = beta
    ctx = _ctx(objective.settings(config.objective), model, variables)
    loss, (_, metrics) = objective.loss_fn(params, ctx, batch)
    losses[beta] = float(loss)
    assert float(metrics["kl"]) > 0
  return losses, metrics


def test_each_method_reads_its_own_settings_group(tiny_resnet):
  """`objective.trades.beta` reaches TRADES' loss and nothing else's; the flat keys of before
  are refused with where they went."""
  from mixacm_jax.errors import ConfigError  # pylint: disable=g-import-not-at-top
  from mixacm_jax.training import pipeline
  config = default.get_config()
  losses, metrics = _losses_at_betas(config, "trades", tiny_resnet)
  assert losses[0.0] == pytest.approx(float(metrics["ce"]), rel=1e-6)
  assert losses[6.0] > losses[0.0]
  # The ARD group's alpha changes ARD's cost (a clean pass when alpha < 1), not TRADES'.
  ard_objective = objectives.get_objective("ard")
  before = ard_objective.passes(ard_objective.settings(config.objective))
  config.objective.ard.alpha = 0.5
  after = ard_objective.passes(ard_objective.settings(config.objective))
  assert after["forward"] == before["forward"] + 1
  del config.objective.kd
  with pytest.raises(ConfigError, match=r"objective.kd \(the settings of objective 'kd'\) is "
                                        "missing"):
    objectives.get_objective("kd").settings(config.objective)
  # Overrides by dotted path (the studies') may not create keys nobody reads.
  with pytest.raises(ConfigError, match="did you mean config.objective.mixacm.w_acm"):
    pipeline.apply_overrides(default.get_config(), {"objective.mixacm.w_acn": 3.0})
  assert pipeline.apply_overrides(default.get_config(), {"objective.mixacm.w_acm": 3.0}
                                  ).objective.mixacm.w_acm == 3.0


def test_fast_at_is_one_fgsm_step_from_a_random_start_and_costs_four_passes(tiny_resnet):
  """Wong et al.'s FGSM-RS: start uniform in the eps-ball, one step of 1.25 eps along the
  sign of the input gradient at the start, projected back; computed here by hand."""
  from mixacm_jax.attacks import pgd as pgd_lib  # pylint: disable=g-import-not-at-top
  from mixacm_jax.objectives import fast_at  # pylint: disable=g-import-not-at-top
  config = default.get_config()
  attack = config.objective.fast_at.attack
  assert (attack.steps, attack.step_size) == (1, pytest.approx(1.25 * attack.eps))
  model, variables = tiny_resnet
  params = {"model": variables["params"]}
  x = jax.random.uniform(jax.random.PRNGKey(1), (8, 8, 8, 1), minval=0.3, maxval=0.7)
  batch = {"image": x, "label": jnp.arange(8) % 10}
  ctx = _ctx(config.objective.fast_at, model, variables)
  x_adv = fast_at.adversarial_examples(params, ctx, batch)
  eps = attack.eps
  assert float(jnp.max(jnp.abs(x_adv - x))) <= eps + 1e-6
  # By hand: the same per-example keys give the same uniform start.
  keys = ctx.example_keys(8)
  start = x + jax.vmap(lambda k, v: jax.random.uniform(k, v.shape, v.dtype, -eps, eps))(keys, x)
  assert float(jnp.max(jnp.abs(start - x))) <= eps  # the start is inside the ball
  logits_fn = ctx.eval_logits_fn(params)
  grad = jax.grad(lambda v: jnp.sum(pgd_lib.ce_loss(logits_fn(v), batch["label"])))(start)
  by_hand = jnp.clip(jnp.clip(start + 1.25 * eps * jnp.sign(grad) - x, -eps, eps) + x, 0, 1)
  np.testing.assert_allclose(x_adv, by_hand, atol=1e-6)
  # Not the plain FGSM from x: the random start matters.
  assert float(jnp.max(jnp.abs(x_adv - jnp.clip(x + eps * jnp.sign(grad), 0, 1)))) > 1e-3
  objective = objectives.get_objective("fast_at")
  per = objective.passes(objective.settings(config.objective))
  assert per == {"forward": 2, "backward": 2, "teacher_forward": 0}
  cost = objective.training_cost(config.objective, steps=10, batch_size=4)
  assert cost["passes_per_example"] == 4 and cost["student_forward_passes"] == 80


def test_mixup_only_is_the_cross_entropy_on_mixed_inputs_without_a_teacher(tiny_resnet):
  """The control of MixACM: one lambda ~ Beta(alpha, alpha) and a partner per example, the CE
  against both labels weighted by lambda (NumPy here), two passes per example-step, no
  teacher; alpha = 0 is natural training."""
  from mixacm_jax.objectives import mixup, natural  # pylint: disable=g-import-not-at-top
  from mixacm_jax.runtime import parallel  # pylint: disable=g-import-not-at-top
  config = default.get_config()
  model, variables = tiny_resnet
  params = {"model": variables["params"]}
  batch = {"image": jax.random.uniform(jax.random.PRNGKey(1), (8, 8, 8, 1)),
           "label": jnp.arange(8) % 10}
  objective = objectives.get_objective("mixup")
  assert not objective.needs_teacher
  assert objective.passes(objective.settings(config.objective)) == {
      "forward": 1, "backward": 1, "teacher_forward": 0}
  ctx = _ctx(config.objective.mixup, model, variables)
  # Under a named axis of one device, as the pmapped train step runs it.
  run = lambda fn: jax.vmap(lambda b: fn(params, ctx, b)[0], axis_name=parallel.AXIS)(
      jax.tree_util.tree_map(lambda v: v[None], batch))[0]
  loss = run(objective.loss_fn)
  x, partner, lam = jax.vmap(lambda b: mixup.mix_batch(b, jax.random.fold_in(ctx.rng, 1), 1.0),
                             axis_name=parallel.AXIS)(jax.tree_util.tree_map(
                                 lambda v: v[None], batch))
  lam = float(lam[0, 0])
  assert 0.0 < lam < 1.0
  logits = np.asarray(ctx.forward(params, ctx.batch_stats, x[0], True, ())[0], np.float64)
  log_p = logits - np.log(np.exp(logits).sum(1, keepdims=True))
  labels = np.asarray(batch["label"])
  ref = np.mean(-lam * log_p[np.arange(8), labels]
                - (1 - lam) * log_p[np.arange(8), np.asarray(partner[0])])
  np.testing.assert_allclose(float(loss), ref, rtol=1e-5)
  config.objective.mixup.alpha = 0.0
  ctx = _ctx(config.objective.mixup, model, variables)
  np.testing.assert_allclose(run(objective.loss_fn), run(natural.loss_fn), rtol=1e-6)


def _numpy_mart(clean, adv, y, beta):
  """MART's loss from the paper's formula, in float64 NumPy: BCE(p', y) + beta *
  KL(p || p') (1 - p_y), with the reference code's constants."""
  soft = lambda z: np.exp(z - z.max(1, keepdims=True)) / np.exp(
      z - z.max(1, keepdims=True)).sum(1, keepdims=True)
  p, q = soft(clean.astype(np.float64)), soft(adv.astype(np.float64))
  rows = np.arange(len(y))
  others = q.copy()
  others[rows, y] = -1.0
  bce = -np.log(q[rows, y]) - np.log(1.0001 - others.max(1) + 1e-12)
  kl = (p * (np.log(p) - np.log(q + 1e-12))).sum(1) * (1.0000001 - p[rows, y])
  return bce.mean() + beta * kl.mean()


def test_mart_loss_matches_numpy_and_its_passes(tiny_resnet):
  """MART's terms against a NumPy transcription of the paper's formula, on logits where the
  runner-up class at x' differs between examples; then its loss_fn on a tiny model: the same
  formula on the logits it trained on, and beta 0 leaves the boosted CE alone."""
  from mixacm_jax.objectives import mart  # pylint: disable=g-import-not-at-top
  rng = np.random.RandomState(0)
  clean, adv = (rng.randn(16, 10) * 3).astype(np.float32), (rng.randn(16, 10) * 3).astype(
      np.float32)
  y = rng.randint(0, 10, 16)
  bce, kl = mart.mart_terms(jnp.asarray(clean), jnp.asarray(adv), jnp.asarray(y))
  for beta in (0.0, 6.0):
    np.testing.assert_allclose(float(jnp.mean(bce) + beta * jnp.mean(kl)),
                               _numpy_mart(clean, adv, y, beta), rtol=1e-5)
  config = default.get_config()
  objective = objectives.get_objective("mart")
  losses, metrics = _losses_at_betas(config, "mart", tiny_resnet)
  assert losses[0.0] == pytest.approx(float(metrics["bce"]), rel=1e-6)
  assert losses[6.0] == pytest.approx(losses[0.0] + 6.0 * float(metrics["kl"]), rel=1e-5)
  k = config.objective.mart.attack.steps
  assert objective.passes(objective.settings(config.objective)) == {
      "forward": k + 2, "backward": k + 2, "teacher_forward": 0}
