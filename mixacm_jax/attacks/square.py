"""Square attack, L-inf, L2 and L1 (Andriushchenko et al., ECCV 2020): score-based random
search.

Each query changes, per example, a square window at a random position and keeps the change
if the margin loss fell; the window's area fraction p follows the paper's schedule: halved
after query 10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000 -- at those query counts, as the
original AutoAttack runs it (`resc_schedule=False`), or at those fractions of 10,000 of the
budget with `rescale_schedule=True` (the Square paper's code default). Examples stop being
queried once misclassified: from Python the batch shrinks to the points still correct (each
query's random draws are per example, so this changes no result), and the search ends when
none is left.

L-inf: start from vertical stripes of +-eps; a query sets the window to +-eps per channel.
L2: start from a grid of "pseudo-Gaussian" bumps (concentric squares weighted 1/k^2, two
halves of opposite sign); a query moves the perturbation mass of a second window and of the
chosen one into a new bump in the chosen window, keeping the total norm at eps.
L1, as the original AutoAttack code's: the same with rings weighted 1/k^4 and L1 masses, each
point projected onto the L1 ball within the box.
"""
import functools
from typing import Callable, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np

from mixacm_jax.attacks import keys, loop
from mixacm_jax.attacks.pgd import (check_labels, l1_project, margin_loss, per_example_norm,
                                    project)
from mixacm_jax.runtime import parallel

# Query fractions (of 10,000) after which p is halved again, as in the paper's schedule.
# NumPy, as every module-level table here: a device array at import would start JAX's backend.
_P_BOUNDARIES = np.array([10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000])


def p_selection(p_init: float, i: jnp.ndarray, n_queries: int,
                rescale: bool = False) -> jnp.ndarray:
  """The window fraction at query `i` (0-based)."""
  it = jnp.floor(i / n_queries * 10000) if rescale else i
  return p_init / 2.0 ** jnp.sum(it > _P_BOUNDARIES)


class SquareConsts(NamedTuple):
  """The Square attack's arrays for one run, the loop's `consts`.

  logits_fn: the model, `logits_fn(x) -> (N, K)` logits, a `jax.tree_util.Partial`.
  x: (N, H, W, C) clean inputs in [0, 1].
  y: (N,) int true labels.
  key: (N, 2) one key per example: each query's draws come from the example's own key, so
    they do not depend on the other points in the batch.
  eps: () radius of the ball, in x's dtype.
  """
  logits_fn: Callable
  x: jnp.ndarray
  y: jnp.ndarray
  key: jax.Array
  eps: jnp.ndarray


class SquareState(NamedTuple):
  """The search's state, per example.

  x_best: (N, H, W, C) the point of lowest margin found so far.
  margin: (N,) z_y - max_{j != y} z_j at x_best: > 0 still correctly classified, <= 0
    fooled (then never queried again).
  """
  x_best: jnp.ndarray
  margin: jnp.ndarray


@functools.lru_cache(maxsize=None)
def _program(norm: str, n_queries: int, p_init: float, rescale: bool,
             original_positions: bool = False):
  """The greedy search's loop program: each query
  `propose(i, x_best)` keeps improvements of the margin for the examples still correctly
  classified; the search ends when none is left."""
  start, propose = _SEARCHES[norm]
  propose = functools.partial(propose, original=original_positions)

  def init(c: SquareConsts) -> SquareState:
    x_init = start(c)
    return SquareState(x_init, -margin_loss(c.logits_fn(x_init), c.y))  # > 0: still correct

  def step(i, s: SquareState, c: SquareConsts) -> SquareState:
    x_best, margin = s
    x_new = propose(i, x_best, c, p_selection(p_init, i, n_queries, rescale))
    new_margin = -margin_loss(c.logits_fn(x_new), c.y)
    better = (new_margin < margin) & (margin > 0)
    x_best = jnp.where(parallel.per_example(better, x_best), x_new, x_best)
    return SquareState(x_best, jnp.where(better, new_margin, margin))

  def settled(s: SquareState, c: SquareConsts):
    # A fooled point (margin <= 0) is never changed again.
    del c
    return s.margin <= 0

  def finish(s: SquareState, c: SquareConsts):
    del c
    return jax.lax.stop_gradient(s.x_best), s.margin <= 0

  return loop.Program(init, step, finish, settled)


def _window(h, w, top, left, side):
  """(N, H, W, 1) mask of the square at (top, left) of size `side` (traced values)."""
  rows = jnp.arange(h).reshape(1, h, 1, 1)
  cols = jnp.arange(w).reshape(1, 1, w, 1)
  return (rows >= top) & (rows < top + side) & (cols >= left) & (cols < left + side)


def _start_draws(c: SquareConsts, salt, count: int):
  """`count` keys per example for the starting point, (N, count, 2)."""
  return jax.vmap(lambda k: jax.random.split(jax.random.fold_in(jax.random.fold_in(k, 0), salt),
                                             count))(c.key)


def _query_draws(c: SquareConsts, i, count: int):
  """`count` keys per example for query `i`, (N, count, 2), each from the example's own key:
  a point's draws do not depend on which other points are still in the batch, so the batch
  can shrink to the points not yet fooled without changing any result."""
  return jax.vmap(lambda k: jax.random.split(jax.random.fold_in(jax.random.fold_in(k, 1), i),
                                             count))(c.key)


def _per_example(keys, j, draw):
  """`draw(key)` for each example with its j-th key, stacked on a leading axis."""
  return jax.vmap(draw)(keys[:, j])


def _start_linf(c: SquareConsts) -> jnp.ndarray:
  x, eps = c.x, c.eps
  _, _, w, ch = x.shape
  stripes = _per_example(_start_draws(c, 0, 1), 0, lambda k: jax.random.choice(
      k, jnp.stack([-eps, eps]).astype(x.dtype), (1, w, ch)))
  return jnp.clip(x + stripes, 0.0, 1.0)


def _position(keys, j, size, side, original: bool):
  """A window's top (or left) coordinate per example, from the j-th keys: uniform over the
  size - side + 1 positions, or, as the original code (and the Square paper's), over all
  but the last (its `random_int(0, h - s)` excludes h - s)."""
  count = jnp.maximum(size - side, 1) if original else size - side + 1
  return _per_example(keys, j, lambda k: jax.random.randint(k, (1, 1, 1), 0, count))


def _propose_linf(i, x_best: jnp.ndarray, c: SquareConsts, p, *, original: bool) -> jnp.ndarray:
  x, eps = c.x, c.eps
  n, h, w, ch = x.shape
  keys = _query_draws(c, i, 3)
  side = jnp.clip(jnp.round(jnp.sqrt(p * h * w)), 1, min(h, w)).astype(jnp.int32)
  top, left = _position(keys, 0, h, side, original), _position(keys, 1, w, side, original)
  signs = _per_example(keys, 2, lambda k: jax.random.choice(
      k, jnp.stack([-2 * eps, 2 * eps]).astype(x.dtype), (1, 1, ch)))
  inside = _window(h, w, top, left, side)
  return project(jnp.where(inside, x_best + signs, x_best), x, eps, "linf")


# H[k] = sum_{m=1}^{k} 1/m^power: the bump's value at ring d of a rectangle with M rings is
# H[M] - H[d] (concentric squares, the k-th weighted 1/k^2 for L2, 1/k^4 for L1).
_H = {norm: np.concatenate([[0.0], np.cumsum(1.0 / np.arange(1, 1025) ** power)]).astype(
    np.float32) for norm, power in (("l2", 2), ("l1", 4))}


def _channel_norm(v, norm: str = "l2"):
  """Each example's and channel's L2 (or L1) norm over the image, (N, 1, 1, C)."""
  if norm == "l1":
    return jnp.sum(jnp.abs(v), axis=(1, 2), keepdims=True)
  return jnp.sqrt(jnp.sum(v * v, axis=(1, 2), keepdims=True))


def _rectangle(i, j, a, b, norm):
  """The normalised pseudo-Gaussian bump on an a x b rectangle at local coordinates (i, j)
  (zero outside); a, b may be traced."""
  ci, cj = a // 2, b // 2
  rings = jnp.maximum(ci, cj) + 1
  d = jnp.maximum(jnp.abs(i - ci), jnp.abs(j - cj))
  inside = (i >= 0) & (i < a) & (j >= 0) & (j < b)
  h = jnp.asarray(_H[norm])
  v = jnp.where(inside, h[rings] - h[jnp.clip(d, 0, rings)], 0.0)
  return v / jnp.maximum(_channel_norm(v, norm), 1e-12)


def bump(h, w, top, left, side, transpose, norm: str = "l2"):
  """(N, H, W, 1) bump of unit L2 (L1) norm and size `side` at (top, left): the top half a
  bump, the bottom half a negative one; transposed where `transpose`."""
  i = jnp.arange(h).reshape(1, h, 1, 1) - top
  j = jnp.arange(w).reshape(1, 1, w, 1) - left
  i, j = jnp.where(transpose, j, i), jnp.where(transpose, i, j)
  half = side // 2
  v = _rectangle(i, j, half, side, norm) - _rectangle(i - half, j, side - half, side, norm)
  return v / jnp.maximum(_channel_norm(v, norm), 1e-12)


def _bump_grid(c: SquareConsts, norm: str) -> jnp.ndarray:
  """A grid of bumps of side h // 5, each with a random sign per example and channel."""
  x = c.x
  _, h, w, ch = x.shape
  s0 = max(h // 5, 1)
  start = (h - 5 * s0) // 2
  delta = jnp.zeros_like(x)
  for b, (top, left) in enumerate((t, l) for t in range(start, h - s0 + 1, s0)
                                  for l in range(start, w - s0 + 1, s0)):
    draws = _start_draws(c, b, 2)
    transpose = _per_example(draws, 0, lambda k: jax.random.bernoulli(k, 0.5, (1, 1, 1)))
    pattern = bump(h, w, top, left, s0, transpose, norm)
    delta = delta + pattern * _per_example(draws, 1, lambda k: jax.random.choice(
        k, jnp.array([-1.0, 1.0], x.dtype), (1, 1, ch)))
  return delta


def _start_l2(c: SquareConsts) -> jnp.ndarray:
  delta = _bump_grid(c, "l2")
  return jnp.clip(c.x + c.eps * delta / (per_example_norm(delta) + 1e-12), 0.0, 1.0)


def _start_l1(c: SquareConsts) -> jnp.ndarray:
  """The grid of L1 bumps, projected onto the L1 ball (just inside it) within the box."""
  return l1_project(c.x + _bump_grid(c, "l1"), c.x, c.eps * (1 - 1e-6))


def _query(i, x_best, c: SquareConsts, p, norm: str, original: bool):
  """A query's two windows of one odd side (from p), the current perturbation, and the new
  content of the first: a signed bump plus the window's own mass, each of unit L2 (L1) norm
  per channel, to be rescaled by the norm's rule."""
  x = c.x
  n, h, w, ch = x.shape
  keys = _query_draws(c, i, 6)
  side = jnp.maximum(jnp.round(jnp.sqrt(p * h * w)), 3).astype(jnp.int32)
  side = jnp.minimum(side + (1 - side % 2), min(h, w) - (1 - min(h, w) % 2))  # odd, fits
  pos = lambda j, size: _position(keys, j, size, side, original)
  top, left = pos(0, h), pos(1, w)
  win1 = _window(h, w, top, left, side)
  win2 = _window(h, w, pos(2, h), pos(3, w), side)
  transpose = _per_example(keys, 4, lambda k: jax.random.bernoulli(k, 0.5, (1, 1, 1)))
  new = bump(h, w, top, left, side, transpose, norm)
  new = new * _per_example(keys, 5, lambda k: jax.random.choice(
      k, jnp.array([-1.0, 1.0], x.dtype), (1, 1, ch)))
  delta = x_best - x
  in1 = jnp.where(win1, delta, 0.0)
  return win1, win2, delta, new + in1 / (_channel_norm(in1, norm) + 1e-12)


def _propose_l2(i, x_best: jnp.ndarray, c: SquareConsts, p, *, original: bool) -> jnp.ndarray:
  x, eps = c.x, c.eps
  ch = x.shape[-1]
  win1, win2, delta, new = _query(i, x_best, c, p, "l2", original)
  # Rescale so the mass of both windows plus what the total budget has left goes here.
  budget = jnp.maximum(eps ** 2 - per_example_norm(delta) ** 2, 0.0) / ch
  target = jnp.sqrt(budget + _channel_norm(jnp.where(win1 | win2, delta, 0.0)) ** 2)
  new = new / (_channel_norm(new) + 1e-12) * target
  delta = jnp.where(win1, new, jnp.where(win2, 0.0, delta))
  return jnp.clip(x + eps * delta / (per_example_norm(delta) + 1e-12), 0.0, 1.0)


def _propose_l1(i, x_best: jnp.ndarray, c: SquareConsts, p, *, original: bool) -> jnp.ndarray:
  """As L2's, with L1 masses (the original's rescaling, times the channel count), then the
  projection onto the L1 ball within the box."""
  x, eps = c.x, c.eps
  ch = x.shape[-1]
  win1, win2, delta, new = _query(i, x_best, c, p, "l1", original)
  room = jnp.maximum(eps - jnp.sum(jnp.abs(delta), axis=(1, 2, 3), keepdims=True), 0.0)
  mass = room / ch + _channel_norm(jnp.where(win1 | win2, delta, 0.0), "l1")
  new = new / (_channel_norm(new, "l1") + 1e-12) * mass * ch
  delta = jnp.where(win1, new, jnp.where(win2, 0.0, delta))
  return l1_project(x + delta, x, eps * (1 - 1e-6))


# norm -> (starting point, proposal of a query)
_SEARCHES = {"linf": (_start_linf, _propose_linf), "l2": (_start_l2, _propose_l2),
             "l1": (_start_l1, _propose_l1)}


def square(logits_fn, x: jnp.ndarray, y: jnp.ndarray, key: jax.Array, *, eps: float,
           n_queries: int = 5000, p_init: float = 0.8, norm: str = "linf",
           rescale_schedule: bool = False, original_positions: bool = False):
  """Returns (x_adv, fooled). `x` is NHWC in [0, 1]. `original_positions`: windows never at
  the last row or column, as the original code places them (see `_position`)."""
  chex.assert_rank(x, 4, custom_message=f"square: x must be NHWC images, got {tuple(x.shape)}")
  check_labels("square", x, y)
  if norm not in _SEARCHES:
    raise ValueError(f"unknown norm {norm!r}; known: {', '.join(_SEARCHES)}")
  consts = SquareConsts(logits_fn=loop.as_partial(logits_fn), x=x, y=y,
                        key=keys.per_example(key, x.shape[0]), eps=jnp.asarray(eps, x.dtype))
  # Each query's draws are per example, so from Python the batch shrinks to the points not
  # yet fooled (as the original queries only those) without changing any result.
  return loop.run(_program(norm, int(n_queries), float(p_init), bool(rescale_schedule),
                           bool(original_positions)),
                  n_queries, consts, per_example=("x", "y", "key"))
