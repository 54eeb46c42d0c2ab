"""MixACM on CIFAR-100: robust WRN-34-10 teacher -> ResNet-18."""
from mixacm_jax.configs import cifar


def get_config():
  return cifar.mixacm_config("resnet18", "wrn34_10", cifar.WRN_TO_RESNET_STAGES,
                             dataset="cifar100")
