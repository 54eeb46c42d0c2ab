"""FMN, the fast minimum-norm attack (Pintor et al., NeurIPS 2021), L-inf, L2 and L1: it looks for
each point's smallest adversarial perturbation by alternating a normalised gradient step on
the logit difference with an adaptive radius eps_k: shrunk by (1 - gamma_k) (and to the best
norm found) while the point is adversarial, grown by (1 + gamma_k) once one was found and it
is not, and set to the linearised distance to the boundary before any was found. The step
alpha_k and gamma_k decay on a cosine schedule. Deterministic (it starts at x).

Where the [0, 1] box blocks much of the gradient (inputs with many pixels at 0 or 1), the L2
form moves slowly: the radius is set from the full gradient's linearised distance while the
box removes part of each step, as in the authors' algorithm; give it more steps, or use FAB.
"""
import functools
import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from mixacm_jax.attacks import loop
from mixacm_jax.attacks.pgd import check_labels, flat_norm, margin_loss, project
from mixacm_jax.runtime import parallel


class FmnConsts(NamedTuple):
  """FMN's arrays: `logits_fn` (a `Partial`), x (N, ...) in [0, 1], y (N,) int labels."""
  logits_fn: Callable
  x: jnp.ndarray
  y: jnp.ndarray


class FmnState(NamedTuple):
  """delta: (N, ...) the current perturbation; eps: (N,) its radius; best_norm: (N,) the
  smallest adversarial perturbation's norm (inf until one is found); best: (N, ...) that
  adversarial point (x until one is found); found: (N,) bool."""
  delta: jnp.ndarray
  eps: jnp.ndarray
  best_norm: jnp.ndarray
  best: jnp.ndarray
  found: jnp.ndarray


def _keep_best(s: FmnState, c: FmnConsts, delta: jnp.ndarray, adv: jnp.ndarray, norm: str):
  """(best_norm, best) with `delta` taken where adversarial and smaller."""
  size = flat_norm(delta, norm)
  better = adv & (size < s.best_norm)
  return (jnp.where(better, size, s.best_norm),
          jnp.where(parallel.per_example(better, c.x), c.x + delta, s.best))


@functools.lru_cache(maxsize=None)
def _program(norm: str, steps: int, alpha_init: float, alpha_final: float, gamma_init: float,
             gamma_final: float):
  """FMN's loop program for these static settings."""
  dual = {"linf": "l1", "l2": "l2", "l1": "linf"}[norm]

  def init(c: FmnConsts) -> FmnState:
    n = c.x.shape[0]
    return FmnState(jnp.zeros_like(c.x), jnp.zeros((n,), c.x.dtype),
                    jnp.full((n,), jnp.inf, c.x.dtype), c.x, jnp.zeros((n,), bool))

  def step(i, s: FmnState, c: FmnConsts) -> FmnState:
    cosine = (1 + jnp.cos(math.pi * i / steps)) / 2
    alpha = alpha_final + (alpha_init - alpha_final) * cosine
    gamma = gamma_final + (gamma_init - gamma_final) * cosine

    def loss(delta):  # max_{j != y} z_j - z_y: > 0 where adversarial
      logits = c.logits_fn(c.x + delta)
      per = margin_loss(logits, c.y)
      return jnp.sum(per), (per, jnp.argmax(logits, -1) != c.y)
    (_, (per, adv)), grad = jax.value_and_grad(loss, has_aux=True)(s.delta)
    size = flat_norm(s.delta, norm)
    best_norm, best = _keep_best(s, c, s.delta, adv, norm)
    found = s.found | adv
    to_boundary = jnp.abs(per) / jnp.maximum(flat_norm(grad, dual), 1e-12)
    eps = jnp.where(adv, jnp.minimum(s.eps * (1 - gamma), best_norm),
                    jnp.where(found, s.eps * (1 + gamma), size + to_boundary))
    eps = jnp.minimum(eps, flat_norm(jnp.maximum(c.x, 1 - c.x), norm))
    delta = s.delta + alpha * grad / parallel.per_example(jnp.maximum(flat_norm(grad, "l2"), 1e-12),
                                                  grad)
    delta = project(c.x + delta, c.x, eps, norm) - c.x
    return FmnState(delta, eps, best_norm, best, found)

  def finish(s: FmnState, c: FmnConsts):
    # The last iterate too: each step judges the point it starts from.
    adv = jnp.argmax(c.logits_fn(c.x + s.delta), -1) != c.y
    _, best = _keep_best(s, c, s.delta, adv, norm)
    return jax.lax.stop_gradient(best), s.found | adv

  return loop.Program(init, step, finish)


def fmn(logits_fn, x: jnp.ndarray, y: jnp.ndarray, *, norm: str = "linf", steps: int = 100,
        alpha_init: float = 1.0, alpha_final: float = None, gamma_init: float = 0.05,
        gamma_final: float = 0.001):
  """(x_adv, found): per point the adversarial point of smallest `norm` perturbation found
  (x where none was). alpha_final defaults to 1 % of alpha_init, as in the authors' code."""
  check_labels("fmn", x, y)
  if norm not in ("linf", "l2", "l1"):
    raise ValueError(f"unknown norm {norm!r}; known: linf, l2, l1")
  alpha_final = alpha_final or alpha_init / 100
  consts = FmnConsts(loop.as_partial(logits_fn), x, y)
  return loop.run(_program(norm, int(steps), float(alpha_init), float(alpha_final),
                           float(gamma_init), float(gamma_final)), steps, consts)
