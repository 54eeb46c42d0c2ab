"""Orbax checkpoints in `workdir/checkpoints`: every N steps and at the end, the last k kept
plus the best by a chosen eval metric; a step is visible only once orbax has committed it.
Nothing that is not finite is saved, and a step that does not read back (corrupt, or not
finite) is skipped on restore and replaced when it is saved again. Also loading a model's
variables from one, strictly checked against the architecture."""
import logging
import os
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

from mixacm_jax import models
from mixacm_jax.errors import CheckpointError, MixACMError, NonFiniteLossError, first_line
from mixacm_jax.runtime import storage


class Checkpointer:
  """A thin layer over `ocp.CheckpointManager` that saves and restores a TrainState pytree."""

  def __init__(self, directory: str, *, keep: int = 2, best_metric: Optional[str] = None,
               best_mode: str = "max", async_save: bool = True, read_only: bool = False):
    self.directory = os.path.abspath(directory)
    policies = [checkpoint_managers.LatestN(n=keep)]
    if best_metric:  # a step saved without the metric (another config's) ranks last
      worst = float("inf") if best_mode == "min" else float("-inf")
      policies.append(checkpoint_managers.BestN(
          get_metric_fn=lambda m: m.get(best_metric, worst), reverse=(best_mode == "min"),
          n=1, keep_checkpoints_without_metrics=False))
    self.best_metric = best_metric
    self.unreadable = set()  # steps that failed to restore: replaced when saved again
    self.pending = None  # the step of an asynchronous save that may still be writing
    options = ocp.CheckpointManagerOptions(
        preservation_policy=checkpoint_managers.AnyPreservationPolicy(policies),
        enable_async_checkpointing=async_save, create=not read_only, read_only=read_only,
        cleanup_tmp_directories=True)
    try:
      self.manager = ocp.CheckpointManager(self.directory, options=options)
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointError(f"cannot use checkpoint directory {self.directory}: "
                            f"{storage.reason(e)}") from None

  def save(self, step: int, state: Any, metrics: Optional[Mapping[str, float]] = None) -> None:
    """Saves (asynchronously where possible) a host-local copy of `state` at `step`. A step
    already saved is kept, unless it did not read back; a state that is not finite is
    refused (NonFiniteLossError). `metrics` without the best metric count as none."""
    bad = nonfinite_entries(state)
    if bad:
      raise NonFiniteLossError(
          f"the state of step {step} is not finite ({short_list(bad, 3)}); it is not saved "
          f"({self.last_good()}). Lower optim.learning_rate or check the inputs.")
    if step in self.manager.all_steps():
      if step not in self.unreadable:
        return
      self._call(f"replace the unreadable checkpoint of step {step} in",
                 lambda: self.manager.delete(step))
      self.unreadable.discard(step)
    metrics = {k: float(v) for k, v in metrics.items()} if metrics else None
    if metrics is not None and self.best_metric and self.best_metric not in metrics:
      metrics = None
    self.wait()  # a failure of the save before is reported as that step's
    self._call(f"save the checkpoint of step {step} in", lambda: self.manager.save(
        step, args=ocp.args.StandardSave(state), metrics=metrics, force=True))
    self.pending = step

  def _call(self, action: str, fn):
    """`fn()`, with any failure of the storage below orbax (an OSError, or tensorstore's
    ValueError on a full disk) as one CheckpointError naming the action and the path."""
    try:
      return fn()
    except MixACMError:
      raise
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointError(f"could not {action} {self.directory}: {storage.reason(e)} "
                            "(a run resumes from the last saved step)") from None

  def all_steps(self):
    return sorted(self.manager.all_steps())

  def latest_step(self) -> Optional[int]:
    return self.manager.latest_step()

  def last_good(self) -> str:
    """Which checkpoint a stopped run leaves as its last good one, in words."""
    good = [s for s in self.all_steps() if s not in self.unreadable]
    return (f"the checkpoint of step {good[-1]} is the last good one" if good
            else "no checkpoint was saved before it")

  def restore(self, target: Any, step: Optional[int] = None) -> Tuple[Any, Optional[int]]:
    """Restores the given step, or the newest one that reads back; corrupt steps are skipped
    with a warning. Returns (state, step), or (target, None) when there is no checkpoint.
    With `target=None` the saved tree comes back as it was written (NumPy leaves)."""
    steps = [step] if step is not None else self.all_steps()[::-1]
    abstract = (None if target is None else
                jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, target))
    errors = []
    for s in steps:
      try:
        restored = self.manager.restore(s, args=ocp.args.StandardRestore(abstract))
        bad = nonfinite_entries(restored)
        if not bad:
          return restored, s
        errors.append(f"step {s}: not finite ({short_list(bad, 3)})")
      except Exception as e:  # pylint: disable=broad-except
        errors.append(f"step {s}: {first_line(e)}")
      self.unreadable.add(s)
      logging.warning("checkpoint of step %d in %s cannot be used (%s); trying an older one",
                      s, self.directory, errors[-1])
      print(f"WARNING: checkpoint step {s} in {self.directory} is unreadable or not finite; "
            "falling back to an older one (a run that reaches that step again replaces it)",
            flush=True)
    if errors:
      raise CheckpointError(f"no readable checkpoint in {self.directory}: " + "; ".join(errors))
    return target, None

  def wait(self) -> None:
    """Waits for an asynchronous save, whose failure (a full disk) surfaces here."""
    step, self.pending = self.pending, None
    self._call("save the checkpoint" + ("" if step is None else f" of step {step}") + " in",
               self.manager.wait_until_finished)

  def close(self) -> None:
    try:
      self.wait()
    finally:
      try:
        self.manager.close()
      except Exception:  # pylint: disable=broad-except
        pass  # the failure of a save in flight: `wait` has just reported it


def nonfinite_entries(tree) -> List[str]:
  """The paths of the floating-point leaves of `tree` that hold a NaN or an inf."""
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return [jax.tree_util.keystr(path) for path, leaf in flat
          if np.issubdtype(np.asarray(leaf).dtype, np.inexact)
          and not np.all(np.isfinite(np.asarray(leaf)))]


def _shapes(tree) -> Dict[str, tuple]:
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {jax.tree_util.keystr(path): tuple(np.shape(leaf)) for path, leaf in flat}


def compare_shapes(expected: Mapping[Any, tuple], found: Mapping[Any, tuple]
                   ) -> Tuple[List[Any], List[Any], List[Any]]:
  """(missing, unexpected, wrongly shaped) keys of two {key: shape} tables: the one
  comparison behind every weight-loading error (checkpoints here, the PyTorch port)."""
  missing = [k for k in expected if k not in found]
  unexpected = [k for k in found if k not in expected]
  wrong = [k for k in expected if k in found and tuple(expected[k]) != tuple(found[k])]
  return missing, unexpected, wrong


def short_list(items: Sequence[str], n: int = 5) -> str:
  return ", ".join(items[:n]) + (f" (+{len(items) - n} more)" if len(items) > n else "")


def check_same_structure(expected: Mapping, found: Mapping, what: str) -> None:
  """Raises a CheckpointError listing missing, unexpected and wrongly shaped entries."""
  e, f = _shapes(expected), _shapes(found)
  missing, unexpected, wrong = (sorted(k) for k in compare_shapes(e, f))
  wrong = [f"{k}: expected {e[k]}, found {f[k]}" for k in wrong]
  if missing or unexpected or wrong:
    parts = [f"{len(missing)} missing ({short_list(missing)})" if missing else "",
             f"{len(unexpected)} unexpected ({short_list(unexpected)})" if unexpected else "",
             f"{len(wrong)} of the wrong shape ({short_list(wrong)})" if wrong else ""]
    raise CheckpointError(f"{what} does not match: " + "; ".join(p for p in parts if p))


def _checkpoint_dir(path: str) -> str:
  """Accepts a workdir (with checkpoints/ inside) or the checkpoint directory itself."""
  inner = os.path.join(path, "checkpoints")
  return inner if os.path.isdir(inner) else path


def load_variables(model, image_shape: Sequence[int], path: str,
                   step: Optional[int] = None, weights: str = "raw") -> Dict[str, Any]:
  """params + batch_stats of `model` from an orbax checkpoint, strictly checked; `weights`
  "ema" takes the moving average of the weights a run kept (optim.ema)."""
  directory = _checkpoint_dir(path)
  if not os.path.isdir(directory):
    raise CheckpointError(f"no checkpoint at {path}")
  checkpointer = Checkpointer(directory, read_only=True, async_save=False)
  if not checkpointer.all_steps():
    raise CheckpointError(f"no checkpoint steps in {directory}")
  raw, step = checkpointer.restore(None, step)
  params = raw.get("params", {})
  params = params.get("model", params)  # a TrainState of this project, or bare weights
  if weights == "ema":
    params = raw.get("ema_params") or {}
    if not params:
      raise CheckpointError(f"checkpoint {directory} (step {step}) keeps no moving average "
                            "of its weights (trained without optim.ema.decay): load its raw "
                            "weights (--config.<section>.weights=raw)")
  found = {"params": params, "batch_stats": raw.get("batch_stats", {})}
  expected = jax.eval_shape(lambda: models.init_variables(model, jax.random.PRNGKey(0),
                                                          image_shape))
  check_same_structure(expected, found,
                       f"checkpoint {directory} (step {step}) vs architecture "
                       f"{type(model).__name__}")
  return jax.tree_util.tree_map(np.asarray, found)
