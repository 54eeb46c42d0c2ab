"""The compiled programs the robustness report runs, each with a leading device axis: the
clean pass, the margins of returned points, and one attack stage over a batch of points.
A program is built once per `cache` dict (an eps sweep and a training run share one: eps is
a traced argument, so one compilation serves every eps)."""
import dataclasses
import inspect
from typing import Any, Callable, Dict, Hashable, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from mixacm_jax.attacks import loop, pgd as pgd_lib
from mixacm_jax.runtime import parallel

# A re-evaluated point whose margin is within this of 0 may flip (see tie_tolerance): an
# absolute bound for float32 on the CPU, a fraction of the largest |logit| elsewhere. The
# relative one covers TensorFloat-32's 10-bit and bfloat16's 8-bit mantissas.
TIE_MARGIN = 1e-4
TIE_RELATIVE = 1e-2


class FunctionModel:
  """A logits function `fn(x)` (or a randomised `fn(x, rng=key)`) where the report expects
  a Flax model: `apply(variables, x)` ignores `variables`."""

  def __init__(self, fn: Callable):
    self.fn = fn
    try:
      self.takes_rng = "rng" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
      self.takes_rng = False

  def apply(self, variables, x, rngs=None, **_):
    del variables
    if self.takes_rng and rngs is not None:
      return self.fn(x, rng=rngs["noise"])
    return self.fn(x)


def as_model(model, variables) -> Tuple[Any, Any]:
  """(model, variables): a Flax model as given, a logits function as a `FunctionModel`."""
  if hasattr(model, "apply"):
    return model, variables
  return FunctionModel(model), variables or {}


def cached(cache: Optional[Dict], key: Hashable, build: Callable):
  """`build()`, once per `cache` and `key` (every call without a cache). A program that closes
  over a model keys it with `model_key`, so a cache shared by reports on two models never
  hands one's program to the other."""
  if cache is None:
    return build()
  if key not in cache:
    cache[key] = build()
  return cache[key]


def host_loops() -> bool:
  """Whether AutoAttack's stages run from Python (CPU, see `attacks.loop`) or pmapped."""
  return loop.host_driven()


def prediction_and_margin(logits, y):
  """argmax, and the true class's logit minus the largest other (< 0: misclassified)."""
  return jnp.argmax(logits, -1), -pgd_lib.margin_loss(logits, y)


def clean(model) -> Callable:
  """(variables, x, y) -> (prediction, margin, whether the input gradient is zero or not
  finite: the gradient-masking check)."""
  def run(variables, x, y):
    logits = model.apply(variables, x)
    grad = jax.grad(lambda v: jnp.sum(pgd_lib.ce_loss(model.apply(variables, v), y)))(x)
    g = grad.reshape(grad.shape[0], -1)
    bad_grad = jnp.all(g == 0, axis=1) | ~jnp.all(jnp.isfinite(g), axis=1)
    return (*prediction_and_margin(logits, y), bad_grad)
  return jax.pmap(run, axis_name=parallel.AXIS)


def tie_tolerance(logits):
  """Per example, how far from 0 a margin may move between two evaluations of one point in
  batches of other sizes: float32 sums in another order on the CPU (TIE_MARGIN); on a GPU or
  TPU float32 matmuls default to TensorFloat-32 or bfloat16 passes, and bfloat16 logits keep 8
  bits, so there TIE_RELATIVE of the largest |logit|."""
  if jax.default_backend() == "cpu" and logits.dtype == jnp.float32:
    return jnp.full(logits.shape[:-1], TIE_MARGIN)
  scale = jnp.max(jnp.abs(logits.astype(jnp.float32)), -1)
  return jnp.maximum(TIE_MARGIN, TIE_RELATIVE * scale)


def margins(model) -> Callable:
  """(variables, x, y) -> (prediction, margin, tie tolerance)."""
  def run(variables, x, y):
    logits = model.apply(variables, x)
    return prediction_and_margin(logits, y) + (tie_tolerance(logits),)
  return jax.pmap(run, axis_name=parallel.AXIS)


def _still_robust(logits_fn, x, y, robust, x_adv):
  """(robust after the attack, x_adv): entries that were not robust keep x."""
  x_adv = jnp.where(parallel.per_example(robust, x), x_adv, x)
  return robust & (jnp.argmax(logits_fn(x_adv), -1) == y), x_adv


@dataclasses.dataclass(frozen=True, eq=False)
class _Apply:
  """`model.apply` as the attacks' logits function of (variables, x[, rng]); `rng` feeds a
  randomized model's "noise" stream (EOT attacks). It is part of every compiled attack loop
  program's key, and equal for equal Flax models, so a later report on the same architecture
  (other weights: they are arguments) compiles no loop again; a logits function's
  `FunctionModel`, or a module that cannot be compared or hashed, equals only itself (what a
  closure holds may have changed since)."""
  model: Any

  def __call__(self, variables, v, rng=None):
    return self.model.apply(variables, v, rngs=None if rng is None else {"noise": rng})

  def __eq__(self, other):
    if not isinstance(other, _Apply):
      return NotImplemented
    try:
      return self.model is other.model or bool(self.model == other.model)
    except (TypeError, ValueError):  # e.g. a module with an array field
      return False

  def __hash__(self):
    try:
      return hash(self.model)
    except TypeError:
      return id(self.model)


def model_key(model) -> Hashable:
  """`model` as part of a cache key: equal Flax models give equal keys (their programs are
  the same; weights are arguments), a logits function or an unhashable module only itself."""
  return _Apply(model)


def stage(model, attack: Callable, host: bool) -> Callable:
  """(variables, x, y, robust, keys, rank, eps, step) -> (still robust, x_adv) for one
  attack stage (`attacks.registry.stage_fn`). `pmap`ped, or with `host` each device's shard
  from Python, one after the other, so that the attack's loop runs from Python too (fast on
  CPU, see `attacks.loop`). Not in threads: two threads driving JAX at once aborted the
  process now and then (XLA:CPU, jax 0.10.2)."""
  apply = _Apply(model)

  def run(variables, x, y, robust, keys, rank, eps, step):
    logits_fn = jax.tree_util.Partial(apply, variables)
    x_adv = attack(logits_fn, x, y, keys, rank, eps, step)
    return loop.call(_still_robust, logits_fn, x, y, robust, x_adv)

  if not host:
    return jax.pmap(run, axis_name=parallel.AXIS)

  def run_shards(*args):
    devices = jax.local_devices()
    args = jax.tree_util.tree_map(np.asarray, args)

    def shard(d):  # on its own device, as the pmapped program would
      return run(*jax.device_put(jax.tree_util.tree_map(lambda a: a[d], args), devices[d]))
    outs = [shard(d) for d in range(len(args[1]))]
    return tuple(np.stack([np.asarray(o[k]) for o in outs]) for k in range(2))
  return run_shards
