"""ResNet-18 on CIFAR-10 with standard training (a non-robust baseline / student)."""
from mixacm_jax.configs import cifar


def get_config():
  config = cifar.get_config()
  config.model.name = "resnet18"
  config.objective.name = "natural"
  config.optim.num_epochs = 200
  config.optim.decay_epochs = (100, 150)
  return config
