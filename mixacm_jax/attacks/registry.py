"""Attack names, as `config.eval.attacks` spells them, to attack functions.

`clean`, `fgsm`, `pgd<k>` (PGD-k on cross-entropy), `cw<k>` (PGD-k on the CW margin), their
targeted forms `pgd<k>_t` and `cw<k>_t` (towards `eval.pgd.target`), each AutoAttack stage by
name (`apgd-ce`, `apgd-t`, `fab-t`, `square`, ...), and `autoattack`
(the stages of a version, each on the points the earlier ones left correct); and the
minimum-norm attacks of `config.eval.min_norm` (`fab`, `fmn`).
"""
import re
from typing import Callable, Dict, List, Tuple

import numpy as np

from mixacm_jax.attacks import autoattack, fab, fmn, pgd as pgd_lib, targets
from mixacm_jax.errors import ConfigError


def stage_fn(name: str, norm: str, restarts: int = 1, apgd_as_original: bool = False,
             settings: Tuple[Tuple[str, object], ...] = (), target: str = "random") -> Callable:
  """attack(logits_fn, x, y, key, rank, eps, step_size) -> x_adv for one named attack. eps
  and the PGD step are arguments (traced), so an eps sweep compiles each attack once; `rank`
  (a target class rank, see `autoattack.stage_ranks`) is read by targeted stages only;
  `apgd_as_original` is the APGD stages' `as_original` (see `apgd.apgd`); `settings`
  overrides an AutoAttack stage's own (e.g. (("n_queries", 1000),) for Square); `target` is
  the targeted PGD's (`pgd<k>_t`, `cw<k>_t`; see `targets.choose`)."""
  m = re.fullmatch(r"(pgd|cw)(\d+)(_t)?", name)
  if m:
    loss = "ce" if m.group(1) == "pgd" else "margin"
    steps, targeted = int(m.group(2)), bool(m.group(3))
    pick = lambda f, x, y, k: (targets.choose(target, f(x), y, k) if targeted else None)
    return lambda f, x, y, k, rank, eps, step: pgd_lib.pgd(
        f, x, y, k, eps=eps, step_size=step, steps=steps, norm=norm, loss=loss,
        restarts=restarts, y_target=pick(f, x, y, k))[0]
  if name == "fgsm":
    return lambda f, x, y, k, rank, eps, step: pgd_lib.fgsm(f, x, y, eps=eps, norm=norm)[0]
  if name in autoattack.STAGES:
    if norm not in pgd_lib.NORMS:
      raise ConfigError(f"unknown norm {norm!r}; known: {', '.join(pgd_lib.NORMS)}")
    targeted = autoattack.is_targeted(name)
    settings = dict(settings)
    if apgd_as_original and name.startswith("apgd"):
      settings["as_original"] = True
    return lambda f, x, y, k, rank, eps, step: autoattack.call_stage(
        name, f, x, y, k, rank if targeted else None, eps=eps, norm=norm, **settings)[0]
  raise ConfigError(f"unknown attack {name!r}; known: clean, fgsm, pgd<k>, cw<k>, "
                    "pgd<k>_t, cw<k>_t, "
                    f"{', '.join(autoattack.STAGES)}, autoattack")


def parse_attacks(spec: str, version: str, norm: str = "linf") -> List[Tuple[str, List[str]]]:
  """[(report name, [stage names])]: `autoattack` expands into its stages under `norm`."""
  out = []
  for name in [s.strip() for s in spec.split(",") if s.strip()]:
    if name == "autoattack":
      try:
        out.append((name, autoattack.get_version(version, norm)))
      except ValueError as e:
        raise ConfigError(str(e)) from None
    else:
      out.append((name, [name]))
  return out


def autoattack_settings(attacks: List[Tuple[str, List[str]]], version: str, norm: str = "linf"
                        ) -> Dict[str, Dict[str, object]]:
  """The settings `version` gives its stages under `norm` (e.g. `plus`'s restarts) where
  `autoattack` is one of `attacks` (`parse_attacks`); {} otherwise."""
  if any(name == "autoattack" for name, _ in attacks):
    return autoattack.version_settings(version, norm)
  return {}


def validate_attacks(spec: str, version: str, norm: str) -> None:
  """Raises ConfigError for an unknown attack or AutoAttack version (before any work)."""
  parse_attacks("autoattack", version, norm)
  for _, stages in parse_attacks(spec, version, norm):
    for stage in stages:
      if stage != "clean":
        stage_fn(stage, norm)


# The minimum-norm attacks (`eval.min_norm`): name -> attack(logits_fn, x, y, norm, steps) ->
# (x_adv, found), each point's smallest adversarial perturbation found, from x, unbounded.
MIN_NORM: Dict[str, Callable] = {
    "fab": lambda f, x, y, norm, steps: fab.fab_untargeted(f, x, y, None, eps=np.inf,
                                                           n_iter=steps, norm=norm),
    "fmn": lambda f, x, y, norm, steps: fmn.fmn(f, x, y, norm=norm, steps=steps),
}


def parse_min_norm(spec: str) -> List[str]:
  """The minimum-norm attacks of `eval.min_norm` (comma-separated); ConfigError if unknown."""
  names = [s.strip() for s in spec.split(",") if s.strip()]
  unknown = [n for n in names if n not in MIN_NORM]
  if unknown:
    raise ConfigError(f"unknown minimum-norm attack {unknown[0]!r} in eval.min_norm; known: "
                      f"{', '.join(MIN_NORM)}")
  return names
