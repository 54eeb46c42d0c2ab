"""PreActResNet-18, PGD-10 adversarial training (Madry et al.; Rice et al.'s schedule)."""
from mixacm_jax.configs import cifar


def get_config():
  config = cifar.get_config()
  config.model.name = "preact_resnet18"
  config.objective.name = "pgd_at"
  config.optim.num_epochs = 200
  config.optim.decay_epochs = (100, 150)
  return config
