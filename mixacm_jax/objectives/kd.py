"""Knowledge distillation (Hinton et al. 2015) from the frozen teacher, on clean inputs:
w_ce * CE(S(x), y) + w_kd * tau^2 * KL(softmax(T(x)/tau) || softmax(S(x)/tau))."""
import jax.numpy as jnp

from mixacm_jax.objectives.common import accuracy, cross_entropy, distillation_passes, kl_divergence


def loss_fn(params, ctx, batch):
  cfg = ctx.cfg
  x = batch["image"]
  t_logits, _ = ctx.teacher(x, ())
  s_logits, _, batch_stats = ctx.forward(params, ctx.batch_stats, x, True, ())
  ce = cross_entropy(s_logits, batch["label"])
  kd = cfg.temperature ** 2 * kl_divergence(t_logits, s_logits, cfg.temperature)
  loss = cfg.w_ce * ce + cfg.w_kd * kd
  return loss, (batch_stats, {
      "loss": loss, "ce": ce, "kd": kd, "accuracy": accuracy(s_logits, batch["label"]),
      "teacher_agreement": jnp.mean(jnp.argmax(s_logits, -1) == jnp.argmax(t_logits, -1))})


passes = distillation_passes
