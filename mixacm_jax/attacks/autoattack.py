"""AutoAttack (Croce & Hein, ICML 2020): attacks run in sequence, each on the points that
all earlier ones left correctly classified; robust accuracy after each is reported.

Versions, for L-inf and L2 alike (eps and norm from the config):
- `standard`: APGD-CE (100 iterations), APGD-T (targeted DLR, 9 target classes, 100
  iterations each), FAB-T (9 target classes, 100 iterations each), Square (5000 queries);
- `rand`, for randomized models: APGD-CE and APGD-DLR, 100 iterations, each gradient an
  EOT average over 20 draws of the model's randomness (`logits_fn(x, rng=key)`);
- `apgd`: APGD-CE and APGD-T only (a cheaper subset).
"""
from typing import Callable, Dict, List

from mixacm_jax.attacks import apgd as apgd_lib
from mixacm_jax.attacks import fab as fab_lib
from mixacm_jax.attacks import square as square_lib

EOT_ITER = 20

# name -> attack(logits_fn, x, y, key, eps, norm) -> (x_adv, fooled)
STAGES: Dict[str, Callable] = {
    "apgd-ce": lambda f, x, y, k, eps, norm: apgd_lib.apgd(
        f, x, y, k, eps=eps, n_iter=100, loss="ce", norm=norm),
    "apgd-dlr": lambda f, x, y, k, eps, norm: apgd_lib.apgd(
        f, x, y, k, eps=eps, n_iter=100, loss="dlr", norm=norm),
    "apgd-t": lambda f, x, y, k, eps, norm: apgd_lib.apgd_targeted(
        f, x, y, k, eps=eps, n_iter=100, n_target_classes=9, norm=norm),
    "fab-t": lambda f, x, y, k, eps, norm: fab_lib.fab_targeted(
        f, x, y, k, eps=eps, n_iter=100, n_target_classes=9, norm=norm),
    "square": lambda f, x, y, k, eps, norm: square_lib.square(
        f, x, y, k, eps=eps, n_queries=5000, norm=norm),
    "apgd-ce-eot": lambda f, x, y, k, eps, norm: apgd_lib.apgd(
        f, x, y, k, eps=eps, n_iter=100, loss="ce", norm=norm, eot_iter=EOT_ITER),
    "apgd-dlr-eot": lambda f, x, y, k, eps, norm: apgd_lib.apgd(
        f, x, y, k, eps=eps, n_iter=100, loss="dlr", norm=norm, eot_iter=EOT_ITER),
}
VERSIONS: Dict[str, List[str]] = {
    "standard": ["apgd-ce", "apgd-t", "fab-t", "square"],
    "rand": ["apgd-ce-eot", "apgd-dlr-eot"],
    "apgd": ["apgd-ce", "apgd-t"],
}


def get_stage(name: str) -> Callable:
  if name not in STAGES:
    raise ValueError(f"unknown AutoAttack stage {name!r}; known: {', '.join(STAGES)}")
  return STAGES[name]
