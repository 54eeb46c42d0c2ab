"""SAAD (Lee and Chung, TMLR 2026, "Sample-wise adaptive weighting for transfer consistency
in adversarial distillation"), as the authors' code computes it (HongsinLee/saad, saad.py,
attacks.saad_inner_loss):

  inner: x_adv maximises KL(T~(x') || S(x')) by sign steps from x + 0.001 N(0, 1), where
         T~(x') = T(x) + e_y * lambda_inner * <grad_x T_y(x), x' - x> (the teacher linearised
         at x: no teacher pass per step);
  outer: w_i = max(5 (H_i - min H), 0), H_i the Renyi entropy (order gamma; 1: Shannon) of
         softmax(T(x_adv_i)), wn = min-max normalised w, and
         loss = mean_i w_i [KL(T(x_adv) || S(x_adv)) + alpha progress IGDM_i]
                + beta (1 - wn_i) KL(T(x) || S(x)),

with IGDM's difference KL at delta = x_adv - x (x - delta unclipped). The minimum and maximum
are over the global batch, so the weights are the same on 1 or N devices. The code's
defaults: lambda_inner 1, gamma 1, igdm_alpha 1 (CIFAR-10), beta 0 (the clean term off).
"""
import jax
import jax.numpy as jnp

from mixacm_jax.objectives import igdm
from mixacm_jax.objectives.common import kl_adversarial_examples, kl_per_example, metrics_of
from mixacm_jax.runtime import parallel


def linearised_teacher(ctx, x, labels):
  """x' -> T(x) + e_y lambda <grad_x T_y(x), x' - x>, per example: one teacher forward and
  one backward (the vector-Jacobian product of the one-hot labels)."""
  t_x, vjp = jax.vjp(lambda v: ctx.teacher(v, ())[0], x)
  one_hot = jax.nn.one_hot(labels, t_x.shape[-1], dtype=t_x.dtype)
  t_x, g = jax.lax.stop_gradient((t_x, vjp(one_hot)[0]))

  def target(x_prime):
    change = jnp.sum((g * (x_prime - x)).reshape(x.shape[0], -1), -1)
    return t_x + ctx.cfg.lambda_inner * change[:, None] * one_hot
  return target


def renyi_entropy(logits, order: float):
  p = jax.nn.softmax(logits)
  if order == 1.0:
    return -jnp.sum(p * jnp.log(p + 1e-12), -1)
  return jnp.log(jnp.sum(p ** order, -1)) / (1.0 - order)


def sample_weights(t_adv, order: float):
  """(w, its min-max normalisation), from the teacher's entropy at x_adv, without gradient."""
  h = jax.lax.stop_gradient(renyi_entropy(t_adv, order))
  w = jnp.maximum(5.0 * (h - jax.lax.pmin(jnp.min(h), parallel.AXIS)), 0.0)
  lo, hi = jax.lax.pmin(jnp.min(w), parallel.AXIS), jax.lax.pmax(jnp.max(w), parallel.AXIS)
  return w, (w - lo) / (hi - lo + 1e-8)


def loss_fn(params, ctx, batch):
  cfg, x, y = ctx.cfg, batch["image"], batch["label"]
  x_adv = kl_adversarial_examples(params, ctx, x, linearised_teacher(ctx, x, y))
  t_adv, _ = ctx.teacher(x_adv, ())
  s_adv, _, batch_stats = ctx.forward(params, ctx.batch_stats, x_adv, True, ())
  igdm_kl, batch_stats = igdm.term(params, ctx, x, x_adv, s_adv, t_adv, batch_stats)
  w, wn = sample_weights(t_adv, cfg.gamma)
  kl_adv = kl_per_example(t_adv, s_adv)
  per_example = w * (kl_adv + igdm.weight(ctx) * igdm_kl)
  terms = {"kl_adv": jnp.mean(kl_adv), "igdm": jnp.mean(igdm_kl), "mean_weight": jnp.mean(w)}
  if cfg.beta:
    t_nat, _ = ctx.teacher(x, ())
    s_nat, _, batch_stats = ctx.forward(params, batch_stats, x, True, ())
    kl_nat = kl_per_example(t_nat, s_nat)
    per_example = per_example + cfg.beta * (1.0 - wn) * kl_nat
    terms["kl_clean"] = jnp.mean(kl_nat)
  loss = jnp.mean(per_example)
  return loss, (batch_stats, metrics_of(loss, s_adv, y, **terms))


def passes(cfg):
  k, clean = cfg.attack.steps, 1 if cfg.beta else 0
  # T(x) and its input gradient once; S at x_adv and x - delta, T there too; the clean pair.
  return {"forward": k + 2 + clean, "backward": k + 2 + clean,
          "teacher_forward": 3 + clean, "teacher_backward": 1}
