"""The frozen teacher of the distillation objectives, in one place: its training config (when
the pipeline trains it), loading it (this project's checkpoint or converted PyTorch weights,
checked against the architecture the config names), checking the blocks an objective reads
from it, and the frozen forward function the train step calls."""
import dataclasses
from typing import Any, Callable, Dict, Optional, Sequence

import jax

from mixacm_jax import models
from mixacm_jax.errors import ConfigError
from mixacm_jax.port import zoo
from mixacm_jax.runtime import checkpoint as ckpt_lib


@dataclasses.dataclass(frozen=True)
class Teacher:
  model: Any
  variables: Dict[str, Any]  # {"params", "batch_stats"}, host arrays
  source: str


def training_config(config):
  """The student's config turned into its teacher's: the teacher's model, the pipeline's
  teacher objective, length and batch size."""
  cfg = config.copy_and_resolve_references()
  cfg.model = config.teacher.model.copy_and_resolve_references()
  cfg.objective.name = config.pipeline.teacher_objective
  cfg.optim.num_epochs = config.pipeline.teacher_epochs
  cfg.optim.batch_size = config.pipeline.get("teacher_batch_size") or config.optim.batch_size
  return cfg


def is_given(teacher_cfg) -> bool:
  """Whether the config names a teacher to load (a checkpoint or a RobustBench entry)."""
  return bool(teacher_cfg.get("checkpoint") or teacher_cfg.get("robustbench"))


def load_teacher(teacher_cfg, num_classes: int, image_shape: Sequence[int],
                 path: Optional[str] = None) -> Teacher:
  """The teacher at `path`, else at teacher.checkpoint (with teacher.model's architecture),
  else RobustBench's teacher.robustbench entry (with its own architecture)."""
  path = path or teacher_cfg.get("checkpoint")
  if not path and teacher_cfg.get("robustbench"):
    return _robustbench_teacher(teacher_cfg, num_classes, image_shape)
  if not path:
    raise ConfigError("this objective needs a teacher: set --config.teacher.checkpoint=<dir> "
                      "(a workdir of a PGD-AT/TRADES run, or converted PyTorch weights) or "
                      "--config.teacher.robustbench=<RobustBench entry>")
  model = models.create_model_from_config(teacher_cfg.model, num_classes)
  variables = ckpt_lib.load_variables(model, image_shape, path,
                                       teacher_cfg.get("step") or None)
  return Teacher(model, variables, path)


def _robustbench_teacher(teacher_cfg, num_classes: int, image_shape: Sequence[int]) -> Teacher:
  model, variables, info = zoo.load_entry(
      teacher_cfg.robustbench, teacher_cfg.dataset, teacher_cfg.threat_model,
      teacher_cfg.model_dir, teacher_cfg.model.get("dtype", "float32"))
  entry = f"RobustBench's {info['robustbench']} ({info['dataset']} {info['threat_model']})"
  if info["num_classes"] != num_classes:
    raise ConfigError(f"the teacher, {entry}, has {info['num_classes']} classes and the data "
                      f"{num_classes}: pick an entry of the data's dataset")
  if tuple(info["image_shape"]) != tuple(image_shape):
    raise ConfigError(f"the teacher, {entry}, takes {tuple(info['image_shape'])} images and "
                      f"the data has {tuple(image_shape)}")
  return Teacher(model, variables, info["source"])


def check_feature_names(model, image_shape, names: Sequence[str], role: str) -> None:
  """Before any work: `apply_model`'s check of the sown names, on a traced model."""
  models.check_sown(model, names, models.feature_names(model, image_shape), role)


def resolve_teacher(teacher_cfg, objective_cfg, objective, teacher: Optional[Teacher],
                    student, info) -> Optional[Teacher]:
  """The objective's frozen teacher (the given one, or loaded from `teacher_cfg`), with
  the features the objective matches checked on both models before any work; None when
  the objective needs no teacher."""
  if not objective.needs_teacher:
    return None
  if teacher is None:
    teacher = load_teacher(teacher_cfg, info.num_classes, info.image_shape)
  if objective.feature_names is not None:
    student_names, teacher_names = objective.feature_names(objective.settings(objective_cfg))
    check_feature_names(teacher.model, info.image_shape, teacher_names, "teacher")
    check_feature_names(student, info.image_shape, student_names, "student")
  return teacher


def frozen_forward(teacher_model, teacher_variables) -> Optional[Callable]:
  """teacher(x, names) -> (logits, {name: act}): eval mode, no gradient, no BN update."""
  if teacher_model is None:
    return None
  frozen = jax.lax.stop_gradient(teacher_variables)

  def teacher(x, names=()):
    logits, feats, _ = models.apply_model(teacher_model, frozen, x, train=False, names=names)
    return logits, feats
  return teacher
