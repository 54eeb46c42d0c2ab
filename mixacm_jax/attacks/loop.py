"""The iterative attacks' main loop, fast on every backend: one driver (`fori`) and one
typed form of an attack's loop (`Program`, run by `run`: APGD, FAB and Square).

XLA:CPU runs a `while` loop's body several times slower than the same ops outside one (a
convolution inside a loop body loses its fast path: jax-ml/jax#12868; BENCHMARKS.md has
the figures). So on CPU, when the inputs are concrete arrays (not inside a `jit`/`pmap`
trace), the loop is driven from Python over a jitted chunk of `chunk` unrolled steps,
state in and state out; inside a trace, and on GPU/TPU where a loop costs nothing, it is
one `lax.fori_loop` (or `while_loop` with an early exit). Both forms run the same `step`.

`step(i, state, consts)` must be a stable, hashable callable that closes over static
settings only (build it with a `functools.lru_cache`d factory): it is a static argument of
the jitted chunk, and everything that is an array (inputs, keys, eps, the model as a
`jax.tree_util.Partial`) goes in `consts`, a pytree: an attack's typed `NamedTuple` of its
arrays (`ApgdConsts`, `SquareConsts`, `FabConsts`), its state one too.

With `settled(state, consts)`, a per-example mask of rows whose result can no longer change,
the loop ends once every row is settled; from Python, given which `consts` fields are per
example, it also drops settled rows between chunks once at least half of the batch is
settled (to the next power of two of what is left, so a batch compiles at most log2(N) more
programs), and puts every row back in place at the end. That is exact only when the
examples do not interact and no step draws random numbers shaped by the batch; the attack
decides (APGD without EOT qualifies).
"""
import functools
from typing import Any, Callable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mixacm_jax.runtime import xla_cpu

# Steps per jitted call on CPU, by batch size: unrolling a few steps into one program pays
# on a large batch (APGD) and costs on a handful of points (Square's queries); BENCHMARKS.md
# has the figures.
CPU_CHUNK = {1: 1, 32: 4}  # smallest batch -> steps per call
# XLA:CPU runs a while-loop body several times slower than the same ops unrolled
# (BENCHMARKS.md), so inside a trace short loops are unrolled on CPU; elsewhere they stay a loop.
MAX_CPU_UNROLL = 32
# Calls between two looks at `settled`: each look waits for the device, which stops
# Python from queueing the next steps while the current one runs.
CHECK_EVERY = 8


class Program(NamedTuple):
  """An iterative attack as the loop runs it, built once per static settings (hashable):
  `init(consts) -> state`, `step(i, state, consts) -> state`, `finish(state, consts) ->
  (x_adv, fooled)` and optionally `settled(state, consts)`, the per-example mask of rows
  whose result can no longer change."""
  init: Callable
  step: Callable
  finish: Callable
  settled: Optional[Callable] = None


def run(program: Program, n: int, consts: Any, *,
        per_example: Optional[Sequence[str]] = None) -> Any:
  """`program` for `n` steps on `consts` (a NamedTuple): init, the loop (`fori`), finish.
  `per_example` names the `consts` fields with the examples on their leading axis, when
  settled rows may leave the batch (see `fori`)."""
  state = fori(n, program.step, call(program.init, consts), consts, settled=program.settled,
               per_example=per_example)
  return call(program.finish, state, consts)


def as_partial(fn: Callable) -> jax.tree_util.Partial:
  """`fn` as a pytree: a `Partial` keeps its array leaves (e.g. model variables) traced
  and the function itself static, so it can go in `consts`."""
  return fn if isinstance(fn, jax.tree_util.Partial) else jax.tree_util.Partial(fn)


def host_driven(*trees) -> bool:
  """Whether a loop over these values runs from Python: on CPU, outside any trace."""
  if jax.default_backend() != "cpu":
    return False
  return not any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves(trees))


# The Python-driven programs run on CPU only: there reductions stay out of YNNPACK (xla_cpu).
_LOOP_OPTIONS = xla_cpu.loop_compiler_options() or None


@functools.partial(jax.jit, static_argnames=("step", "length"), compiler_options=_LOOP_OPTIONS)
def _chunk(start, state, consts, *, step, length):
  for j in range(length):
    state = step(start + j, state, consts)
  return state


@functools.partial(jax.jit, static_argnames=("fn",), compiler_options=_LOOP_OPTIONS)
def _jitted(*args, fn):
  return fn(*args)


def call(fn: Callable, *args) -> Any:
  """`fn(*args)`, jitted (with `fn` static) when run from Python on CPU: an attack's set-up
  and finish around `fori`, so that they do not run op by op."""
  return _jitted(*args, fn=fn) if host_driven(args) else fn(*args)


def fori(n: int, step: Callable, state: Any, consts: Any, *,
         settled: Optional[Callable] = None, per_example: Optional[Sequence[str]] = None,
         chunk: int = None, unroll_short: bool = False) -> Any:
  """`state` after `n` steps `state = step(i, state, consts)`, i = 0 .. n-1. With
  `settled(state, consts)`, a per-example mask of rows `step` no longer changes the result
  of, it ends once every row is settled (looked at between chunks on CPU); with
  `per_example` too, the names of the fields of `consts` (then a NamedTuple) that have the
  examples on their leading axis (as every leaf of `state` has; a None field stays None),
  settled rows leave the batch from Python (see the module doc). `unroll_short` unrolls a
  loop of at most MAX_CPU_UNROLL steps inside a trace on CPU (PGD's few cheap steps; not
  APGD's or FAB's long bodies, slow to compile)."""
  if not host_driven(state, consts):
    body = lambda i, s: step(i, s, consts)
    if settled is None:
      unroll = unroll_short and jax.default_backend() == "cpu" and 0 < n <= MAX_CPU_UNROLL
      return jax.lax.fori_loop(0, n, body, state, unroll=True if unroll else 1)
    _, state = jax.lax.while_loop(lambda c: (c[0] < n) & ~jnp.all(settled(c[1], consts)),
                                  lambda c: (c[0] + 1, body(c[0], c[1])),
                                  (jnp.int32(0), state))
    return state
  if chunk is None:
    batch = jax.tree_util.tree_leaves(state)[0].shape[0]
    chunk = max(v for k, v in CPU_CHUNK.items() if batch >= k)
  full, rows = state, None  # rows: where the rows in play sit in `full` (None: all of them)
  for calls, start in enumerate(range(0, n, chunk)):
    if settled is not None and calls % CHECK_EVERY == 0:
      mask = np.asarray(_jitted(state, consts, fn=settled))
      if mask.all():
        break
      keep = _rows_to_keep(mask) if per_example is not None and start else None
      if keep is not None:
        full = _put_back(full, rows, state)
        rows = keep if rows is None else rows[keep]
        state = jax.tree_util.tree_map(lambda v: v[keep], state)
        consts = consts._replace(**{name: getattr(consts, name)[keep] for name in per_example
                                    if getattr(consts, name) is not None})
    state = _chunk(jnp.int32(start), state, consts, step=step, length=min(chunk, n - start))
  return _put_back(full, rows, state)


def _rows_to_keep(settled: np.ndarray) -> Optional[np.ndarray]:
  """The open rows, padded with settled ones to a power of two, when that at least halves
  the batch; else None."""
  open_rows = np.flatnonzero(~settled)
  size = 1 << max(len(open_rows) - 1, 0).bit_length()
  if size > len(settled) // 2:
    return None
  return np.concatenate([open_rows, np.flatnonzero(settled)[:size - len(open_rows)]])


def _put_back(full, rows, state):
  if rows is None:
    return state
  return jax.tree_util.tree_map(lambda f, v: f.at[rows].set(v), full, state)
