"""PreActResNet-18, PGD-10 adversarial training (Madry et al.; Rice et al.'s schedule)."""
from configs import cifar10_common


def get_config():
  config = cifar10_common.get_config()
  config.model.name = "preact_resnet18"
  config.objective.name = "pgd_at"
  config.optim.num_epochs = 200
  config.optim.decay_epochs = (100, 150)
  return config
