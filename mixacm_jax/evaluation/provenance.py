"""What decides a report's numbers, as the report records it (`settings`): the seed and its
PRNG key, the threat, every attack's stages with their settings, and the package versions."""
from importlib import metadata
from typing import Any, Dict, Mapping, Optional

import jax
import numpy as np

from mixacm_jax.attacks import autoattack, registry

PACKAGES = ("mixacm_jax", "jax", "jaxlib", "flax", "numpy")


def _version(package: str) -> Optional[str]:
  try:
    return metadata.version(package)
  except metadata.PackageNotFoundError:
    return None


def _stage_settings(stage: str, eval_cfg, eps: float,
                    overrides: Optional[Mapping[str, Any]]) -> Dict[str, Any]:
  if stage in autoattack.STAGES:
    keywords = dict(getattr(autoattack.STAGES[stage], "keywords", {}))
    if stage.endswith("-eot"):
      keywords["eot_iter"] = autoattack.EOT_ITER
    keywords.update(dict((overrides or {}).get(stage, ())))
    return {k: v for k, v in keywords.items() if isinstance(v, (int, float, str, bool))}
  settings = {"step_size": float(eval_cfg.pgd.step_size * eps / eval_cfg.threat.eps),
              "restarts": int(eval_cfg.pgd.get("restarts", 1))}
  if stage.endswith("_t"):
    settings["target"] = str(eval_cfg.pgd.get("target", "random"))
  return settings


def attack_settings(eval_cfg, attacks, eps: float, seed: int, key: Optional[jax.Array] = None,
                    stage_settings: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
  """The report's `settings` for `attacks` (`registry.parse_attacks`) at `eps`; `key`
  replaces `PRNGKey(seed)`, `stage_settings` overrides AutoAttack stages' settings."""
  key = jax.random.PRNGKey(seed) if key is None else key
  stages = {stage: _stage_settings(stage, eval_cfg, eps, stage_settings)
            for _, names in attacks for stage in names if stage != "clean"}
  return {"seed": seed, "prng_key": [int(v) for v in np.asarray(key)],
          "eps": float(eps), "norm": eval_cfg.threat.norm, "attacks": eval_cfg.attacks,
          "autoattack_version": eval_cfg.autoattack_version,
          "autoattack_mode": eval_cfg.get("autoattack_mode", "worst_case"),
          "autoattack_settings": registry.autoattack_settings(
              attacks, eval_cfg.autoattack_version, eval_cfg.threat.norm),
          "apgd_as_original": bool(eval_cfg.get("apgd_as_original", False)),
          "batch_size": int(eval_cfg.batch_size), "stages": stages,
          "versions": {p: _version(p) for p in PACKAGES}}
