"""MixACM on CIFAR-10: a robust WRN-34-10 teacher (e.g. TRADES, converted or trained here)
distilled into ResNet-18."""
from mixacm_jax.configs import cifar10


def get_config():
  return cifar10.mixacm_config("resnet18", "wrn34_10",
                                      cifar10.WRN_TO_RESNET_STAGES)
