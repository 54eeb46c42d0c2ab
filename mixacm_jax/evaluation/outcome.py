"""Per example, what one attack did: the returned point, the stage that broke it, and the
checks every returned point passes (inside the threat's ball and [0, 1], finite, and
classified again as the attack's flags say)."""
from typing import Callable, NamedTuple

import numpy as np

from mixacm_jax.errors import AttackConstraintError
from mixacm_jax.evaluation.split import Split

CLEAN_MISCLASSIFIED, ROBUST = -2, -1  # per-example codes beside the stage index


def perturbation(x_adv: np.ndarray, x: np.ndarray, norm: str) -> np.ndarray:
  """Each point's perturbation norm."""
  d = (x_adv - x).reshape(x.shape[0], -1)
  if norm == "l1":
    return np.abs(d).sum(1)
  return np.abs(d).max(1) if norm == "linf" else np.linalg.norm(d, axis=1)


def violations(x_adv: np.ndarray, x: np.ndarray, eps: float, norm: str, tol: float = 1e-5
               ) -> int:
  """How many points are outside the `norm` ball of `eps` or [0, 1], or not finite."""
  flat = x_adv.reshape(x.shape[0], -1)
  # Relative beyond eps = 1: an L1 norm sums thousands of float32 entries.
  return int(np.sum((perturbation(x_adv, x, norm) > eps + tol * max(1.0, eps))
                    | (flat.min(1) < -tol)
                    | (flat.max(1) > 1 + tol) | ~np.all(np.isfinite(flat), axis=1)))


class Verified(NamedTuple):
  """One attack's per-example table over the real points.

  code: the index of the stage that broke each point, ROBUST or CLEAN_MISCLASSIFIED.
  margin: true logit minus the largest other at the returned point (< 0: misclassified).
  perturbation: the returned point's perturbation norm.
  ties: points whose flag disagrees with a margin within its tie tolerance of 0 (see
    `programs.tie_tolerance`): counted, not an error.
  disagree: other disagreements (counted only for a randomised model, else an error).
  """
  code: np.ndarray
  margin: np.ndarray
  perturbation: np.ndarray
  ties: int
  disagree: int


class Outcome:
  """Per example, for one attack: the returned point (the first adversarial point found, the
  clean input where none was) and the stage that broke it."""

  def __init__(self, data: Split, clean_correct: np.ndarray):
    self.data = data
    self.x_adv = data.images.copy()
    self.code = np.where(clean_correct, ROBUST, CLEAN_MISCLASSIFIED)

  def broken(self, idx: np.ndarray, x_adv: np.ndarray, stage_index: int) -> None:
    self.x_adv[idx] = x_adv
    self.code[idx] = stage_index

  def verify(self, margins: Callable, p_vars, robust: np.ndarray, norm: str, name: str, *,
             strict: bool = True) -> Verified:
    """The model's prediction at every returned point must agree with the attack's flags
    (robust <=> still correctly classified); ties (|margin| < tolerance) are counted, and
    so are all disagreements when not `strict` (a randomised model)."""
    d = self.data
    pred, margin, tolerance = d.map_batches(margins, p_vars, self.x_adv)
    disagree = d.real & ((pred == d.labels) != robust)
    ties = disagree & (np.abs(margin) < tolerance)
    wrong = np.flatnonzero(disagree & ~ties)
    if len(wrong) and strict:
      raise AttackConstraintError(
          f"{name}: evaluated again, {len(wrong)} returned points disagree with the attack's "
          f"robust/broken flags (first indices {wrong[:5].tolist()}): the model is not "
          "deterministic, or the attack's bookkeeping is wrong")
    return Verified(self.code[d.real], margin[d.real],
                    perturbation(self.x_adv, d.images, norm)[d.real], int(ties.sum()),
                    0 if strict else len(wrong))
