"""Adversarial weight perturbation (Wu et al., NeurIPS 2020, "Adversarial weight perturbation
helps robust generalization"), for any objective: the step's gradient is taken at weights
moved up the objective's own loss, w + v, and applied to w.

    v_l = gamma * ||w_l|| * g_l / (||g_l|| + 1e-20),   g = d loss / d w at w,

for each conv / dense kernel w_l (the reference code perturbs the tensors of more than one
dimension; its proxy's SGD step of 0.01 cancels in the normalisation). The inner
maximisation (x_adv) is the one made at w, as in the reference code, which makes it once and
reuses it; here the objective makes it again for the perturbed pass (the same points: same
weights, same keys), so AWP costs one attack more per step than the reference. BatchNorm
statistics of the proxy pass are discarded; the perturbed pass updates them, as the
reference's does. The reference applies weight decay at w + v; here it applies at w.
"""
import jax
import jax.numpy as jnp
import optax

from mixacm_jax.runtime import parallel


def enabled(awp_cfg) -> bool:
  return bool(awp_cfg and awp_cfg.get("gamma", 0.0))


def perturbation(model_params, grads, gamma):
  """v: each conv / dense kernel's gradient scaled to gamma times the kernel's norm; 0
  elsewhere (biases, norms, position embeddings, attention tables)."""
  def one(path, w, g):
    if getattr(path[-1], "key", None) != "kernel":
      return jnp.zeros_like(w)
    return gamma * optax.tree.norm(w) / (optax.tree.norm(g) + 1e-20) * g
  return jax.tree_util.tree_map_with_path(one, model_params, grads)


def perturbed_params(objective, params, ctx, batch, gamma):
  """w + v. The proxy gradient is averaged over devices, as the one-device reference
  computes it on the global batch; the proxy pass's statistics and state are dropped."""
  grads = jax.grad(lambda p: objective(p, ctx, batch)[0])(params)
  v = perturbation(params["model"], jax.lax.pmean(grads["model"], parallel.AXIS), gamma)
  return {**params, "model": jax.tree.map(jnp.add, params["model"], v)}
