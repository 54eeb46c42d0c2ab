"""Objective pieces against NumPy; TRADES and PGD-AT make examples in the ball."""
import jax
import jax.numpy as jnp
import numpy as np

from configs import default
from mixacm_jax import models, objectives, train
from mixacm_jax.objectives import common, pgd_at, trades


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


def test_adversarial_examples_in_ball_and_raise_the_loss():
  config = default.get_config()
  model = models.create_model("resnet18", num_classes=10, base_width=4, stage_sizes=(1, 1))
  variables = models.init_variables(model, jax.random.PRNGKey(0), (8, 8, 1))
  params = {"model": variables["params"]}
  x = jax.random.uniform(jax.random.PRNGKey(1), (8, 8, 8, 1))
  batch = {"image": x, "label": jnp.arange(8) % 10}
  ctx = _ctx(config.objective, model, variables)
  eps = config.objective.attack.eps
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
