"""RSLAD (Zi et al. 2021): robust soft labels of the teacher in both terms,

    loss = 5/6 * KL(T(x) || S(x_adv)) + 1/6 * KL(T(x) || S(x)),

with x_adv maximising KL(T(x) || S(x_adv)) by sign-gradient steps from x + 0.001 N(0, 1).
Costs an attack per step (MixACM does not). Takes IGDM (`igdm_alpha`).
"""
from mixacm_jax.objectives import igdm
from mixacm_jax.objectives.common import kl_adversarial_examples, kl_divergence, metrics_of


def loss_fn(params, ctx, batch):
  t_logits, _ = ctx.teacher(batch["image"], ())
  x_adv = kl_adversarial_examples(params, ctx, batch["image"], t_logits)
  adv, _, batch_stats = ctx.forward(params, ctx.batch_stats, x_adv, True, ())
  clean, _, batch_stats = ctx.forward(params, batch_stats, batch["image"], True, ())
  robust, natural = kl_divergence(t_logits, adv), kl_divergence(t_logits, clean)
  loss = 5.0 / 6.0 * robust + 1.0 / 6.0 * natural
  loss, terms, batch_stats = igdm.add(loss, {"kl_adv": robust, "kl_clean": natural}, params,
                                      ctx, batch["image"], x_adv, adv, None, batch_stats)
  return loss, (batch_stats, metrics_of(loss, clean, batch["label"], **terms))


def passes(cfg):
  k = cfg.attack.steps
  base = {"forward": k + 2, "backward": k + 2, "teacher_forward": 1}
  return igdm.plus(base, igdm.passes(cfg, teacher_at_adv=False))
