"""FAB, L-inf, L2 and L1 (Croce & Hein, ICML 2020, "Minimally distorted adversarial examples
with a fast adaptive boundary attack"): FAB-T, the targeted version AutoAttack's standard
version runs, and untargeted FAB, which its `plus` version runs.

Each step linearises g = z_t - z_y at the current point (untargeted: for the class t whose
linearised boundary is closest, |g| / ||grad g||_dual smallest), projects onto {g = 0} within the
[0, 1] box with the smallest step in the attack's norm, from the current point (d1) and
from the original (d2), and moves to a convex combination of the two (weight of d2:
a1 / (a1 + a2), at most alpha_max), overshooting by eta. Once a point is adversarial the
search steps back towards the original by beta, keeping the smallest perturbation found.
A point counts as broken when that perturbation is within eps. A random start (the
original's restarts after the first) begins at x + eps / 2 times noise of unit norm.
Under L1 the projection fills the coordinates of largest |grad g| first, and the closest
boundary is measured with the dual L-inf norm of the gradient.
"""
import functools
from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp

from mixacm_jax.attacks import loop, targets
from mixacm_jax.attacks.pgd import check_labels, flat_norm, project, unit_noise
from mixacm_jax.runtime import parallel


def project_hyperplane(w: jnp.ndarray, c: jnp.ndarray, lo: jnp.ndarray, hi: jnp.ndarray,
                       norm: str = "linf") -> jnp.ndarray:
  """Per example, the delta of smallest L-inf, L2 or L1 (`_l1_fill`) norm with
  <w, delta> = c and lo <= delta <= hi (flattened (N, D) arrays; lo <= 0 <= hi). When the
  box cannot reach c, the box corner that gets closest.

  The optimum moves each coordinate towards sign(c w_i) as d_i = min(r u_i, cap_i), with
  u_i = 1 (L-inf) or |w_i| (L2, the KKT condition d = clip(lambda w)); <w, d> grows piecewise
  linearly in r, so sorting the breakpoints cap_i / u_i gives r exactly."""
  s = jnp.sign(c)[:, None] * jnp.sign(w)          # direction of each coordinate
  cap = jnp.where(s > 0, hi, -lo)                 # how far each coordinate can move
  a = jnp.abs(w)
  if norm == "l1":
    return s * _l1_fill(a, cap, jnp.abs(c))
  if norm == "linf":
    u = jnp.ones_like(a)
  elif norm == "l2":
    u = a
  else:
    raise ValueError(f"unknown norm {norm!r}; known: linf, l2, l1")
  t = jnp.where(u > 0, cap / jnp.where(u > 0, u, 1.0), jnp.inf)  # r at which i saturates
  order = jnp.argsort(t, axis=1)
  t_s, a_s, u_s, cap_s = (jnp.take_along_axis(v, order, 1) for v in (t, a, u, cap))
  # reach(t_k) = sum_{j<=k} a_j cap_j + t_k * sum_{j>k} a_j u_j: what r = t_k achieves.
  below = jnp.cumsum(a_s * cap_s, axis=1)
  above = jnp.sum(a_s * u_s, axis=1, keepdims=True) - jnp.cumsum(a_s * u_s, axis=1)
  reach = below + jnp.where(above > 0, t_s * above, 0.0)
  target = jnp.abs(c)[:, None]
  k = jnp.argmax(reach >= target, axis=1)        # first breakpoint that reaches |c|
  feasible = below[:, -1] >= target[:, 0]
  s_low = jnp.take_along_axis(below - a_s * cap_s, k[:, None], 1)[:, 0]
  slope = jnp.take_along_axis(above + a_s * u_s, k[:, None], 1)[:, 0]
  r = (target[:, 0] - s_low) / jnp.maximum(slope, 1e-12)
  r = jnp.where(feasible, r, jnp.inf)
  return s * jnp.minimum(jnp.where(u > 0, r[:, None] * u, 0.0), cap)


def _l1_fill(a: jnp.ndarray, cap: jnp.ndarray, target: jnp.ndarray) -> jnp.ndarray:
  """L1's optimum of `project_hyperplane` (magnitudes): per unit of L1 norm the coordinates
  of largest |w_i| = a_i reach furthest, so they go to their caps in that order and the one
  that reaches |c| only part way (the original's `projection_l1`); where the box cannot
  reach |c|, every coordinate with a_i > 0 goes to its cap."""
  order = jnp.argsort(-a, axis=1)
  a_s, cap_s = (jnp.take_along_axis(v, order, 1) for v in (a, cap))
  gain = jnp.cumsum(a_s * cap_s, axis=1)
  k = jnp.argmax(gain >= target[:, None], axis=1)[:, None]
  before = jnp.take_along_axis(gain - a_s * cap_s, k, 1)
  part = (target[:, None] - before) / jnp.maximum(jnp.take_along_axis(a_s, k, 1), 1e-12)
  rank = jnp.arange(a.shape[1])[None]
  d = jnp.where(rank < k, cap_s, jnp.where(rank == k, part, 0.0))
  d = jnp.where((gain[:, -1] >= target)[:, None], d, jnp.where(a_s > 0, cap_s, 0.0))
  return jnp.take_along_axis(d, jnp.argsort(order, axis=1), 1)


class FabConsts(NamedTuple):
  """FAB's arrays for one run, the loop's `consts`.

  logits_fn: the model, `logits_fn(x) -> (N, K)` logits, a `jax.tree_util.Partial`.
  x: (N, ...) clean inputs in [0, 1].
  y: (N,) int true labels.
  y_target: (N,) int target classes (the boundary z_t = z_y is sought), or None: untargeted,
    the closest linearised boundary of any class.
  eps: () radius within which a point counts as broken, in x's dtype.
  key: the random start's key, (2,) or (N, 2) per example; None without a random start.
  """
  logits_fn: Callable
  x: jnp.ndarray
  y: jnp.ndarray
  y_target: Optional[jnp.ndarray]
  eps: jnp.ndarray
  key: Optional[jax.Array] = None


class FabState(NamedTuple):
  """FAB's loop state, on flattened inputs (D = the size of one example).

  cur: (N, D) the current point.
  best: (N, D) the adversarial point of smallest perturbation found (x until one is).
  best_norm: (N,) its distance to x in the attack's norm (inf until one is found).
  """
  cur: jnp.ndarray
  best: jnp.ndarray
  best_norm: jnp.ndarray


def _towards_target(c: FabConsts, v: jnp.ndarray, norm: str):
  """(g, grad g) at v, g = z_t - z_y per example: the boundary with the target class."""
  del norm
  def g(v):
    z = c.logits_fn(v)
    per = (jnp.take_along_axis(z, c.y_target[:, None], 1)
           - jnp.take_along_axis(z, c.y[:, None], 1))
    return jnp.sum(per), per[:, 0]
  (_, gap), grad = jax.value_and_grad(g, has_aux=True)(v)
  return gap, grad


def _closest_boundary(c: FabConsts, v: jnp.ndarray, norm: str):
  """(g, grad g) at v for the class k != y whose linearised boundary z_k = z_y is closest in
  the attack's norm: |z_k - z_y| / ||grad(z_k - z_y)||_dual smallest (the original's choice,
  from the full Jacobian of the logits)."""
  z, vjp = jax.vjp(c.logits_fn, v)
  num_classes = z.shape[-1]
  onehot = jnp.eye(num_classes, dtype=z.dtype)
  # One class at a time (lax.map): the memory of one backward pass, not K.
  jac = jax.lax.map(lambda e: vjp(jnp.broadcast_to(e, z.shape))[0], onehot)  # (K, N, ...)
  jac = jnp.moveaxis(jac, 0, 1).reshape(z.shape[0], num_classes, -1)        # (N, K, D)
  rows = jnp.arange(z.shape[0])
  df = z - z[rows, c.y][:, None]
  dg = jac - jac[rows, c.y][:, None]
  df = df.at[rows, c.y].set(1e10)
  dual = {"linf": lambda: jnp.sum(jnp.abs(dg), -1), "l2": lambda: jnp.sqrt(jnp.sum(dg * dg, -1)),
          "l1": lambda: jnp.max(jnp.abs(dg), -1)}[norm]()
  k = jnp.argmin(jnp.abs(df) / (1e-12 + dual), axis=1)
  return df[rows, k], dg[rows, k].reshape(v.shape)


def _random_start(c: FabConsts, norm: str) -> jnp.ndarray:
  """x + eps / 2 times noise of unit norm (uniform for L-inf, Gaussian for L2), clipped."""
  return jnp.clip(c.x + 0.5 * c.eps * unit_noise(c.key, c.x, norm), 0.0, 1.0)


@functools.lru_cache(maxsize=None)
def _program(norm: str, alpha_max: float, eta: float, beta: float, targeted: bool = True,
             random_start: bool = False):
  """FAB's loop program for these static settings."""
  linearise = _towards_target if targeted else _closest_boundary

  def init(c: FabConsts) -> FabState:
    x0 = c.x.reshape(c.x.shape[0], -1)
    cur = _random_start(c, norm).reshape(x0.shape) if random_start else x0
    return FabState(cur, x0, jnp.full((x0.shape[0],), jnp.inf, x0.dtype))

  def step(i, s: FabState, c: FabConsts) -> FabState:
    del i
    x, y, logits_fn = c.x, c.y, c.logits_fn
    x0 = x.reshape(x.shape[0], -1)
    cur, best, best_norm = s
    gap, grad = linearise(c, cur.reshape(x.shape), norm)
    w = grad.reshape(x0.shape)
    d1 = project_hyperplane(w, -gap, -cur, 1.0 - cur, norm)
    d2 = project_hyperplane(w, -gap - jnp.sum(w * (x0 - cur), 1), -x0, 1.0 - x0, norm)
    a1, a2 = flat_norm(d1, norm)[:, None], flat_norm(d2, norm)[:, None]
    alpha = jnp.clip(a1 / jnp.maximum(a1 + a2, 1e-12), 0.0, alpha_max)
    new = jnp.clip((cur + eta * d1) * (1 - alpha) + (x0 + eta * d2) * alpha, 0.0, 1.0)
    adv = jnp.argmax(logits_fn(new.reshape(x.shape)), -1) != y
    size = flat_norm(new - x0, norm)
    better = adv & (size < best_norm)
    best = jnp.where(better[:, None], new, best)
    best_norm = jnp.where(better, size, best_norm)
    cur = jnp.where(adv[:, None], (1 - beta) * x0 + beta * new, new)
    return FabState(cur, best, best_norm)

  def finish(s: FabState, c: FabConsts):
    x, eps = c.x, c.eps
    _, best, best_norm = s
    x_adv = project(best.reshape(x.shape), x, eps, norm)
    fooled = (best_norm <= eps) & (jnp.argmax(c.logits_fn(x_adv), -1) != c.y)
    x_adv = jnp.where(parallel.per_example(fooled, x), x_adv, x)
    return jax.lax.stop_gradient(x_adv), fooled

  return loop.Program(init, step, finish)


def fab(logits_fn, x: jnp.ndarray, y: jnp.ndarray, y_target: jnp.ndarray, *, eps: float,
        n_iter: int = 100, alpha_max: float = 0.1, eta: float = 1.05, beta: float = 0.9,
        norm: str = "linf"):
  """Targeted FAB towards `y_target`; returns (x_adv, fooled) with ||x_adv - x|| <= eps."""
  check_labels("fab", x, y, y_target)
  consts = FabConsts(logits_fn=loop.as_partial(logits_fn), x=x, y=y, y_target=y_target,
                     eps=jnp.asarray(eps, x.dtype))
  return loop.run(_program(norm, float(alpha_max), float(eta), float(beta)), n_iter, consts)


def fab_untargeted(logits_fn, x, y, key, *, eps: float, n_iter: int = 100,
                   norm: str = "linf", random_start: bool = False, alpha_max: float = 0.1,
                   eta: float = 1.05, beta: float = 0.9):
  """Untargeted FAB (AutoAttack's `plus` version): each step towards the closest linearised
  boundary of any class; returns (x_adv, fooled) with ||x_adv - x|| <= eps. Starts at x, or
  with `random_start` (the original's restarts after the first) from a random point drawn
  with `key`."""
  check_labels("fab_untargeted", x, y)
  consts = FabConsts(logits_fn=loop.as_partial(logits_fn), x=x, y=y, y_target=None,
                     eps=jnp.asarray(eps, x.dtype), key=key if random_start else None)
  program = _program(norm, float(alpha_max), float(eta), float(beta), targeted=False,
                     random_start=bool(random_start))
  return loop.run(program, n_iter, consts)


def fab_targeted(logits_fn, x, y, key, *, eps: float, n_iter: int = 100,
                 n_target_classes: int = 9, norm: str = "linf", target_rank=None):
  """FAB-T: FAB towards the 2nd, 3rd, ... most likely classes at the clean input (or only
  towards `target_rank`). The first (in AutoAttack's standard version the only) restart
  starts at x, so no randomness is used."""
  check_labels("fab_targeted", x, y)
  attack_one = lambda y_target, _: fab(logits_fn, x, y, y_target, eps=eps, n_iter=n_iter,
                                       norm=norm)
  return targets.over_targets(attack_one, logits_fn, x, y, key,
                              n_target_classes=n_target_classes, target_rank=target_rank)
