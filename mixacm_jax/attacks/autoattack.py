"""AutoAttack (Croce & Hein, ICML 2020): attacks run in sequence, each on the points that
all earlier ones left correctly classified; robust accuracy after each is reported.

`standard` is APGD-CE (100 iterations), APGD-T (targeted DLR, 9 target classes, 100
iterations each), FAB-T (9 target classes, 100 iterations each) and Square (5000 queries),
as in the original standard version for L-inf. `apgd` is the two APGD stages only.
"""
from typing import Callable, Dict, List


from mixacm_jax.attacks import apgd as apgd_lib
from mixacm_jax.attacks import fab as fab_lib
from mixacm_jax.attacks import square as square_lib

# name -> attack(logits_fn, x, y, key, eps) -> (x_adv, fooled)
STAGES: Dict[str, Callable] = {
    "apgd-ce": lambda f, x, y, k, eps: apgd_lib.apgd(f, x, y, k, eps=eps, n_iter=100, loss="ce"),
    "apgd-dlr": lambda f, x, y, k, eps: apgd_lib.apgd(f, x, y, k, eps=eps, n_iter=100,
                                                      loss="dlr"),
    "apgd-t": lambda f, x, y, k, eps: apgd_lib.apgd_targeted(f, x, y, k, eps=eps, n_iter=100,
                                                             n_target_classes=9),
    "fab-t": lambda f, x, y, k, eps: fab_lib.fab_targeted(f, x, y, k, eps=eps, n_iter=100,
                                                          n_target_classes=9),
    "square": lambda f, x, y, k, eps: square_lib.square(f, x, y, k, eps=eps, n_queries=5000),
}
VERSIONS: Dict[str, List[str]] = {
    "standard": ["apgd-ce", "apgd-t", "fab-t", "square"],
    "apgd": ["apgd-ce", "apgd-t"],
}


def get_stage(name: str) -> Callable:
  if name not in STAGES:
    raise ValueError(f"unknown AutoAttack stage {name!r}; known: {', '.join(STAGES)}")
  return STAGES[name]


