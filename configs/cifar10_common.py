"""CIFAR-10 settings shared by the real-scale configs (RobustBench conventions)."""
import ml_collections

from configs import default


def get_config():
  config = default.get_config()
  config.data.name = "cifar10"
  config.data.crop_padding = 4
  config.data.random_flip = True
  config.data.shuffle_buffer = 50_000
  config.model.kwargs = ml_collections.ConfigDict()
  config.optim.batch_size = 128
  config.optim.learning_rate = 0.1
  config.optim.weight_decay = 5e-4
  config.optim.schedule = "piecewise"
  config.optim.warmup_epochs = 0.0
  config.eval.batch_size = 500
  config.eval.every_steps = 5_000
  eps = 8 / 255
  config.objective.attack = ml_collections.ConfigDict(
      {"eps": eps, "step_size": 2 / 255, "steps": 10, "norm": "linf"})
  config.eval.pgd = ml_collections.ConfigDict(
      {"eps": eps, "step_size": 2 / 255, "steps": 20, "norm": "linf", "loss": "ce"})
  config.checkpoint.every_steps = 1_000
  config.log_every_steps = 100
  return config
