"""Loading a frozen teacher: a checkpoint of this project (TrainState) or converted PyTorch
weights ({params, batch_stats}), checked against the architecture the config names."""
import dataclasses
from typing import Any, Dict, Optional, Sequence

from mixacm_jax import checkpoint as ckpt_lib
from mixacm_jax import models
from mixacm_jax.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Teacher:
  model: Any
  variables: Dict[str, Any]  # {"params", "batch_stats"}, host arrays
  source: str


def load_teacher(teacher_cfg, num_classes: int, image_shape: Sequence[int],
                 path: Optional[str] = None) -> Teacher:
  path = path or teacher_cfg.get("checkpoint")
  if not path:
    raise ConfigError("this objective needs a teacher: set --config.teacher.checkpoint=<dir> "
                      "(a workdir of a PGD-AT/TRADES run, or converted PyTorch weights)")
  model = models.create_model_from_config(teacher_cfg.model, num_classes)
  variables = ckpt_lib.load_variables(model, image_shape, path,
                                       teacher_cfg.get("step") or None)
  return Teacher(model, variables, path)


def check_feature_names(model, image_shape, names: Sequence[str], role: str) -> None:
  """Before any work: `apply_model`'s check of the sown names, on a traced model."""
  models.check_sown(model, names, models.feature_names(model, image_shape), role)
