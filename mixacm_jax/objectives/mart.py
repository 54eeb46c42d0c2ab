"""MART (Wang et al., ICLR 2020, "Improving adversarial robustness requires revisiting
misclassified examples"): a boosted cross-entropy on PGD examples plus a KL term weighted by
how badly the clean input is classified,

  BCE(p', y) + beta * KL(p || p') * (1 - p_y),  BCE(p', y) = -log p'_y - log(1 - max_{k!=y} p'_k)

with p = softmax(f(x)), p' = softmax(f(x')) and x' from PGD on the cross-entropy (eval mode,
random start in the ball, as the paper describes; the reference code starts at x + 0.001 N(0,
1)). Both train-mode passes update BatchNorm, as in the reference code, whose small constants
(1.0001 - p', 1.0000001 - p_y, 1e-12 inside logs) are kept so that the loss matches it.
"""
import jax
import jax.numpy as jnp

from mixacm_jax.objectives import pgd_at
from mixacm_jax.objectives.common import metrics_of


def mart_terms(clean_logits, adv_logits, labels):
  """(boosted CE per example, KL(p || p') * (1 - p_y) per example)."""
  p, p_adv = jax.nn.softmax(clean_logits), jax.nn.softmax(adv_logits)
  rows = jnp.arange(labels.shape[0])
  wrong = jnp.where(jax.nn.one_hot(labels, p_adv.shape[-1]) > 0, -jnp.inf, p_adv)
  runner_up = jnp.argmax(wrong, -1)  # the most likely wrong class at x'
  bce = (-jax.nn.log_softmax(adv_logits)[rows, labels]
         - jnp.log(1.0001 - p_adv[rows, runner_up] + 1e-12))
  kl = jnp.sum(jax.scipy.special.xlogy(p, p) - p * jnp.log(p_adv + 1e-12), -1)
  return bce, kl * (1.0000001 - p[rows, labels])


def loss_fn(params, ctx, batch):
  x_adv = pgd_at.adversarial_examples(params, ctx, batch)
  clean, _, batch_stats = ctx.forward(params, ctx.batch_stats, batch["image"], True, ())
  adv, _, batch_stats = ctx.forward(params, batch_stats, x_adv, True, ())
  bce, weighted_kl = mart_terms(clean, adv, batch["label"])
  bce, weighted_kl = jnp.mean(bce), jnp.mean(weighted_kl)
  loss = bce + ctx.cfg.beta * weighted_kl
  return loss, (batch_stats, metrics_of(loss, clean, batch["label"], bce=bce, kl=weighted_kl))


def passes(cfg):
  k = cfg.attack.steps  # k attack steps + two train-mode passes
  return {"forward": k + 2, "backward": k + 2, "teacher_forward": 0}
