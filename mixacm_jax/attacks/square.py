"""Square attack, L-inf (Andriushchenko et al., ECCV 2020): score-based random search.

Start from vertical stripes of +-eps; each query adds, per example, a square of side
s = round(sqrt(p * H * W)) at a random position with a random +-2 eps per channel, projects,
and keeps it if the margin loss fell. p follows the paper's schedule (rescaled to the query
budget). Examples stop being queried once misclassified (a `while_loop` ends when all are).
"""
import jax
import jax.numpy as jnp

from mixacm_jax.attacks.pgd import margin_loss, project

# Query fractions (of 10,000) after which p is halved again, as in the paper's schedule.
_P_BOUNDARIES = jnp.array([10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000])


def p_selection(p_init: float, i: jnp.ndarray, n_queries: int) -> jnp.ndarray:
  it = jnp.floor(i / n_queries * 10000)
  return p_init / 2.0 ** jnp.sum(it > _P_BOUNDARIES)


def square(logits_fn, x: jnp.ndarray, y: jnp.ndarray, key: jax.Array, *, eps: float,
           n_queries: int = 5000, p_init: float = 0.8):
  """Returns (x_adv, fooled). `x` is NHWC in [0, 1]."""
  n, h, w, c = x.shape
  k_init, k_loop = jax.random.split(key)
  stripes = jax.random.choice(k_init, jnp.array([-eps, eps], x.dtype), (n, 1, w, c))
  x_best = jnp.clip(x + stripes, 0.0, 1.0)
  margin = -margin_loss(logits_fn(x_best), y)  # > 0: still correctly classified

  def cond(s):
    i, _, margin = s
    return (i < n_queries) & jnp.any(margin > 0)

  def body(s):
    i, x_best, margin = s
    k1, k2, k3 = jax.random.split(jax.random.fold_in(k_loop, i), 3)
    p = p_selection(p_init, i, n_queries)
    side = jnp.clip(jnp.round(jnp.sqrt(p * h * w)), 1, min(h, w)).astype(jnp.int32)
    top = jax.random.randint(k1, (n, 1, 1, 1), 0, h - side + 1)
    left = jax.random.randint(k2, (n, 1, 1, 1), 0, w - side + 1)
    rows = jnp.arange(h).reshape(1, h, 1, 1)
    cols = jnp.arange(w).reshape(1, 1, w, 1)
    inside = (rows >= top) & (rows < top + side) & (cols >= left) & (cols < left + side)
    signs = jax.random.choice(k3, jnp.array([-2 * eps, 2 * eps], x.dtype), (n, 1, 1, c))
    x_new = project(jnp.where(inside, x_best + signs, x_best), x, eps, "linf")
    new_margin = -margin_loss(logits_fn(x_new), y)
    better = (new_margin < margin) & (margin > 0)
    x_best = jnp.where(better.reshape(n, 1, 1, 1), x_new, x_best)
    return i + 1, x_best, jnp.where(better, new_margin, margin)

  _, x_best, margin = jax.lax.while_loop(cond, body, (jnp.array(0), x_best, margin))
  return jax.lax.stop_gradient(x_best), margin <= 0
