"""WRN-34-10 with TRADES (Zhang et al. 2019): beta 6, 10 steps of 2/255, lr 0.1 -> 0.01 at 75."""
from mixacm_jax.configs import cifar


def get_config():
  config = cifar.get_config()
  config.model.name = "wrn34_10"
  config.objective.name = "trades"
  config.objective.trades.beta = 6.0
  config.optim.weight_decay = 2e-4
  config.optim.num_epochs = 100
  config.optim.decay_epochs = (75, 90)
  return config
