"""The frozen teacher of the distillation objectives, in one place: its training config (when
the pipeline trains it), loading it (this project's checkpoint or converted PyTorch weights,
checked against the architecture the config names), checking the blocks an objective reads
from it, and the frozen forward function the train step calls."""
import dataclasses
from typing import Any, Callable, Dict, Optional, Sequence

import jax

from mixacm_jax import models
from mixacm_jax.errors import ConfigError
from mixacm_jax.port import source


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
  return source.is_given(teacher_cfg)


def load_teacher(teacher_cfg, num_classes: int, image_shape: Sequence[int],
                 path: Optional[str] = None) -> Teacher:
  """The teacher at `path`, else at teacher.checkpoint (with teacher.model's architecture),
  else RobustBench's teacher.robustbench entry (with its own architecture)."""
  if not (path or source.is_given(teacher_cfg)):
    raise ConfigError("this objective needs a teacher: set --config.teacher.checkpoint=<dir> "
                      "(a workdir of a PGD-AT/TRADES run, or converted PyTorch weights) or "
                      "--config.teacher.robustbench=<RobustBench entry>")
  loaded = source.load(teacher_cfg, num_classes, image_shape, role="the teacher", path=path)
  return Teacher(*loaded)


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


def extra_teachers(config, objective, info) -> Dict[str, Teacher]:
  """{role: Teacher} of the objective's further teachers, each loaded from its own config
  section (MTARD: `config.clean_teacher`, by checkpoint or RobustBench name; that it is given
  is checked with the config, `configs.checks.validate`)."""
  out = {}
  for role, section in objective.extra_teachers:
    loaded = source.load(config[section], info.num_classes, info.image_shape,
                         role=f"the {role.replace('_', ' ')} (config.{section})")
    out[role] = Teacher(*loaded)
  return out


def frozen_forward(teacher_model, teacher_variables) -> Optional[Callable]:
  """teacher(x, names) -> (logits, {name: act}): eval mode, no gradient, no BN update."""
  if teacher_model is None:
    return None
  frozen = jax.lax.stop_gradient(teacher_variables)

  def teacher(x, names=()):
    logits, feats, _ = models.apply_model(teacher_model, frozen, x, train=False, names=names)
    return logits, feats
  return teacher
