"""Default config: the embedded `digits` dataset (scikit-learn's 8x8 handwritten digits) and
a small ResNet-18, PGD-AT (a robust teacher), evaluated on clean and PGD accuracy.
Finishes offline in a few minutes on 2 CPU cores; a smoke-scale stand-in for CIFAR-10."""
import ml_collections


def get_config():
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.log_every_steps = 20

  config.data = ml_collections.ConfigDict()
  config.data.name = "digits"          # embedded; or any TFDS name: cifar10, cifar100, svhn_cropped
  config.data.data_dir = ml_collections.config_dict.placeholder(str)
  config.data.train_split = "train"
  config.data.eval_split = "test"
  config.data.crop_padding = 1         # CIFAR configs use 4 (of 32 pixels); digits are 8x8
  config.data.random_flip = False      # digits are not mirror-symmetric
  config.data.shuffle_buffer = 2048

  config.model = ml_collections.ConfigDict()
  config.model.name = "resnet18"
  # Overrides of the architecture's fields (here: ResNet-18's block counts, at 1/4 width).
  config.model.kwargs = ml_collections.ConfigDict({"base_width": 16, "stage_sizes": (2, 2, 2, 2)})
  config.model.mean = ml_collections.config_dict.placeholder(tuple)
  config.model.std = ml_collections.config_dict.placeholder(tuple)
  config.model.dtype = "float32"

  config.objective = ml_collections.ConfigDict()
  config.objective.name = "pgd_at"     # natural | pgd_at | trades
  config.objective.trades_beta = 6.0
  config.objective.attack = ml_collections.ConfigDict(
      {"eps": 0.1, "step_size": 0.025, "steps": 5, "norm": "linf"})

  config.optim = ml_collections.ConfigDict()
  config.optim.batch_size = 64
  config.optim.num_epochs = 15
  config.optim.num_steps = 0           # > 0 overrides num_epochs
  config.optim.learning_rate = 0.1
  config.optim.momentum = 0.9
  config.optim.nesterov = False
  config.optim.weight_decay = 5e-4
  config.optim.schedule = "cosine"     # cosine | piecewise | constant
  config.optim.warmup_epochs = 1.0
  config.optim.decay_epochs = (50, 75)  # piecewise only
  config.optim.decay_factor = 0.1

  config.eval = ml_collections.ConfigDict()
  config.eval.batch_size = 128
  config.eval.every_steps = 0           # 0: only at the end
  config.eval.num_examples = 0          # 0: the whole split
  config.eval.pgd = ml_collections.ConfigDict(
      {"eps": 0.1, "step_size": 0.025, "steps": 10, "norm": "linf", "loss": "ce"})

  config.checkpoint = ml_collections.ConfigDict()
  config.checkpoint.every_steps = 100
  config.checkpoint.keep = 2
  config.checkpoint.best_metric = "robust_accuracy"
  config.checkpoint.async_save = True
  return config
