"""ARD (Goldblum et al. 2020): the student's own PGD examples, distilled towards the teacher's
soft labels on clean inputs:

    loss = alpha * tau^2 * KL(T(x)/tau || S(x_adv)/tau) + (1 - alpha) * CE(S(x), y)

Costs an attack per step (MixACM does not). Takes IGDM (`igdm_alpha`).
"""
from mixacm_jax.objectives import igdm
from mixacm_jax.objectives.common import cross_entropy, kl_divergence, metrics_of
from mixacm_jax.objectives.pgd_at import adversarial_examples


def loss_fn(params, ctx, batch):
  cfg = ctx.cfg
  x_adv = adversarial_examples(params, ctx, batch)
  t_logits, _ = ctx.teacher(batch["image"], ())
  adv, _, batch_stats = ctx.forward(params, ctx.batch_stats, x_adv, True, ())
  kd = cfg.temperature ** 2 * kl_divergence(t_logits, adv, cfg.temperature)
  terms = {"kd": kd}
  loss = cfg.alpha * kd
  if cfg.alpha < 1:
    clean, _, batch_stats = ctx.forward(params, batch_stats, batch["image"], True, ())
    terms["ce"] = cross_entropy(clean, batch["label"])
    loss = loss + (1 - cfg.alpha) * terms["ce"]
  loss, terms, batch_stats = igdm.add(loss, terms, params, ctx, batch["image"], x_adv, adv,
                                      None, batch_stats)
  return loss, (batch_stats, metrics_of(loss, adv, batch["label"], **terms))


def passes(cfg):
  k, clean = cfg.attack.steps, 1 if cfg.alpha < 1 else 0
  base = {"forward": k + 1 + clean, "backward": k + 1 + clean, "teacher_forward": 1}
  return igdm.plus(base, igdm.passes(cfg, teacher_at_adv=False))
