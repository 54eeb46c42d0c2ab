"""Minimum-norm evaluation: per point the smallest adversarial perturbation an attack finds
(untargeted FAB or FMN, which look for exactly that), and from it the robustness curve,
robust accuracy at every eps from one run: a point is robust at eps when its smallest
perturbation found is larger (0 for a point misclassified already, inf where none was
found)."""
from typing import Any, Dict, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mixacm_jax.attacks import registry
from mixacm_jax.evaluation import outcome, programs


def smallest_perturbations(model, variables, images: np.ndarray, labels: np.ndarray, *,
                           norm: str, batch_size: int, attack: str = "fab",
                           n_iter: int = 100) -> np.ndarray:
  """(N,) per point the norm of the smallest adversarial perturbation `attack` finds in
  `n_iter` steps (from x, deterministic), 0 where x is misclassified already and inf where
  none is found."""
  registry.parse_min_norm(attack)
  model, variables = programs.as_model(model, variables)
  logits_fn = jax.tree_util.Partial(lambda v, x: model.apply(v, x), variables)
  images, labels = np.asarray(images, np.float32), np.asarray(labels, np.int32)
  out = np.zeros(len(labels), np.float32)
  for i in range(0, len(labels), batch_size):
    x, y = jnp.asarray(images[i:i + batch_size]), jnp.asarray(labels[i:i + batch_size])
    correct = np.asarray(jnp.argmax(logits_fn(x), -1) == y)
    x_adv, found = registry.MIN_NORM[attack](logits_fn, x, y, norm, n_iter)
    size = outcome.perturbation(np.asarray(x_adv), np.asarray(x), norm)
    found = np.asarray(found) & np.isfinite(size)  # a non-finite point is no perturbation
    out[i:i + batch_size] = np.where(correct, np.where(found, size, np.inf), 0.0)
  return out


def curve(norms: np.ndarray, epsilons: Sequence[float]) -> list:
  """Robust accuracy at each eps: the fraction of points whose smallest perturbation is
  larger than eps."""
  return [float(np.mean(norms > e)) for e in epsilons]


def report(model, variables, images: np.ndarray, labels: np.ndarray, eval_cfg, *,
           attack: str = "fab", epsilons: Optional[Sequence[float]] = None) -> Dict[str, Any]:
  """{"attack", "norm", "median" (over the clean-correct points found), "found",
  "robust_accuracy_at_eps" (at eval.threat.eps), "curve": {"eps", "accuracy"},
  "per_point"}: the curve over `epsilons` (default: 101 from 0 to twice eval.threat.eps or
  the largest perturbation found)."""
  norm, eps = eval_cfg.threat.norm, float(eval_cfg.threat.eps)
  norms = smallest_perturbations(model, variables, images, labels, norm=norm,
                                 batch_size=int(eval_cfg.batch_size), attack=attack)
  finite = norms[np.isfinite(norms) & (norms > 0)]
  if epsilons is None:
    epsilons = np.linspace(0.0, max(2 * eps, float(finite.max(initial=0.0))), 101).tolist()
  return {"attack": attack, "norm": norm,
          "median": float(np.median(finite)) if len(finite) else None,
          "found": int(len(finite)), "robust_accuracy_at_eps": float(np.mean(norms > eps)),
          "curve": {"eps": list(map(float, epsilons)), "accuracy": curve(norms, epsilons)},
          "per_point": norms}
