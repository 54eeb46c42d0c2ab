"""CIFAR-10 settings shared by the real-scale configs (RobustBench conventions)."""
from typing import Optional

import ml_collections
import numpy as np

from mixacm_jax.configs import default
from mixacm_jax.errors import ConfigError


def get_config():
  config = default.get_config()
  config.data.name = "cifar10"
  config.data.crop_padding = 4
  config.data.random_flip = True
  config.data.num_threads = 16         # PNG decoding + augmentation per example
  config.data.prefetch = 8
  config.model.kwargs = ml_collections.ConfigDict()
  config.optim.batch_size = 128
  config.optim.learning_rate = 0.1
  config.optim.weight_decay = 5e-4
  config.optim.schedule = "piecewise"
  config.optim.warmup_epochs = 0.0
  config.eval.batch_size = 500
  config.evals.pgd = default.evaluation("clean,pgd20", every_steps=5_000)
  eps = 8 / 255
  for method in default.ADVERSARIAL_METHODS:
    config.objective[method].attack = default.training_attack(eps, 2 / 255, 10)
  config.objective.fast_at.attack = default.fast_attack(eps)
  config.eval.pgd = ml_collections.ConfigDict(
      {"eps": eps, "step_size": 2 / 255, "norm": "linf", "restarts": 1})
  config.eval.attacks = "clean,pgd20,cw20,autoattack"
  config.checkpoint.every_steps = 1_000
  config.log_every_steps = 100
  return config


def mixacm_config(student: str, teacher: str, stages, num_classes_dataset: str = "cifar10"):
  """MixACM distillation from a robust `teacher` (give its checkpoint with
  --config.teacher.checkpoint=<dir>) into `student`. Schedule: 200 epochs, lr 0.1 decayed
  10x at 100 and 150 (this project's default; the paper's exact schedule is not restated)."""
  config = get_config()
  config.data.name = num_classes_dataset
  config.model.name = student
  config.objective.name = "mixacm"
  config.objective.mixacm.acm.stages = tuple(stages)
  config.teacher.model.name = teacher
  config.teacher.model.kwargs = ml_collections.ConfigDict()
  config.optim.num_epochs = 200
  config.optim.decay_epochs = (100, 150)
  config.pipeline = ml_collections.ConfigDict()
  config.pipeline.teacher_objective = "trades"
  config.pipeline.teacher_epochs = 100
  config.pipeline.students = ("mixacm", "natural", "kd")
  return config


# Block matching from a WRN teacher (stem, 3 groups) to a ResNet student (stem, 4 groups):
# the student's last group meets the teacher's final activated features.
WRN_TO_RESNET_STAGES = ("stem", "stage1", "stage2", "stage3", "stage4:stage3_act")
WRN_TO_WRN_STAGES = ("stem", "stage1", "stage2", "stage3")


def eval_config(*, attacks: str = "clean,pgd20,autoattack", eps: Optional[float] = None,
                norm: Optional[str] = None, step_size: Optional[float] = None,
                version: Optional[str] = None, batch_size: int = 128,
                num_examples: int = 0) -> ml_collections.ConfigDict:
  """The `eval` config of the robustness report: the CIFAR-10 config's (`configs.cifar10`:
  L-inf eps 8/255, PGD step eps / 4, AutoAttack standard), with the given values in its
  place; the PGD step defaults to eps / 4. A value of the wrong type is a ConfigError."""
  cfg = get_config().eval
  try:
    cfg.attacks, cfg.batch_size, cfg.num_examples = attacks, batch_size, num_examples
    if version is not None:
      cfg.autoattack_version = version
    if norm is not None:
      cfg.pgd.norm = norm
    if eps is not None:
      cfg.pgd.eps = float(eps) if isinstance(eps, (int, float, np.number)) else eps
    step = step_size or cfg.pgd.eps / 4
    cfg.pgd.step_size = float(step) if isinstance(step, (int, float, np.number)) else step
  except TypeError as e:
    raise ConfigError(f"an evaluation setting of the wrong type: {e}") from None
  return cfg
