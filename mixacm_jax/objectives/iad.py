"""IAD (Zhu et al., ICLR 2022, "Reliable adversarial distillation with unreliable teachers"),
IAD-I as the authors' code computes it (ZFancy/IAD, IAD-I.py): ARD's distillation plus the
student's introspection, trusted where the teacher is not,

    loss = alpha * tau^2 * KL(T(x)/tau || S(x_adv)/tau)
         + alpha * [progress >= begin] * mean_i (1 - w_i) KL(S(x_i) || S(x_adv_i))
         + (1 - alpha) * CE(S(x), y),         w_i = softmax(T(x_adv_i))[y_i] ** beta,

with x_adv from PGD on the student's cross-entropy (uniform start), w without gradient, and
the gradient flowing through both sides of the introspection KL, as in the code. The code's
defaults: tau 1, alpha 1, beta 0.1, introspection from epoch 60 of 200 (begin 0.3). The code
attacks with the student in train mode; here, as for every attack of this library, in eval
mode. Takes IGDM (`igdm_alpha`).
"""
import jax
import jax.numpy as jnp

from mixacm_jax.errors import ConfigError
from mixacm_jax.objectives import igdm, pgd_at
from mixacm_jax.objectives.common import cross_entropy, kl_per_example, metrics_of


def check_settings(cfg) -> None:
  if not (0.0 <= cfg.begin <= 1.0 and 0.0 <= cfg.alpha <= 1.0):
    raise ConfigError("objective.iad needs begin (a fraction of training) and alpha in [0, 1], "
                      f"got {cfg.begin}, {cfg.alpha}")


def iad_terms(t_nat, t_adv, s_adv, s_nat, labels, cfg):
  """(teacher term, per-example introspection term, CE) from the four logits."""
  kd = cfg.temperature ** 2 * jnp.mean(kl_per_example(t_nat, s_adv, cfg.temperature))
  w = jax.lax.stop_gradient(
      jax.nn.softmax(t_adv)[jnp.arange(labels.shape[0]), labels] ** cfg.beta)
  introspection = (1.0 - w) * kl_per_example(s_nat, s_adv)
  return kd, introspection, cross_entropy(s_nat, labels)


def loss_fn(params, ctx, batch):
  cfg, x, y = ctx.cfg, batch["image"], batch["label"]
  x_adv = pgd_at.adversarial_examples(params, ctx, batch)
  t_nat, _ = ctx.teacher(x, ())
  t_adv, _ = ctx.teacher(x_adv, ())
  s_adv, _, batch_stats = ctx.forward(params, ctx.batch_stats, x_adv, True, ())
  s_nat, _, batch_stats = ctx.forward(params, batch_stats, x, True, ())
  kd, introspection, ce = iad_terms(t_nat, t_adv, s_adv, s_nat, y, cfg)
  on = jnp.asarray(ctx.progress >= cfg.begin, kd.dtype)
  terms = {"kd": kd, "introspection": jnp.mean(introspection), "ce": ce}
  loss = cfg.alpha * (kd + on * terms["introspection"]) + (1 - cfg.alpha) * ce
  loss, terms, batch_stats = igdm.add(loss, terms, params, ctx, x, x_adv, s_adv, t_adv,
                                      batch_stats)
  return loss, (batch_stats, metrics_of(loss, s_adv, y, **terms))


def passes(cfg):
  k = cfg.attack.steps
  base = {"forward": k + 2, "backward": k + 2, "teacher_forward": 2}
  return igdm.plus(base, igdm.passes(cfg))
