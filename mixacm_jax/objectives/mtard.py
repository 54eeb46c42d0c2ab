"""MTARD (Zhao et al., ECCV 2022, "Enhanced accuracy and robustness via multi-teacher
adversarial distillation"): a clean teacher for the student's clean outputs and a robust one
for its adversarial outputs, their weights balanced by how much each loss has fallen,

    L_adv = KL(T_rob(x_adv) || S(x_adv)),  L_nat = KL(T_clean(x) || S(x)),
    r = L / L_first_step,  w_nat <- w_nat - lr_w (w_nat - r_nat / (r_nat + r_adv)),
    loss = (1 - w_nat) L_adv + w_nat L_nat,

with x_adv from PGD on the student's cross-entropy and the weights updated before they are
used, without gradient, as in the authors' code (zhaoshiji123/MTARD, mtard_loss.py; w_nat
starts at 0.5, lr_w 0.025). The loss ratios are global-batch means, so the balance is the
same on 1 or N devices. The code decays lr_w with the learning rate; here it is constant.
The robust teacher is `config.teacher`, the clean one `config.clean_teacher`.
"""
import jax
import jax.numpy as jnp

from mixacm_jax.errors import ConfigError
from mixacm_jax.objectives import pgd_at
from mixacm_jax.objectives.common import kl_divergence, metrics_of
from mixacm_jax.runtime import parallel


def check_settings(cfg) -> None:
  if not (0.0 <= cfg.initial_w_nat <= 1.0 and 0.0 <= cfg.lr_w <= 1.0):
    raise ConfigError("objective.mtard needs initial_w_nat and lr_w in [0, 1], got "
                      f"{cfg.initial_w_nat}, {cfg.lr_w}")


def init_state(cfg):
  """w_nat and the first step's two losses (0: not seen yet)."""
  return {"w_nat": jnp.asarray(cfg.initial_w_nat, jnp.float32),
          "first_nat": jnp.zeros((), jnp.float32), "first_adv": jnp.zeros((), jnp.float32)}


def balance(state, l_nat, l_adv, lr_w):
  """The state after one step of the loss balance, from this step's global losses."""
  first = state["first_nat"] == 0
  first_nat = jnp.where(first, l_nat, state["first_nat"])
  first_adv = jnp.where(first, l_adv, state["first_adv"])
  r_nat, r_adv = l_nat / first_nat, l_adv / first_adv
  w_nat = state["w_nat"] - lr_w * (state["w_nat"] - r_nat / (r_nat + r_adv))
  return {"w_nat": w_nat, "first_nat": first_nat, "first_adv": first_adv}


def loss_fn(params, ctx, batch):
  x = batch["image"]
  x_adv = pgd_at.adversarial_examples(params, ctx, batch)
  t_adv, _ = ctx.teacher(x_adv, ())
  t_nat, _ = ctx.teachers["clean_teacher"](x, ())
  s_adv, _, batch_stats = ctx.forward(params, ctx.batch_stats, x_adv, True, ())
  s_nat, _, batch_stats = ctx.forward(params, batch_stats, x, True, ())
  l_adv, l_nat = kl_divergence(t_adv, s_adv), kl_divergence(t_nat, s_nat)
  seen = jax.lax.pmean(jax.lax.stop_gradient((l_nat, l_adv)), parallel.AXIS)
  state = balance(ctx.state, *seen, ctx.cfg.lr_w)
  loss = (1.0 - state["w_nat"]) * l_adv + state["w_nat"] * l_nat
  metrics = metrics_of(loss, s_adv, batch["label"], kl_adv=l_adv, kl_clean=l_nat,
                       w_nat=state["w_nat"])
  return loss, (batch_stats, metrics, state)


def passes(cfg):
  k = cfg.attack.steps
  return {"forward": k + 2, "backward": k + 2, "teacher_forward": 2}
