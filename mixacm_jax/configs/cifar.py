"""The CIFAR-10 / CIFAR-100 settings shared by the real-scale configs (RobustBench
conventions: L-inf eps 8/255, PGD step 2/255)."""
import ml_collections

from mixacm_jax.configs import default
from mixacm_jax.errors import ConfigError

DATASETS = ("cifar10", "cifar100")
EPS, STEP_SIZE = 8 / 255, 2 / 255

# Block matching from a WRN teacher (stem, 3 groups) to a ResNet student (stem, 4 groups):
# the student's last group meets the teacher's final activated features.
WRN_TO_RESNET_STAGES = ("stem", "stage1", "stage2", "stage3", "stage4:stage3_act")
WRN_TO_WRN_STAGES = ("stem", "stage1", "stage2", "stage3")


def get_config(dataset: str = "cifar10"):
  if dataset not in DATASETS:
    raise ConfigError(f"unknown CIFAR dataset {dataset!r}; known: {', '.join(DATASETS)}")
  config = default.get_config()
  config.data.update(name=dataset, crop_padding=4, random_flip=True,
                     num_threads=16,  # PNG decoding + augmentation per example
                     prefetch=8)
  for model in (config.model, config.teacher.model, config.transfer.model):
    model.kwargs = ml_collections.ConfigDict()  # the architectures' own sizes
  config.optim.update(batch_size=128, learning_rate=0.1, weight_decay=5e-4,
                      schedule="piecewise", warmup_epochs=0.0)
  config.eval = default.eval_settings(eps=EPS, step_size=STEP_SIZE, batch_size=500,
                                      attacks="clean,pgd20,cw20,autoattack")
  config.train_evals.pgd = default.evaluation("clean,pgd20", every_steps=5_000)
  default.set_training_attacks(config.objective, EPS, STEP_SIZE, 10)
  config.checkpoint.every_steps = 1_000
  config.log_every_steps = 100
  return config


def mixacm_config(student: str, teacher: str, stages, dataset: str = "cifar10"):
  """MixACM distillation from a robust `teacher` (give its checkpoint with
  --config.teacher.checkpoint=<dir>) into `student`. Schedule: 200 epochs, lr 0.1 decayed
  10x at 100 and 150 (this project's default; the paper's exact schedule is not restated)."""
  config = get_config(dataset)
  config.model.name = student
  config.objective.name = "mixacm"
  config.objective.mixacm.acm.stages = tuple(stages)
  config.teacher.model.name = teacher
  config.optim.num_epochs = 200
  config.optim.decay_epochs = (100, 150)
  config.pipeline = ml_collections.ConfigDict()
  config.pipeline.teacher_objective = "trades"
  config.pipeline.teacher_epochs = 100
  config.pipeline.students = ("mixacm", "natural", "kd")
  return config
