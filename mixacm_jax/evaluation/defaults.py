"""The library's evaluation defaults (`mixacm_jax.evaluate`, `run_autoattack`): RobustBench's
CIFAR protocol, L-inf eps 8/255 with PGD's step eps / 4 and AutoAttack standard."""
from typing import Optional

import ml_collections
import numpy as np

from mixacm_jax.configs import default
from mixacm_jax.errors import ConfigError

EPS = 8 / 255
ATTACKS = "clean,pgd20,autoattack"


def _number(value):
  return float(value) if isinstance(value, (int, float, np.number)) else value


def eval_config(*, attacks: str = ATTACKS, eps: Optional[float] = None,
                norm: Optional[str] = None, step_size: Optional[float] = None,
                version: Optional[str] = None, mode: Optional[str] = None,
                batch_size: int = 128, num_examples: int = 0) -> ml_collections.ConfigDict:
  """An `eval` config (see `configs.default.eval_settings`) with these defaults and the
  given values in their place; the PGD step defaults to eps / 4; `version` and `mode` are
  AutoAttack's (`autoattack_version`, `autoattack_mode`). A value of the wrong type is a
  ConfigError."""
  cfg = default.eval_settings(eps=EPS, step_size=EPS / 4)
  try:
    cfg.attacks, cfg.batch_size, cfg.num_examples = attacks, batch_size, num_examples
    if version is not None:
      cfg.autoattack_version = version
    if mode is not None:
      cfg.autoattack_mode = mode
    if norm is not None:
      cfg.threat.norm = norm
    if eps is not None:
      cfg.threat.eps = _number(eps)
    cfg.pgd.step_size = _number(step_size or cfg.threat.eps / 4)
  except TypeError as e:
    raise ConfigError(f"an evaluation setting of the wrong type: {e}") from None
  return cfg
