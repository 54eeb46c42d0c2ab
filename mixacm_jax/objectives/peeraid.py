"""PeerAiD (Jung et al., CVPR 2024, "PeerAiD: improving adversarial distillation from a
specialized peer tutor"): no pretrained teacher; a peer of the student's architecture learns,
beside it and from scratch, to be robust on exactly the student's adversarial examples, and
teaches it. As the authors' code computes it (jaewonalive/PeerAiD, main.train_kd):

    x_adv  maximises KL(P(x) || S(x')) (P's clean logits, eval mode), sign steps from
           x + 0.001 N(0, 1), the student in eval mode;
    peer:    g1 CE(P(x_adv), y) + g2 Tr^2 KLm(S(x_adv)/Tr || P(x_adv)/Tr)
    student: l1 CE(S(x_adv), y) + l2 T^2 KLm(P(x_adv)/T || S(x_adv)/T)
             + l3 T^2 KLm(S(x)/T || S(x_adv)/T),

both minimised together, with KLm(target || input) PyTorch's `KLDivLoss()` default
reduction, the sum over batch and classes divided by both (the per-example KL / classes);
P(x_adv) detached in the student's term, S(x_adv) and S(x) not detached as targets. The peer's
weights are `params["objective"]["peer"]` (the same optimizer as the student's, as in the
code), its BatchNorm statistics `ctx.state["peer_batch_stats"]`. The code's CIFAR-10
settings: T 5, Tr 1, g1 1, g2 0.1, l1 0, l2 1, l3 1.
"""
import jax
import jax.numpy as jnp

from mixacm_jax.objectives.common import (cross_entropy, kl_adversarial_examples,
                                          kl_per_example, metrics_of)


def kl_mean(target_logits, logits, temperature):
  """`KLDivLoss()`'s mean over batch and classes of KL(softmax(target/T) || softmax(logits/T))."""
  return jnp.mean(kl_per_example(target_logits, logits, temperature)) / logits.shape[-1]


def peeraid_losses(p_adv, s_adv, s_adv_again, s_nat, labels, cfg):
  """(the peer's loss, the student's loss) from the logits, the terms as the code has them."""
  tr, t = cfg.peer_temperature, cfg.temperature
  peer = (cfg.gamma1 * cross_entropy(p_adv, labels)
          + cfg.gamma2 * tr ** 2 * kl_mean(s_adv, p_adv, tr))
  student = (cfg.lambda1 * cross_entropy(s_adv_again, labels)
             + cfg.lambda2 * t ** 2 * kl_mean(jax.lax.stop_gradient(p_adv), s_adv_again, t)
             + cfg.lambda3 * t ** 2 * kl_mean(s_nat, s_adv_again, t))
  return peer, student


def loss_fn(params, ctx, batch):
  x, y = batch["image"], batch["label"]
  peer = {"model": params["objective"]["peer"]}
  peer_stats = ctx.state["peer_batch_stats"]
  p_clean = ctx.forward(jax.lax.stop_gradient(peer), peer_stats, x, False, ())[0]
  x_adv = kl_adversarial_examples(params, ctx, x, p_clean)
  p_adv, _, peer_stats = ctx.forward(peer, peer_stats, x_adv, True, ())
  # The student's three train-mode passes, as in the code (each updates BatchNorm).
  s_adv, _, batch_stats = ctx.forward(params, ctx.batch_stats, x_adv, True, ())
  s_adv_again, _, batch_stats = ctx.forward(params, batch_stats, x_adv, True, ())
  s_nat, _, batch_stats = ctx.forward(params, batch_stats, x, True, ())
  peer_loss, student_loss = peeraid_losses(p_adv, s_adv, s_adv_again, s_nat, y, ctx.cfg)
  loss = peer_loss + student_loss
  metrics = metrics_of(loss, s_adv_again, y, peer_loss=peer_loss, student_loss=student_loss,
                       peer_accuracy=jnp.mean(jnp.argmax(p_adv, -1) == y))
  return loss, (batch_stats, metrics, {**ctx.state, "peer_batch_stats": peer_stats})


def passes(cfg):
  """The peer counts as a student of the same size: its clean eval pass, its pass and
  backward on x_adv; the student's attack and three passes."""
  k = cfg.attack.steps
  return {"forward": k + 3 + 2, "backward": k + 3 + 1, "teacher_forward": 0}
