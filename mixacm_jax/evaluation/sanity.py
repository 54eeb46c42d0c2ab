"""The sanity flags of a robustness evaluation, with the meaning the original AutoAttack's
`checks.py` gives them (Croce & Hein), each a function of what the evaluation already
computed (or, for `dynamic`, of one observed forward pass); every flag is a line in the
report's `warnings` and on screen."""
from typing import Any, Dict, List, Mapping, Optional, Sequence

import jax
import numpy as np

from mixacm_jax.errors import ConfigError

SQUARE_MARGIN = 0.002  # Square may lower robust accuracy by this much (0.2 points) unflagged
RANDOMIZED_TOLERANCE = 1e-4


def randomized(draws: Sequence[np.ndarray], deterministic_attacks: bool) -> Optional[str]:
  """Logits of the same inputs in repeated passes (with different draws of the model's
  randomness): normalised per example, they differ by more than the tolerance."""
  unit = [d / (np.linalg.norm(d, axis=-1, keepdims=True) + 1e-10) for d in draws]
  diff = max(float(np.max(np.linalg.norm(a - b, axis=-1)))
             for i, a in enumerate(unit) for b in unit[i + 1:])
  if diff > RANDOMIZED_TOLERANCE and deterministic_attacks:
    return (f"the model's outputs change between passes on the same inputs (by up to "
            f"{diff:.2g}): a randomised defence; evaluate it with autoattack_version=rand "
            "or with mixacm_jax.eot")
  return None


def probabilities(logits: np.ndarray, tol: float = 1e-5) -> Optional[str]:
  """Outputs in [0, 1] that sum to 1: the model returns probabilities, not logits."""
  if logits.max() < 1 + tol and logits.min() > -tol and np.all(
      np.abs(logits.sum(-1) - 1) < tol):
    return ("the model's outputs are probabilities (in [0, 1], summing to 1), not logits: "
            "the margin and DLR losses need logits; return them before the softmax")
  return None


def zero_gradients(bad: int, total: int) -> Optional[str]:
  """Points whose cross-entropy input gradient at the clean input is all zero or not finite."""
  if bad:
    return (f"{bad} of {total} inputs have an all-zero or non-finite input gradient: "
            "gradient masking is likely, so gradient attacks may overestimate robustness "
            "(check Square; for a non-differentiable input transform use mixacm_jax.bpda)")
  return None


def square_succeeds(after_each_stage: Dict[str, float]) -> Optional[str]:
  """Square (black-box) lowering robust accuracy by more than 0.2 points below what the
  white-box stages left: their gradients did not find what a gradient-free search did."""
  if "square" not in after_each_stage or len(after_each_stage) < 2:
    return None
  white_box = min(v for k, v in after_each_stage.items() if k != "square")
  drop = white_box - after_each_stage["square"]
  if drop > SQUARE_MARGIN:
    return (f"Square lowered the robust accuracy by {100 * drop:.2f} points after the "
            "white-box stages: the evaluation may be unreliable (gradient masking); try "
            "Square with more queries, or an adaptive attack")
  return None


def changed_collections(before: Mapping[str, Any], after: Mapping[str, Any]) -> List[str]:
  """The variable collections a forward pass changed or created (`after`: what
  `apply(..., mutable=True)` returns), sown intermediates aside."""
  changed = []
  for name, value in after.items():
    if name == "intermediates":
      continue
    old = before.get(name)
    if old is None or jax.tree_util.tree_structure(old) != jax.tree_util.tree_structure(value) \
        or any(not np.array_equal(a, b) for a, b in zip(jax.tree_util.tree_leaves(old),
                                                         jax.tree_util.tree_leaves(value))):
      changed.append(name)
  return changed


def dynamic(gradients: bool, changed: Sequence[str]) -> Optional[str]:
  """The original's `check_dynamic`: a forward pass that runs gradients (test-time
  optimisation) or changes the model's own state is a dynamic defence, which AutoAttack's
  fixed model assumption does not cover."""
  what = (["computes gradients"] if gradients else []) + (
      [f"changes its state ({', '.join(changed)})"] if changed else [])
  if not what:
    return None
  return (f"the model's forward pass {' and '.join(what)}: it seems to be a dynamic defence, "
          "and the evaluation with AutoAttack might be insufficient (use an adaptive attack)")


def check_target(stages: Sequence[str], target: str, num_classes: int) -> None:
  """ConfigError for a targeted PGD's given class the model does not have."""
  if target.isdigit() and int(target) >= num_classes and any(s.endswith("_t") for s in stages):
    raise ConfigError(f"eval.pgd.target {target} is not a class of the model, which has "
                      f"{num_classes} classes (0 to {num_classes - 1})")


def check_classes(stages: Sequence[str], num_classes: int) -> List[str]:
  """ConfigError for stages the number of classes cannot serve (the DLR losses need 3);
  notes for the targeted stages that get fewer targets than asked."""
  dlr = [s for s in stages if "dlr" in s or s == "apgd-t"]
  if dlr and num_classes < 3:
    raise ConfigError(f"{', '.join(dlr)} use the DLR loss, which needs at least 3 classes; "
                      f"the model has {num_classes}: attack it with apgd-ce, fab-t and square")
  notes = []
  if num_classes < 10 and any(s in ("apgd-t", "fab-t") for s in stages):
    notes.append(f"{num_classes} classes: the targeted stages attack {num_classes - 1} "
                 "target classes, not 9")
  return notes
