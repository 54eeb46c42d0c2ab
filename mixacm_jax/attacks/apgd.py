"""APGD (Croce & Hein, ICML 2020): PGD with momentum and a step size that halves, restarting
from the best point, when progress stalls; with the CE, DLR and targeted DLR losses.

Checkpoints (of the iteration count N): the first after 0.22 N steps, then each 0.03 N
shorter, never under 0.06 N. At a checkpoint an example's step halves (and it restarts from
its best point) when the loss rose in at most rho = 75 % of the steps since the last one, or
when the step did not halve at the last checkpoint and the best loss has not improved since.
Step 0 is a plain step of 2 eps (signed for L-inf, along the unit gradient for L2); later
steps mix the new point with momentum 0.75. With `eot_iter` > 1 (AutoAttack's `rand`
version, for randomized models) loss and gradient are averaged over that many draws of the
model's randomness: `logits_fn(x, rng=key)`.

L1 (Croce & Hein, ICCV 2021, "Mind the box"), as the original code: no momentum; each step
of size eps (at most) goes along the signs of the top `topk` fraction of the gradient's
entries (20 % at first) and is projected onto the L1 ball intersected with the box. Every
4 % of the iterations, `topk` becomes the best point's sparsity / 1.5; where that sparsity
fell by over 5 %, the step returns to eps and the point to the best one, elsewhere the step
shrinks by 1.5 (never under eps / 10). With `use_largereps`, the iterations are split 30 /
30 / 40 % over radii 3, 2 and 1 eps, each phase starting from the previous one's best point
(only the last phase's radius counts).
"""
import functools
import math
from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from mixacm_jax.attacks import keys, loop, targets
from mixacm_jax.attacks.pgd import (ascent_direction, ce_loss, check_labels, gaussian,
                                    l1_project, project, sparse_sign, unit_noise)
from mixacm_jax.runtime import parallel


def _sorted_desc(logits):
  return -jnp.sort(-logits, axis=-1)


def dlr_loss(logits: jnp.ndarray, y: jnp.ndarray) -> jnp.ndarray:
  """-(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3), per example (shift/scale invariant)."""
  z = _sorted_desc(logits)
  z_y = jnp.take_along_axis(logits, y[:, None], 1)[:, 0]
  top_is_y = jnp.argmax(logits, -1) == y
  z_other = jnp.where(top_is_y, z[:, 1], z[:, 0])
  return -(z_y - z_other) / (z[:, 0] - z[:, 2] + 1e-12)


def dlr_loss_targeted(logits: jnp.ndarray, y: jnp.ndarray, y_target: jnp.ndarray) -> jnp.ndarray:
  """-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2), per example; with 3 classes, where there
  is no z_pi4, z_pi3 stands for it."""
  z = _sorted_desc(logits)
  pick = lambda c: jnp.take_along_axis(logits, c[:, None], 1)[:, 0]
  z4 = z[:, 3] if z.shape[-1] > 3 else z[:, 2]
  return -(pick(y) - pick(y_target)) / (z[:, 0] - 0.5 * (z[:, 2] + z4) + 1e-12)


def eot_value_and_grad(one_draw: Callable, v: jnp.ndarray, rngs: jax.Array):
  """Expectation over transformation: the mean per-example loss and input gradient over the
  model's random draws `rngs` (one per draw); the logits of the last draw decide success."""
  def add(acc, rng):
    per, logits, g = one_draw(v, rng)
    return (acc[0] + per / len(rngs), logits, acc[2] + g / len(rngs)), None
  zeros = jax.tree_util.tree_map(lambda a: jnp.zeros(a.shape, a.dtype),
                                 jax.eval_shape(one_draw, v, rngs[0]))
  return jax.lax.scan(add, zeros, rngs)[0]


def checkpoints(n_iter: int):
  """The iterations (0-based, inclusive) at which step sizes are checked."""
  out = []
  k, k_min = max(int(0.22 * n_iter), 1), max(int(0.06 * n_iter), 1)
  decr = max(int(0.03 * n_iter), 1)
  i = k - 1
  while i < n_iter:
    out.append((i, k))
    k = max(k - decr, k_min)
    i += k
  return out


LOSSES = {
    "ce": lambda logits, y, y_target: ce_loss(logits, y),
    "dlr": lambda logits, y, y_target: dlr_loss(logits, y),
    "dlr_targeted": dlr_loss_targeted,
}


class ApgdConsts(NamedTuple):
  """APGD's arrays for one run, the loop's `consts` (static settings are in `_program`).

  logits_fn: the model, `logits_fn(x) -> (N, K)` logits (with EOT `logits_fn(x, rng=key)`),
    a `jax.tree_util.Partial` so that its variables are leaves, not constants.
  x: (N, ...) clean inputs in [0, 1].
  y: (N,) int true labels.
  y_target: (N,) int target classes of the targeted DLR loss, or None.
  key: the run's randomness, one raw key (2,) or one per example (N, 2) (see `keys`).
  eps: () radius of the ball, in x's dtype.
  x_init: (N, ...) the starting points (L1's large-radius phases), or None: a random start.
  """
  logits_fn: Callable
  x: jnp.ndarray
  y: jnp.ndarray
  y_target: Optional[jnp.ndarray]
  key: jax.Array
  eps: jnp.ndarray
  x_init: Optional[jnp.ndarray] = None


class ApgdState(NamedTuple):
  """APGD's loop state: every field has the examples on its leading axis (N).

  x_adv: (N, ...) the current point.
  x_old: (N, ...) the previous point (momentum).
  grad: (N, ...) the loss gradient at x_adv.
  x_best: (N, ...) the highest-loss point so far, where a reduced step restarts.
  grad_best: (N, ...) the loss gradient at x_best.
  loss_best: (N,) the loss at x_best.
  x_found: (N, ...) the first misclassified point found (the last with `as_original`).
  fooled: (N,) bool, whether a misclassified point was found.
  step: (N, 1, ...) the step size, 2 eps at first, halved at some checkpoints.
  prev_loss: (N,) the loss of the previous step (rises are counted).
  increases: (N,) int32 steps since the last checkpoint whose loss rose.
  reduced_last: (N,) bool, whether the step was halved at the last checkpoint.
  loss_best_last: (N,) loss_best at the last checkpoint.
  topk: (N,) L1 only: the fraction of entries each step moves.
  sparsity: (N,) L1 only: entries x_best changed, at the last checkpoint.
  """
  x_adv: jnp.ndarray
  x_old: jnp.ndarray
  grad: jnp.ndarray
  x_best: jnp.ndarray
  grad_best: jnp.ndarray
  loss_best: jnp.ndarray
  x_found: jnp.ndarray
  fooled: jnp.ndarray
  step: jnp.ndarray
  prev_loss: jnp.ndarray
  increases: jnp.ndarray
  reduced_last: jnp.ndarray
  loss_best_last: jnp.ndarray
  topk: jnp.ndarray
  sparsity: jnp.ndarray


def _value_and_grad(loss_of: Callable, eot_iter: int, c: ApgdConsts, v: jnp.ndarray, i):
  """(per-example loss, logits, input gradient) at `v` in step `i`; with `eot_iter` > 1,
  loss and gradient averaged over that many draws of the model's randomness."""
  def one_draw(v, rng):
    def total(v):
      logits = c.logits_fn(v) if rng is None else c.logits_fn(v, rng=rng)
      per = loss_of(logits, c.y, c.y_target)
      return jnp.sum(per), (per, logits)
    (_, (per, logits)), g = jax.value_and_grad(total, has_aux=True)(v)
    return per, logits, g
  if eot_iter <= 1:
    return one_draw(v, None)
  # The run itself starts from `key`, as without EOT.
  rngs = jax.random.split(jax.random.fold_in(jax.random.fold_in(
      keys.shared(c.key), 0x5EED), i), eot_iter)
  return eot_value_and_grad(one_draw, v, rngs)


def _start(c: ApgdConsts, norm: str) -> jnp.ndarray:
  """The start: `x_init`, or x plus eps times noise of unit L-inf (uniform) or L2 (Gaussian)
  norm per example; for L1, x plus Gaussian noise projected onto the ball. In [0, 1]."""
  if c.x_init is not None:
    return jnp.clip(c.x_init, 0.0, 1.0)
  if norm == "l1":
    return jnp.clip(l1_project(c.x + gaussian(c.key, c.x), c.x, c.eps), 0.0, 1.0)
  return jnp.clip(c.x + c.eps * unit_noise(c.key, c.x, norm), 0.0, 1.0)


def _changed(v: jnp.ndarray, x: jnp.ndarray) -> jnp.ndarray:
  """(N,) how many entries of each example differ from x (an L0 norm), as a float."""
  return jnp.sum((v != x).reshape(x.shape[0], -1), 1).astype(x.dtype)


def _settled(s: ApgdState, c: ApgdConsts) -> jnp.ndarray:
  """A fooled point's result (the first adversarial found) can no longer change."""
  del c
  return s.fooled


def _finish(s: ApgdState, c: ApgdConsts):
  """(x_adv, fooled): the point found where fooled, else the highest-loss point."""
  x_out = jnp.where(parallel.per_example(s.fooled, c.x), s.x_found, s.x_best)
  return jax.lax.stop_gradient(x_out), s.fooled


class _Found(NamedTuple):
  """One step's bookkeeping, shared by both step rules: the new point's result recorded."""
  x_found: jnp.ndarray
  fooled: jnp.ndarray
  x_best: jnp.ndarray
  grad_best: jnp.ndarray
  loss_best: jnp.ndarray


def _record(s: ApgdState, c: ApgdConsts, x_new, per, logits, grad, as_original: bool):
  """The first (with `as_original` the last) misclassified point, and the best-loss point."""
  miss = jnp.argmax(logits, -1) != c.y
  newly = miss if as_original else miss & ~s.fooled
  improved = per > s.loss_best
  ib = parallel.per_example(improved, c.x)
  return _Found(x_found=jnp.where(parallel.per_example(newly, c.x), x_new, s.x_found),
                fooled=s.fooled | miss, x_best=jnp.where(ib, x_new, s.x_best),
                grad_best=jnp.where(ib, grad, s.grad_best),
                loss_best=jnp.where(improved, per, s.loss_best))


def _init(value_and_grad, norm: str, as_original: bool, c: ApgdConsts) -> ApgdState:
  n = c.x.shape[0]
  x_adv = _start(c, norm)
  per, logits, grad = value_and_grad(c, x_adv, 0)
  size = float(np.prod(c.x.shape[1:]))
  sparsity = _changed(x_adv, c.x) if c.x_init is not None else jnp.full((n,), size, c.x.dtype)
  alpha = 1.0 if norm == "l1" else 2.0
  return ApgdState(
      x_adv=x_adv, x_old=x_adv, grad=grad, x_best=x_adv, grad_best=grad, loss_best=per,
      x_found=x_adv, fooled=jnp.argmax(logits, -1) != c.y,
      step=jnp.broadcast_to(alpha * c.eps, (n,) + (1,) * (c.x.ndim - 1)).astype(c.x.dtype),
      # The original's first window compares step 0's loss with an unset (zero) entry of
      # its loss history; here, with the loss at the start.
      prev_loss=jnp.zeros_like(per) if as_original else per,
      increases=jnp.zeros((n,), jnp.int32), reduced_last=jnp.ones((n,), bool),
      loss_best_last=per,
      topk=sparsity / size / 1.5 if c.x_init is not None else jnp.full((n,), 0.2, c.x.dtype),
      sparsity=sparsity)


def _step_lp(value_and_grad, schedule, rho: float, norm: str, as_original: bool, i,
             s: ApgdState, c: ApgdConsts) -> ApgdState:
  """L-inf / L2: a momentum step; at a checkpoint the step halves where progress stalled."""
  x, eps = c.x, c.eps
  a = jnp.where(i > 0, 0.75, 1.0)
  z = project(s.x_adv + s.step * ascent_direction(s.grad, norm), x, eps, norm)
  x_new = project(s.x_adv + a * (z - s.x_adv) + (1 - a) * (s.x_adv - s.x_old), x, eps, norm)
  per, logits, grad = value_and_grad(c, x_new, i + 1)
  f = _record(s, c, x_new, per, logits, grad, as_original)
  increases = s.increases + (per > s.prev_loss).astype(jnp.int32)
  at, k = jnp.asarray(schedule[0])[i], jnp.asarray(schedule[1])[i]
  no_improvement = ~s.reduced_last & (s.loss_best_last >= f.loss_best)
  reduce = at & ((increases <= k * rho) | no_improvement)
  rb = parallel.per_example(reduce, x)
  return s._replace(
      x_adv=jnp.where(rb, f.x_best, x_new), x_old=s.x_adv,
      grad=jnp.where(rb, f.grad_best, grad), step=jnp.where(rb, s.step / 2, s.step),
      prev_loss=per, increases=jnp.where(at, 0, increases),
      reduced_last=jnp.where(at, reduce, s.reduced_last),
      loss_best_last=jnp.where(at, f.loss_best, s.loss_best_last), **f._asdict())


def _step_l1(value_and_grad, every: int, as_original: bool, i, s: ApgdState,
             c: ApgdConsts) -> ApgdState:
  """L1: a sparse step, no momentum; every `every` steps topk and the step adapt."""
  x, eps = c.x, c.eps
  x_new = l1_project(s.x_adv + s.step * sparse_sign(s.grad, s.topk), x, eps)
  per, logits, grad = value_and_grad(c, x_new, i + 1)
  f = _record(s, c, x_new, per, logits, grad, as_original)
  at = (i + 1) % every == 0
  sparsity = _changed(f.x_best, x)
  back = at & (sparsity / s.sparsity < 0.95)
  bb = parallel.per_example(back, x)
  step = jnp.clip(jnp.where(bb, eps, s.step / 1.5), eps / 10, eps)
  return s._replace(
      x_adv=jnp.where(bb, f.x_best, x_new), grad=jnp.where(bb, f.grad_best, grad),
      step=jnp.where(parallel.per_example(at, x), step, s.step),
      topk=jnp.where(at, sparsity / np.prod(x.shape[1:]) / 1.5, s.topk),
      sparsity=jnp.where(at, sparsity, s.sparsity), **f._asdict())


def _finish_best(s: ApgdState, c: ApgdConsts):
  """(the highest-loss point, fooled): where a large-radius L1 phase hands over."""
  del c
  return jax.lax.stop_gradient(s.x_best), s.fooled


@functools.lru_cache(maxsize=None)
def _program(loss: str, norm: str, n_iter: int, rho: float, eot_iter: int,
             as_original: bool = False, hand_over: bool = False):
  """(init, step, settled, finish) of APGD for these static settings, for `loop.run`; the
  arrays (model, x, y, target, key, eps, start) come in `ApgdConsts`. `hand_over`: a phase
  of L1's large radii, which returns its best point and runs all its steps."""
  value_and_grad = functools.partial(_value_and_grad, LOSSES[loss], eot_iter)
  init = functools.partial(_init, value_and_grad, norm, as_original)
  if norm == "l1":
    step = functools.partial(_step_l1, value_and_grad, max(int(0.04 * n_iter), 1), as_original)
  else:
    ckpt_at, ckpt_len = np.zeros((n_iter,), bool), np.zeros((n_iter,), np.int32)
    for i, k in checkpoints(n_iter):
      ckpt_at[i], ckpt_len[i] = True, k
    step = functools.partial(_step_lp, value_and_grad, (ckpt_at, ckpt_len), rho, norm,
                             as_original)
  if hand_over:
    return loop.Program(init, step, _finish_best, None)
  return loop.Program(init, step, _finish, None if as_original else _settled)


def apgd(logits_fn: Callable, x: jnp.ndarray, y: jnp.ndarray, key: jax.Array, *, eps: float,
         n_iter: int = 100, loss: str = "ce", y_target: Optional[jnp.ndarray] = None,
         rho: float = 0.75, norm: str = "linf", eot_iter: int = 1, as_original: bool = False,
         use_largereps: bool = False):
  """Returns (x_adv, fooled): for each example the first misclassified point found (or the
  highest-loss point) and whether it is misclassified. Ends early once every example is
  fooled, and from Python drops fooled examples from the batch as it goes (their result
  cannot change; without EOT, examples do not interact), see `loop.fori`.

  `as_original=True` follows the original code in two details that do not change which
  points are fooled: it returns the *last* misclassified point found (so it can neither end
  early nor drop fooled points), and its first checkpoint window counts the first step as an
  increase when its loss is above zero. `use_largereps` (L1 only): the phases of radii 3, 2
  and 1 eps of the module doc."""
  check_labels("apgd", x, y, y_target)
  if loss not in LOSSES:
    raise ValueError(f"unknown APGD loss {loss!r}; known: {', '.join(LOSSES)}")
  if use_largereps and norm != "l1":
    raise ValueError(f"APGD's use_largereps is for the L1 norm, not {norm!r}")
  eot_iter = max(int(eot_iter), 1)
  consts = ApgdConsts(logits_fn=loop.as_partial(logits_fn), x=x, y=y, y_target=y_target,
                      key=key, eps=jnp.asarray(eps, x.dtype))
  run = lambda n, c, hand_over=False: loop.run(
      _program(loss, norm, n, float(rho), eot_iter, bool(as_original), hand_over), n, c,
      per_example=("x", "y", "y_target", "x_init") if eot_iter == 1 else None)
  if not use_largereps:
    return run(n_iter, consts)
  phases = list(zip((3.0, 2.0, 1.0), largereps_iterations(n_iter)))
  x_init = l1_project(x + gaussian(key, x), x, phases[0][0] * consts.eps)
  for scale, n in phases[:-1]:
    c = consts._replace(eps=scale * consts.eps, x_init=l1_project(x_init, x, scale * consts.eps))
    x_init = run(n, c, hand_over=True)[0]
  return run(phases[-1][1], consts._replace(x_init=l1_project(x_init, x, consts.eps)))


def largereps_iterations(n_iter: int):
  """The iterations of L1's three phases: 30 %, 30 % (rounded up) and the rest."""
  first = math.ceil(0.3 * n_iter)
  return first, first, n_iter - 2 * first


def apgd_targeted(logits_fn: Callable, x, y, key, *, eps: float, n_iter: int = 100,
                  n_target_classes: int = 9, norm: str = "linf", target_rank=None,
                  as_original: bool = False, use_largereps: bool = False):
  """APGD-T: APGD on the targeted DLR loss towards the 2nd, 3rd, ... most likely classes
  at the clean input, each run on the points the previous ones did not fool (or only
  towards `target_rank`, see `targets.over_targets`)."""
  check_labels("apgd_targeted", x, y)
  attack_one = lambda y_target, k: apgd(logits_fn, x, y, k, eps=eps, n_iter=n_iter,
                                        loss="dlr_targeted", y_target=y_target, norm=norm,
                                        as_original=as_original, use_largereps=use_largereps)
  return targets.over_targets(attack_one, logits_fn, x, y, key,
                              n_target_classes=n_target_classes, target_rank=target_rank)
