"""TRADES (Zhang et al. 2019): CE(clean) + beta * KL(p(clean) || p(adv)), where x_adv
maximises the KL by sign-gradient steps in eval mode from x + 0.001 N(0, 1) (reference code)."""
import jax

from mixacm_jax.objectives.common import (cross_entropy, kl_adversarial_examples,
                                          kl_divergence, metrics_of)


def adversarial_examples(params, ctx, batch):
  clean = ctx.eval_logits_fn(jax.lax.stop_gradient(params))(batch["image"])
  return kl_adversarial_examples(params, ctx, batch["image"], clean)


def loss_fn(params, ctx, batch):
  x_adv = adversarial_examples(params, ctx, batch)
  # Two train-mode passes, as in the reference code: BatchNorm statistics update twice.
  clean, _, batch_stats = ctx.forward(params, ctx.batch_stats, batch["image"], True, ())
  adv, _, batch_stats = ctx.forward(params, batch_stats, x_adv, True, ())
  ce = cross_entropy(clean, batch["label"])
  robust = kl_divergence(clean, adv)
  loss = ce + ctx.cfg.beta * robust
  return loss, (batch_stats, metrics_of(loss, clean, batch["label"], ce=ce, kl=robust))


def passes(cfg):
  k = cfg.attack.steps  # clean logits + k attack steps + two train-mode passes
  return {"forward": k + 3, "backward": k + 2, "teacher_forward": 0}
