"""MixACM on CIFAR-10: robust WRN-34-10 teacher -> WRN-34-10 student (identity-initialised
transformations, since the widths match)."""
from configs import cifar10_common


def get_config():
  return cifar10_common.mixacm_config("wrn34_10", "wrn34_10", cifar10_common.WRN_TO_WRN_STAGES)
