"""Transfer attacks: the points each attack crafts on a source model (a teacher, a student, a
zoo entry), evaluated on the model under test. In distillation the first question is
whether the student inherits the teacher's adversarial examples. The source's report (the
one engine, each point with the key of its index) returns its points; the target is judged
on them: a point is robust when the target classifies it correctly there."""
from typing import Any, Dict, Mapping, Optional, Tuple

import jax
import numpy as np

from mixacm_jax.evaluation import programs, robustness

Model = Tuple[Any, Any]  # (a Flax model or a logits function, its variables or None)


def predictions(model: Model, x: np.ndarray, labels: np.ndarray, batch_size: int
                ) -> Tuple[np.ndarray, np.ndarray]:
  """(prediction, margin) of `model` at each point, in batches."""
  net, variables = model
  if not hasattr(net, "apply"):
    net, variables = programs.FunctionModel(net), variables or {}
  run = jax.jit(lambda v, x, y: programs.prediction_and_margin(net.apply(v, x), y))
  outs = [run(variables, x[i:i + batch_size], labels[i:i + batch_size])
          for i in range(0, len(labels), batch_size)]
  return tuple(np.concatenate([np.asarray(o[k]) for o in outs]) for k in range(2))


def _judged(target: Model, source_report: Dict[str, Any], images: np.ndarray,
            labels: np.ndarray, batch_size: int) -> Dict[str, Any]:
  """The target's entries for the source report's points: per attack its robust accuracy
  and per-example table (broken_by: the source stage whose point fools the target)."""
  clean_pred, _ = predictions(target, images, labels, batch_size)
  clean_ok = clean_pred == labels
  out = {"clean_accuracy": float(clean_ok.mean()), "attacks": {}, "examples": {}}
  for name, table in source_report["examples"]["attacks"].items():
    pred, margin = predictions(target, table["x_adv"], labels, batch_size)
    robust = clean_ok & (pred == labels)
    source_by = np.asarray(table["broken_by"], object)
    out["attacks"][f"transfer:{name}"] = {
        "robust_accuracy": float(robust.mean()),
        "source_robust_accuracy": source_report["attacks"][name]["robust_accuracy"]}
    out["examples"][f"transfer:{name}"] = {
        "broken_by": list(np.where(~clean_ok, "clean", np.where(robust, "", source_by))),
        "margin": margin, "perturbation": table["perturbation"]}
  return out


def transfer_report(target: Model, source: Model, images: np.ndarray, labels: np.ndarray,
                    eval_cfg, *, source_name: str, seed: int = 0,
                    key: Optional[jax.Array] = None, verbose: bool = False) -> Dict[str, Any]:
  """Each attack of `eval_cfg.attacks` crafted on `source` and evaluated on `target`:
  {"source", "source_clean_accuracy", "clean_accuracy" (the target's), "attacks":
  {"transfer:<attack>": {"robust_accuracy", "source_robust_accuracy"}}, "examples":
  {"transfer:<attack>": per-example table, with "source"}}."""
  source_report = robustness.report_on_arrays(
      source[0], source[1], images, labels, eval_cfg, seed=seed, key=key, verbose=verbose,
      return_points=True)
  judged = _judged(target, source_report, np.asarray(images, np.float32),
                   np.asarray(labels), int(eval_cfg.batch_size))
  for table in judged["examples"].values():
    table["source"] = source_name
  return {"source": source_name, "source_clean_accuracy": source_report["clean_accuracy"],
          "warnings": [f"source: {w}" for w in source_report["warnings"]], **judged}


def matrix(models: Mapping[str, Model], images: np.ndarray, labels: np.ndarray, eval_cfg, *,
           seed: int = 0) -> Dict[str, Dict[str, float]]:
  """{source: {target: robust accuracy of target on the points `eval_cfg.attacks`' last
  attack crafts on source}}: each source attacked once, every model judged on its points
  (the diagonal is the white-box robust accuracy)."""
  out = {}
  for name, model in models.items():
    report = robustness.report_on_arrays(model[0], model[1], images, labels, eval_cfg,
                                         seed=seed, verbose=False, return_points=True)
    last = list(report["examples"]["attacks"])[-1]
    points = report["examples"]["attacks"][last]["x_adv"]
    out[name] = {}
    for target_name, target in models.items():
      pred, _ = predictions(target, points, np.asarray(labels), int(eval_cfg.batch_size))
      clean, _ = predictions(target, np.asarray(images, np.float32), np.asarray(labels),
                             int(eval_cfg.batch_size))
      out[name][target_name] = float(np.mean((clean == labels) & (pred == labels)))
  return out
