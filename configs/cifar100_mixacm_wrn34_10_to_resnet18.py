"""MixACM on CIFAR-100: robust WRN-34-10 teacher -> ResNet-18."""
from configs import cifar10_common


def get_config():
  return cifar10_common.mixacm_config("resnet18", "wrn34_10",
                                      cifar10_common.WRN_TO_RESNET_STAGES, "cifar100")
