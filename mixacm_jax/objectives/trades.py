"""TRADES (Zhang et al. 2019): CE(clean) + beta * KL(p(clean) || p(adv)).

The inner maximisation follows the reference code: start at x + 0.001 * N(0, 1), take
sign-gradient steps on the KL in eval mode, project to the eps-ball and [0, 1].
"""
import jax
import jax.numpy as jnp

from mixacm_jax.attacks.pgd import project
from mixacm_jax.objectives.common import cross_entropy, kl_divergence, metrics_of


def _kl_per_example(p_logits, q_logits):
  log_p = jax.nn.log_softmax(p_logits)
  return jnp.sum(jnp.exp(log_p) * (log_p - jax.nn.log_softmax(q_logits)), -1)


def adversarial_examples(params, ctx, batch):
  a = ctx.cfg.attack
  logits_fn = ctx.eval_logits_fn(jax.lax.stop_gradient(params))
  x = batch["image"]
  clean = jax.lax.stop_gradient(logits_fn(x))
  noise = jax.vmap(lambda k, v: jax.random.normal(k, v.shape, v.dtype))(
      ctx.example_keys(x.shape[0]), x)
  x_adv = project(x + 0.001 * noise, x, a.eps, a.norm)

  def body(_, x_adv):
    g = jax.grad(lambda v: jnp.sum(_kl_per_example(clean, logits_fn(v))))(x_adv)
    return project(x_adv + a.step_size * jnp.sign(g), x, a.eps, a.norm)

  return jax.lax.stop_gradient(jax.lax.fori_loop(0, a.steps, body, x_adv))


def loss_fn(params, ctx, batch):
  x_adv = adversarial_examples(params, ctx, batch)
  # Two train-mode passes, as in the reference code: BatchNorm statistics update twice.
  clean, _, batch_stats = ctx.forward(params, ctx.batch_stats, batch["image"], True, ())
  adv, _, batch_stats = ctx.forward(params, batch_stats, x_adv, True, ())
  ce = cross_entropy(clean, batch["label"])
  robust = kl_divergence(clean, adv)
  loss = ce + ctx.cfg.trades_beta * robust
  return loss, (batch_stats, metrics_of(loss, clean, batch["label"], ce=ce, kl=robust))
