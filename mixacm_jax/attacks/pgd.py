"""FGSM and PGD (L-inf, L2 or L1; cross-entropy or margin loss), as pure jittable functions,
and the projections and ascent directions the other attacks share.

`logits_fn(x) -> logits` closes over the model's variables in eval mode, so BatchNorm
statistics never change during an attack. Inputs and outputs live in [0, 1].
"""
from typing import Callable, Optional, Tuple

import chex
import jax
import jax.numpy as jnp
import optax

from mixacm_jax.attacks import keys, loop
from mixacm_jax.runtime import parallel

LogitsFn = Callable[[jnp.ndarray], jnp.ndarray]


def check_labels(attack: str, x: jnp.ndarray, y: jnp.ndarray,
                 y_target: Optional[jnp.ndarray] = None) -> None:
  """Raises AssertionError unless `y` (and `y_target`, when given) holds one integer label
  per example of `x`: shape (N,) for x of shape (N, ...). A float or misaligned y would
  otherwise broadcast or index silently. Static checks of shapes and dtypes (chex), so they
  hold on arrays and inside a jit/pmap trace alike."""
  for name, labels in (("y", y), ("y_target", y_target)):
    if labels is None:
      continue
    msg = (f"{attack}: {name} must be integer labels of shape (N,) for x of shape "
           f"{tuple(x.shape)}, got {getattr(labels, 'dtype', type(labels))} "
           f"{tuple(getattr(labels, 'shape', ()))}")
    chex.assert_rank(labels, 1, custom_message=msg)
    chex.assert_axis_dimension(labels, 0, x.shape[0], custom_message=msg)
    chex.assert_type(labels, int, custom_message=msg)


def margin_loss(logits: jnp.ndarray, labels: jnp.ndarray) -> jnp.ndarray:
  """CW margin: max_{j != y} z_j - z_y, per example (positive = misclassified)."""
  true = jnp.take_along_axis(logits, labels[:, None], axis=1)[:, 0]
  other = jnp.max(jnp.where(jax.nn.one_hot(labels, logits.shape[-1]) > 0, -jnp.inf, logits), -1)
  return other - true


def ce_loss(logits: jnp.ndarray, labels: jnp.ndarray) -> jnp.ndarray:
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


LOSSES = {"ce": ce_loss, "margin": margin_loss}


def per_example_norm(v: jnp.ndarray) -> jnp.ndarray:
  return jnp.sqrt(jnp.sum(jnp.square(v), axis=tuple(range(1, v.ndim)), keepdims=True))


def flat_norm(v: jnp.ndarray, norm: str) -> jnp.ndarray:
  """(N,) each example's L-inf, L2 or L1 norm."""
  v = v.reshape(v.shape[0], -1)
  if norm == "linf":
    return jnp.max(jnp.abs(v), 1)
  if norm == "l1":
    return jnp.sum(jnp.abs(v), 1)
  return jnp.sqrt(jnp.sum(v * v, 1))


NORMS = ("linf", "l2", "l1")
# L1's ascent direction: the signs of the largest `L1_TOPK` of each gradient's entries (by
# magnitude), as APGD-L1's first step (Croce & Hein, ICCV 2021, "Mind the box").
L1_TOPK = 0.2
# Halvings of l1_project's bracket: from the largest |delta| to below float32's resolution.
L1_BISECTIONS = 40


def unit_noise(key: jax.Array, x: jnp.ndarray, norm: str) -> jnp.ndarray:
  """Noise of unit norm per example, x's shape: uniform scaled to unit L-inf norm, or
  Gaussian scaled to unit L2 (L1) norm (APGD's and FAB's random starts). `key`: (2,) or
  (N, 2)."""
  n = x.shape[0]
  if norm == "linf":
    t = keys.sample(key, x, lambda k, shape: jax.random.uniform(k, shape, x.dtype, -1.0, 1.0))
    return t / jnp.max(jnp.abs(t).reshape(n, -1), axis=1).reshape((n,) + (1,) * (x.ndim - 1))
  t = gaussian(key, x)
  size = per_example_norm(t) if norm == "l2" else parallel.per_example(flat_norm(t, norm), x)
  return t / (size + 1e-12)


def gaussian(key: jax.Array, x: jnp.ndarray) -> jnp.ndarray:
  """Standard normal noise of x's shape; `key`: (2,) or (N, 2)."""
  return keys.sample(key, x, lambda k, shape: jax.random.normal(k, shape, x.dtype))


def l1_project(x_adv: jnp.ndarray, x: jnp.ndarray, eps) -> jnp.ndarray:
  """The nearest point (Euclidean) to x_adv in the L1 ball of radius eps around x intersected
  with the [0, 1] box (eps: one radius or one per example, (N,)).

  Each entry of delta = x_adv - x keeps its sign and becomes clip(|delta| - lam, 0, cap), cap
  the box's room in that direction; lam >= 0 is the smallest that brings the L1 norm to eps.
  The norm falls piecewise linearly in lam: bisection brackets lam within float precision
  (L1_BISECTIONS halvings; XLA:CPU sorts slowly, so this beats sorting the breakpoints as the
  original's `L1_projection` does), then the root on the bracket's linear piece is exact."""
  n = x.shape[0]
  d, x0 = (x_adv - x).reshape(n, -1), x.reshape(n, -1)
  a = jnp.abs(d)
  cap = jnp.clip(jnp.where(d >= 0, 1.0 - x0, x0), 0.0, a)
  eps = jnp.broadcast_to(jnp.asarray(eps, x.dtype), (n,))[:, None]
  norm_at = lambda lam: jnp.sum(jnp.clip(a - lam, 0.0, cap), 1, keepdims=True)

  def halve(_, bracket):
    lo, hi = bracket
    mid = (lo + hi) / 2
    over = norm_at(mid) > eps
    return jnp.where(over, mid, lo), jnp.where(over, hi, mid)
  lo, hi = jax.lax.fori_loop(0, L1_BISECTIONS, halve,
                             (jnp.zeros_like(eps), jnp.max(a, 1, keepdims=True)))
  mid = (lo + hi) / 2
  slope = jnp.sum((a - cap < mid) & (a > mid), 1, keepdims=True)  # entries still shrinking
  lam = jnp.clip(lo + (norm_at(lo) - eps) / jnp.maximum(slope, 1), lo, hi)
  lam = jnp.where(jnp.sum(cap, 1, keepdims=True) <= eps, 0.0, lam)
  return x + (jnp.sign(d) * jnp.clip(a - lam, 0.0, cap)).reshape(x.shape)


def project(x_adv: jnp.ndarray, x: jnp.ndarray, eps, norm: str) -> jnp.ndarray:
  """Projects onto the eps-ball around x (eps: one radius, or one per example, (N,)), then
  onto the [0, 1] box; for L1 onto the intersection of both (`l1_project`)."""
  if norm == "l1":
    return l1_project(x_adv, x, eps)
  if jnp.ndim(eps) == 1:
    eps = parallel.per_example(eps, x)
  delta = x_adv - x
  if norm == "linf":
    delta = jnp.clip(delta, -eps, eps)
  elif norm == "l2":
    delta = delta * jnp.minimum(1.0, eps / (per_example_norm(delta) + 1e-12))
  else:
    raise ValueError(f"unknown norm {norm!r}; known: {', '.join(NORMS)}")
  return jnp.clip(x + delta, 0.0, 1.0)


def _random_start(key: jax.Array, x: jnp.ndarray, eps: float, norm: str) -> jnp.ndarray:
  """Uniform in the L-inf ball, or uniform radius along a random L2 (L1) direction. `key` is
  one raw key (2,) or one per example (N, 2); per-example keys keep the noise independent of
  how the batch is split over devices."""
  if keys.is_per_example(key):
    return jax.vmap(lambda k, v: _random_start(k, v[None], eps, norm)[0])(key, x)
  if norm == "linf":
    return jax.random.uniform(key, x.shape, x.dtype, -eps, eps)
  k1, k2 = jax.random.split(key)
  direction = unit_noise(k1, x, norm)
  radius = jax.random.uniform(k2, (x.shape[0],) + (1,) * (x.ndim - 1), x.dtype)
  return direction * radius * eps


def sparse_sign(grad: jnp.ndarray, topk) -> jnp.ndarray:
  """L1's ascent direction: the signs of each example's largest `topk` fraction of entries
  (by magnitude; `topk` one fraction or one per example), scaled to unit L1 norm."""
  n = grad.shape[0]
  g = grad.reshape(n, -1)
  size = g.shape[1]
  ranked = jnp.sort(jnp.abs(g), axis=1)
  at = jnp.clip(((1.0 - jnp.broadcast_to(topk, (n,))) * size).astype(jnp.int32), 0, size - 1)
  kept = jnp.sign(g) * (jnp.abs(g) >= jnp.take_along_axis(ranked, at[:, None], 1))
  return (kept / (jnp.sum(jnp.abs(kept), 1, keepdims=True) + 1e-10)).reshape(grad.shape)


def ascent_direction(grad: jnp.ndarray, norm: str) -> jnp.ndarray:
  if norm == "linf":
    return jnp.sign(grad)
  if norm == "l1":
    return sparse_sign(grad, L1_TOPK)
  return grad / (per_example_norm(grad) + 1e-12)


def input_grad(loss_fn: Callable[[jnp.ndarray], jnp.ndarray], x: jnp.ndarray) -> jnp.ndarray:
  """Gradient of the summed per-example loss w.r.t. the inputs (each example's own gradient)."""
  return jax.grad(lambda v: jnp.sum(loss_fn(v)))(x)


def pgd(logits_fn: LogitsFn, x: jnp.ndarray, y: jnp.ndarray, key: jax.Array, *, eps: float,
        step_size: float, steps: int, norm: str = "linf", loss: str = "ce",
        random_start: bool = True, restarts: int = 1,
        y_target: Optional[jnp.ndarray] = None) -> Tuple[jnp.ndarray, jnp.ndarray]:
  """Projected gradient ascent on `loss` (Madry et al. 2018) from a random start in the ball;
  with `y_target`, descent of the loss of the target classes instead (targeted PGD: towards
  z_t for CE, z_t - max_{j != t} z_j for the margin). With `restarts` > 1, each example keeps
  the first restart that misclassifies it (else the last one). Returns (x_adv, fooled),
  fooled meaning misclassified, as every attack here does (under `jit`, an unused `fooled`
  costs nothing)."""
  check_labels("pgd", x, y, y_target)
  loss_of = LOSSES[loss]
  if y_target is None:
    per_example = lambda v: loss_of(logits_fn(v), y)
  else:
    per_example = lambda v: -loss_of(logits_fn(v), y_target)

  def body(_, x_adv):
    g = input_grad(per_example, x_adv)
    return project(x_adv + step_size * ascent_direction(g, norm), x, eps, norm)

  def one_run(k):
    x_adv = project(x + _random_start(k, x, eps, norm), x, eps, norm) if random_start else x
    return loop.fori(steps, lambda i, v, _: body(i, v), x_adv, None, unroll_short=True)

  if restarts <= 1:
    return _with_fooled(logits_fn, jax.lax.stop_gradient(one_run(key)), y)
  best, fooled = x, jnp.zeros(y.shape, bool)
  for r in range(restarts):
    # Restart 0 uses `key` itself, so it is exactly the single run.
    k_r = key if r == 0 else keys.fold_in(key, r)
    x_r = one_run(k_r)
    newly = (jnp.argmax(logits_fn(x_r), -1) != y) & ~fooled
    keep = newly | (~fooled & (r == restarts - 1))
    best = jnp.where(parallel.per_example(keep, x), x_r, best)
    fooled = fooled | newly
  return jax.lax.stop_gradient(best), fooled


def fgsm(logits_fn: LogitsFn, x: jnp.ndarray, y: jnp.ndarray, *, eps: float,
         norm: str = "linf", loss: str = "ce") -> Tuple[jnp.ndarray, jnp.ndarray]:
  """One step of size eps (Goodfellow et al. 2015); returns (x_adv, fooled)."""
  check_labels("fgsm", x, y)
  g = input_grad(lambda v: LOSSES[loss](logits_fn(v), y), x)
  x_adv = jax.lax.stop_gradient(project(x + eps * ascent_direction(g, norm), x, eps, norm))
  return _with_fooled(logits_fn, x_adv, y)


def _with_fooled(logits_fn: LogitsFn, x_adv: jnp.ndarray, y: jnp.ndarray):
  return x_adv, jnp.argmax(logits_fn(x_adv), -1) != y
