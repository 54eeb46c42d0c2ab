"""PGD adversarial training (Madry et al. 2018): cross-entropy on PGD-k examples.

The attack runs the model in eval mode (as TRADES' reference code does), so making the
examples never touches BatchNorm statistics; the update then runs in train mode.
"""
import jax

from mixacm_jax.attacks.pgd import pgd
from mixacm_jax.objectives.common import cross_entropy, metrics_of


def adversarial_examples(params, ctx, batch, loss: str = "ce"):
  a = ctx.cfg.attack
  return pgd(ctx.eval_logits_fn(jax.lax.stop_gradient(params)), batch["image"], batch["label"],
             ctx.example_keys(batch["label"].shape[0]), eps=a.eps, step_size=a.step_size,
             steps=a.steps, norm=a.norm, loss=loss, random_start=True)[0]


def loss_fn(params, ctx, batch):
  x_adv = adversarial_examples(params, ctx, batch)
  logits, _, new_batch_stats = ctx.forward(params, ctx.batch_stats, x_adv, True, ())
  loss = cross_entropy(logits, batch["label"])
  return loss, (new_batch_stats, metrics_of(loss, logits, batch["label"], ce=loss))


def passes(cfg):
  k = cfg.attack.steps  # each attack step: one forward, one backward to the input
  return {"forward": k + 1, "backward": k + 1, "teacher_forward": 0}
