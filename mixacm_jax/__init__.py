"""mixacm_jax: robustness transfer (MixACM) and jitted adversarial evaluation in JAX/Flax.

One call each (imported on first use, so `import mixacm_jax` stays light):
`load_pytorch`, `load_robustbench`, `evaluate` (mixacm_jax.api), `run_autoattack`
(mixacm_jax.evaluation.robustness), `eot` and `bpda` (mixacm_jax.attacks.wrappers),
`mixacm_loss` (mixacm_jax.objectives.mixacm).
"""
import importlib

from mixacm_jax.runtime import xla_cpu

xla_cpu.configure()  # before any JAX backend starts: XLA:CPU's convolution backend

__version__ = "0.2.0"

_PUBLIC = {"load_pytorch": "mixacm_jax.api", "load_robustbench": "mixacm_jax.api",
           "evaluate": "mixacm_jax.api",
           "eval_config": "mixacm_jax.api",
           "run_autoattack": "mixacm_jax.evaluation.robustness",
           "eot": "mixacm_jax.attacks.wrappers", "bpda": "mixacm_jax.attacks.wrappers",
           "mixacm_loss": "mixacm_jax.objectives.mixacm"}
__all__ = sorted(_PUBLIC)


def __getattr__(name):
  if name in _PUBLIC:
    return getattr(importlib.import_module(_PUBLIC[name]), name)
  raise AttributeError(f"module 'mixacm_jax' has no attribute {name!r}")
