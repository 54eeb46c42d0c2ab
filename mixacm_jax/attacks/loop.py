"""The iterative attacks' main loop, fast on every backend.

XLA:CPU runs a `while` loop's body several times slower than the same ops outside one (a
convolution inside a loop body loses its fast path: jax-ml/jax#12868; BENCHMARKS.md has
the figures). So on CPU, when the inputs are concrete arrays (not inside a `jit`/`pmap`
trace), the loop is driven from Python over a jitted chunk of `chunk` unrolled steps,
state in and state out; inside a trace, and on GPU/TPU where a loop costs nothing, it is
one `lax.fori_loop` (or `while_loop` with an early exit). Both forms run the same `step`.

`step(i, state, consts)` must be a stable, hashable callable that closes over static
settings only (build it with a `functools.lru_cache`d factory): it is a static argument of
the jitted chunk, and everything that is an array (inputs, keys, eps, the model as a
`jax.tree_util.Partial`) goes in `consts`.
"""
import functools
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp

# Steps per jitted call on CPU: enough to amortise the call, few enough to compile fast.
CPU_CHUNK = 4


def as_partial(fn: Callable) -> jax.tree_util.Partial:
  """`fn` as a pytree: a `Partial` keeps its array leaves (e.g. model variables) traced
  and the function itself static, so it can go in `consts`."""
  return fn if isinstance(fn, jax.tree_util.Partial) else jax.tree_util.Partial(fn)


def host_driven(*trees) -> bool:
  """Whether a loop over these values runs from Python: on CPU, outside any trace."""
  if jax.default_backend() != "cpu":
    return False
  return not any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves(trees))


@functools.partial(jax.jit, static_argnames=("step", "length"))
def _chunk(start, state, consts, *, step, length):
  for j in range(length):
    state = step(start + j, state, consts)
  return state


@functools.partial(jax.jit, static_argnames=("fn",))
def _jitted(*args, fn):
  return fn(*args)


def call(fn: Callable, *args) -> Any:
  """`fn(*args)`, jitted (with `fn` static) when run from Python on CPU: an attack's set-up
  and finish around `fori`, so that they do not run op by op."""
  return _jitted(*args, fn=fn) if host_driven(args) else fn(*args)


def fori(n: int, step: Callable, state: Any, consts: Any, *,
         done: Optional[Callable] = None, chunk: int = None) -> Any:
  """`state` after `n` steps `state = step(i, state, consts)`, i = 0 .. n-1; with `done`
  (state, consts) -> bool, it may end earlier once `done` holds, so `step` must leave the
  result unchanged from then on (checked between chunks on CPU)."""
  if not host_driven(state, consts):
    body = lambda i, s: step(i, s, consts)
    if done is None:
      return jax.lax.fori_loop(0, n, body, state)
    _, state = jax.lax.while_loop(lambda c: (c[0] < n) & ~done(c[1], consts),
                                  lambda c: (c[0] + 1, body(c[0], c[1])),
                                  (jnp.int32(0), state))
    return state
  chunk = chunk or CPU_CHUNK
  for start in range(0, n, chunk):
    if done is not None and bool(_jitted(state, consts, fn=done)):
      break
    state = _chunk(jnp.int32(start), state, consts, step=step, length=min(chunk, n - start))
  return state
