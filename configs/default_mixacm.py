"""The MixACM pipeline on the embedded digits: a PGD-AT ResNet-18 teacher (width 16), then
half-width ResNet-18 students (width 8) distilled with MixACM, trained naturally, and with KD
only; each evaluated on clean and PGD-10 accuracy with its training cost. A few minutes on
2 CPU cores, offline. `--config.teacher.checkpoint=<dir>` skips training the teacher."""
import ml_collections

from configs import default


def get_config():
  config = default.get_config()
  config.model.kwargs.base_width = 8          # the student: half the teacher's width
  config.objective.name = "mixacm"
  config.optim.num_epochs = 15
  config.checkpoint.best_metric = "robust_accuracy"

  config.pipeline = ml_collections.ConfigDict()
  config.pipeline.teacher_objective = "pgd_at"
  config.pipeline.teacher_epochs = 15
  config.pipeline.students = ("mixacm", "natural", "kd")
  return config
