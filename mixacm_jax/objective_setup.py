"""What an objective needs around the train step: its frozen teacher (loaded and checked),
the params it learns beside the model, and what its training costs in network passes."""
from typing import Dict, Optional

import jax
import jax.numpy as jnp

from mixacm_jax import models
from mixacm_jax import teacher as teacher_lib


def init_objective_params(config, objective, model, teacher, image_shape):
  """Initial params the objective learns beside the model (e.g. ACM transformations)."""
  if objective.init_params is None:
    return {}
  cfg = objective.settings(config.objective)
  student_names, teacher_names = objective.feature_names(cfg)
  x = jax.ShapeDtypeStruct((1, *image_shape), jnp.float32)
  shapes = lambda m, v, names: {k: a.shape for k, a in jax.eval_shape(
      lambda v, x: models.apply_model(m, v, x, train=False, names=names)[1], v, x).items()}
  student_vars = jax.eval_shape(lambda: models.init_variables(model, jax.random.PRNGKey(0),
                                                              image_shape))
  return objective.init_params(jax.random.PRNGKey(config.seed + 2), cfg,
                               shapes(model, student_vars, student_names),
                               shapes(teacher.model, teacher.variables, teacher_names))


def resolve_teacher(config, objective, teacher: Optional[teacher_lib.Teacher], student, info
                    ) -> Optional[teacher_lib.Teacher]:
  """The objective's frozen teacher (the given one, or loaded from `config.teacher`), with
  the features the objective matches checked on both models before any work; None when
  the objective needs no teacher."""
  if not objective.needs_teacher:
    return None
  if teacher is None:
    teacher = teacher_lib.load_teacher(config.teacher, info.num_classes, info.image_shape)
  if objective.feature_names is not None:
    student_names, teacher_names = objective.feature_names(objective.settings(config.objective))
    teacher_lib.check_feature_names(teacher.model, info.image_shape, teacher_names, "teacher")
    teacher_lib.check_feature_names(student, info.image_shape, student_names, "student")
  return teacher


def training_cost(objective, objective_cfg, steps: int, batch_size: int) -> Dict[str, float]:
  """Network passes spent on training under `config.objective`: per example-step counts
  times examples seen."""
  per = objective.passes(objective.settings(objective_cfg))
  examples = steps * batch_size
  return {"student_forward_passes": per["forward"] * examples,
          "student_backward_passes": per["backward"] * examples,
          "teacher_forward_passes": per["teacher_forward"] * examples,
          "passes_per_example": per["forward"] + per["backward"] + per["teacher_forward"]}
