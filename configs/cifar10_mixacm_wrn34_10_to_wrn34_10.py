"""MixACM on CIFAR-10: robust WRN-34-10 teacher -> WRN-34-10 student (identity-initialised
transformations, since the widths match)."""
from mixacm_jax.configs import cifar


def get_config():
  return cifar.mixacm_config("wrn34_10", "wrn34_10", cifar.WRN_TO_WRN_STAGES)
