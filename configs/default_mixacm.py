"""The MixACM pipeline on the embedded digits: a PGD-AT ResNet-18 teacher (width 16), then
half-width ResNet-18 students (width 8) distilled with MixACM, trained naturally, and with KD
only, each at half the teacher's network passes; each evaluated on clean and PGD-10 accuracy
with its training cost. A few minutes on 2 CPU cores, offline.
`--config.teacher.checkpoint=<dir>` skips training the teacher."""
import ml_collections

from mixacm_jax.configs import default


def get_config():
  config = default.get_config()
  config.model.kwargs.base_width = 8          # the student: half the teacher's width
  config.objective.name = "mixacm"
  # Chosen on the digits' validation split (experiments/transfer_study.py, 3 seeds): ACM on
  # the last two block groups, batch 32 (twice the updates for the same passes), 29 epochs:
  # within half the teacher's network passes. The teacher keeps batch 64 and 15 epochs.
  config.objective.mixacm.acm.stages = ("stage3", "stage4")
  config.optim.batch_size = 32
  config.optim.num_epochs = 29
  config.checkpoint.best_metric = "robust_accuracy"

  config.pipeline = ml_collections.ConfigDict()
  config.pipeline.teacher_objective = "pgd_at"
  config.pipeline.teacher_epochs = 15
  config.pipeline.teacher_batch_size = 64
  config.pipeline.students = ("mixacm", "natural", "kd")
  return config
