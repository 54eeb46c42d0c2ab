"""IGDM (Lee et al., ICLR 2025, "Indirect gradient distillation module"), an add-on to any
adversarial distillation objective: the student's change of logits across the attack's
perturbation delta = x_adv - x is matched to the teacher's, a stand-in for matching input
gradients,

    alpha * progress * KL(softmax(T(x + d) - T(x - d)) || softmax(S(x + d) - S(x - d)))

with d = delta, progress the fraction of training done (the authors' epoch / epochs ramp) and x - delta
not clipped to [0, 1], as in the authors' code (HongsinLee/saad, igdm.py). Each objective
that takes it has `igdm_alpha` in its settings (0: off).
"""
import jax.numpy as jnp

from mixacm_jax.objectives.common import kl_per_example


def difference_kl(t_plus, t_minus, s_plus, s_minus) -> jnp.ndarray:
  """Per example, KL between the softmaxes of the teacher's and the student's logit
  differences."""
  return kl_per_example(t_plus - t_minus, s_plus - s_minus)


def term(params, ctx, x, x_adv, s_adv, t_adv, batch_stats):
  """(the per-example IGDM KL, unweighted; the BatchNorm statistics after S(x - delta)).
  `s_adv` / `t_adv`: the student's (train mode) and teacher's logits at x_adv (None: the
  base objective did not ask the teacher there)."""
  x_minus = 2.0 * x - x_adv
  if t_adv is None:
    t_adv, _ = ctx.teacher(x_adv, ())
  t_minus, _ = ctx.teacher(x_minus, ())
  s_minus, _, batch_stats = ctx.forward(params, batch_stats, x_minus, True, ())
  return difference_kl(t_adv, t_minus, s_adv, s_minus), batch_stats


def weight(ctx) -> jnp.ndarray:
  return ctx.cfg.igdm_alpha * ctx.progress


def add(loss, terms, params, ctx, x, x_adv, s_adv, t_adv, batch_stats):
  """loss + the weighted IGDM term when `igdm_alpha` > 0: (loss, terms, batch_stats)."""
  if not ctx.cfg.get("igdm_alpha"):
    return loss, terms, batch_stats
  kl, batch_stats = term(params, ctx, x, x_adv, s_adv, t_adv, batch_stats)
  terms = {**terms, "igdm": jnp.mean(kl)}
  return loss + weight(ctx) * terms["igdm"], terms, batch_stats


def passes(cfg, teacher_at_adv: bool = True):
  """IGDM's extra passes: S(x - delta), T(x - delta), and T(x + delta) where the base
  objective does not query the teacher at x_adv."""
  if not cfg.get("igdm_alpha"):
    return {"forward": 0, "backward": 0, "teacher_forward": 0}
  return {"forward": 1, "backward": 1, "teacher_forward": 1 if teacher_at_adv else 2}


def plus(a, b):
  return {k: a.get(k, 0) + b.get(k, 0) for k in {*a, *b}}
