"""Standard training: cross-entropy on clean inputs."""
from mixacm_jax.objectives.common import cross_entropy, metrics_of


def loss_fn(params, ctx, batch):
  logits, _, new_batch_stats = ctx.forward(params, ctx.batch_stats, batch["image"], True, ())
  loss = cross_entropy(logits, batch["label"])
  return loss, (new_batch_stats, metrics_of(loss, logits, batch["label"], ce=loss))


def passes(cfg):
  del cfg
  return {"forward": 1, "backward": 1, "teacher_forward": 0}
