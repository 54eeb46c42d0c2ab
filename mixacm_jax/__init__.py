"""mixacm_jax: robustness transfer (MixACM) and jitted adversarial evaluation in JAX/Flax."""
__version__ = "0.1.0"
