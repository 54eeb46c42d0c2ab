"""AdaAD (Huang et al., CVPR 2023, "Boosting accuracy and robustness of student models via
adaptive adversarial distillation"): the inner maximisation asks the teacher at the same point
as the student, so x_adv lies where the two disagree most inside the ball,

    x_adv = argmax_{x' in B(x)} KL(T(x') || S(x')),   from x + 0.001 N(0, 1), sign steps,
    loss  = alpha * KL(T(x_adv) || S(x_adv)) + (1 - alpha) * KL(T(x) || S(x)),

with the student in eval mode during the attack and the input gradient through both models,
as in the authors' code (boyellow/AdaAD, AT_helper.adaad_inner_loss). Its defaults: alpha 1
(the natural term off). KLs are batch means here; the CIFAR-10 script's `KLDivLoss()` also
divides by the number of classes (a constant 1/10 on the loss). Takes IGDM (`igdm_alpha`).
"""
from mixacm_jax.errors import ConfigError
from mixacm_jax.objectives import igdm
from mixacm_jax.objectives.common import kl_adversarial_examples, kl_divergence, metrics_of


def check_settings(cfg) -> None:
  if not 0.0 <= cfg.alpha <= 1.0:
    raise ConfigError(f"objective.adaad.alpha must be in [0, 1], got {cfg.alpha}")


def teacher_logits(ctx):
  return lambda v: ctx.teacher(v, ())[0]


def loss_fn(params, ctx, batch):
  cfg, x = ctx.cfg, batch["image"]
  x_adv = kl_adversarial_examples(params, ctx, x, teacher_logits(ctx))
  t_adv, _ = ctx.teacher(x_adv, ())
  s_adv, _, batch_stats = ctx.forward(params, ctx.batch_stats, x_adv, True, ())
  terms = {"kl_adv": kl_divergence(t_adv, s_adv)}
  loss = cfg.alpha * terms["kl_adv"]
  if cfg.alpha < 1:
    t_nat, _ = ctx.teacher(x, ())
    s_nat, _, batch_stats = ctx.forward(params, batch_stats, x, True, ())
    terms["kl_clean"] = kl_divergence(t_nat, s_nat)
    loss = loss + (1 - cfg.alpha) * terms["kl_clean"]
  loss, terms, batch_stats = igdm.add(loss, terms, params, ctx, x, x_adv, s_adv, t_adv,
                                      batch_stats)
  return loss, (batch_stats, metrics_of(loss, s_adv, batch["label"], **terms))


def passes(cfg):
  k, clean = cfg.attack.steps, 1 if cfg.alpha < 1 else 0
  base = {"forward": k + 1 + clean, "backward": k + 1 + clean,
          "teacher_forward": k + 1 + clean, "teacher_backward": k}
  return igdm.plus(base, igdm.passes(cfg))
