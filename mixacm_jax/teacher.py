"""Loading a frozen teacher: a checkpoint of this project (TrainState) or converted PyTorch
weights ({params, batch_stats}), checked against the architecture the config names."""
import dataclasses
import os
from typing import Any, Dict, Mapping, Optional, Sequence

import jax
import numpy as np

from mixacm_jax import checkpoint as ckpt_lib
from mixacm_jax import models
from mixacm_jax.errors import CheckpointError, ConfigError


@dataclasses.dataclass(frozen=True)
class Teacher:
  model: Any
  variables: Dict[str, Any]  # {"params", "batch_stats"}, host arrays
  source: str


def _shapes(tree) -> Dict[str, tuple]:
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {jax.tree_util.keystr(path): tuple(np.shape(leaf)) for path, leaf in flat}


def check_same_structure(expected: Mapping, found: Mapping, what: str) -> None:
  """Raises a CheckpointError listing missing, unexpected and wrongly shaped entries."""
  e, f = _shapes(expected), _shapes(found)
  missing = sorted(set(e) - set(f))
  unexpected = sorted(set(f) - set(e))
  wrong = [f"{k}: expected {e[k]}, found {f[k]}" for k in sorted(set(e) & set(f)) if e[k] != f[k]]
  if missing or unexpected or wrong:
    show = lambda xs: ", ".join(xs[:5]) + (f" (+{len(xs) - 5} more)" if len(xs) > 5 else "")
    parts = [f"{len(missing)} missing ({show(missing)})" if missing else "",
             f"{len(unexpected)} unexpected ({show(unexpected)})" if unexpected else "",
             f"{len(wrong)} of the wrong shape ({show(wrong)})" if wrong else ""]
    raise CheckpointError(f"{what} does not match: " + "; ".join(p for p in parts if p))


def _checkpoint_dir(path: str) -> str:
  """Accepts a workdir (with checkpoints/ inside) or the checkpoint directory itself."""
  inner = os.path.join(path, "checkpoints")
  return inner if os.path.isdir(inner) else path


def load_variables(model, image_shape: Sequence[int], path: str,
                   step: Optional[int] = None) -> Dict[str, Any]:
  """params + batch_stats of `model` from an orbax checkpoint, strictly checked."""
  directory = _checkpoint_dir(path)
  if not os.path.isdir(directory):
    raise CheckpointError(f"no checkpoint at {path}")
  checkpointer = ckpt_lib.Checkpointer(directory, read_only=True, async_save=False)
  if not checkpointer.all_steps():
    raise CheckpointError(f"no checkpoint steps in {directory}")
  raw, step = checkpointer.restore(None, step)
  params = raw.get("params", {})
  params = params.get("model", params)  # a TrainState of this project, or bare weights
  found = {"params": params, "batch_stats": raw.get("batch_stats", {})}
  expected = jax.eval_shape(lambda: models.init_variables(model, jax.random.PRNGKey(0),
                                                          image_shape))
  check_same_structure(expected, found,
                       f"checkpoint {directory} (step {step}) vs architecture "
                       f"{type(model).__name__}")
  return jax.tree_util.tree_map(np.asarray, found)


def load_teacher(teacher_cfg, num_classes: int, image_shape: Sequence[int],
                 path: Optional[str] = None) -> Teacher:
  path = path or teacher_cfg.get("checkpoint")
  if not path:
    raise ConfigError("this objective needs a teacher: set --config.teacher.checkpoint=<dir> "
                      "(a workdir of a PGD-AT/TRADES run, or converted PyTorch weights)")
  model = models.create_model_from_config(teacher_cfg.model, num_classes)
  variables = load_variables(model, image_shape, path, teacher_cfg.get("step") or None)
  return Teacher(model, variables, path)


def check_feature_names(model, image_shape, names: Sequence[str], role: str) -> None:
  available = models.feature_names(model, image_shape)
  missing = [n for n in names if n not in available]
  if missing:
    raise ConfigError(f"the {role} ({type(model).__name__}) does not sow {missing}; expected "
                      f"{list(names)}, found {list(available)}")
