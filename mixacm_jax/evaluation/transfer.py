"""Transfer attacks: the points each attack crafts on a source model (a teacher, a student, a
zoo entry), evaluated on the model under test. In distillation the first question is
whether the student inherits the teacher's adversarial examples. The source's report (the
one engine, each point with the key of its index) returns its points; the target is judged
on them: a point is robust when the target classifies it correctly there."""
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import jax
import numpy as np

from mixacm_jax.attacks import registry
from mixacm_jax.errors import ConfigError
from mixacm_jax.evaluation import programs, robustness

Model = Tuple[Any, Any]  # (a Flax model or a logits function, its variables or None)


def predictor(model: Model, batch_size: int) -> Callable:
  """(x, labels) -> (prediction, margin) of `model` at each point, jitted, in batches (on
  this host's first device: the points are this host's)."""
  net, variables = programs.as_model(*model)
  run = jax.jit(lambda v, x, y: programs.prediction_and_margin(net.apply(v, x), y))

  def predict(x: np.ndarray, labels: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    outs = [run(variables, x[i:i + batch_size], labels[i:i + batch_size])
            for i in range(0, len(labels), batch_size)]
    return tuple(np.concatenate([np.asarray(o[k]) for o in outs]) for k in range(2))
  return predict


def _crafted(source: Model, images, labels, eval_cfg, *, real=None, seed: int = 0,
             key: Optional[jax.Array] = None, verbose: bool = False) -> Dict[str, Any]:
  """The source's report with its returned points (real points only)."""
  if not [a for a, _ in registry.parse_attacks(eval_cfg.attacks, eval_cfg.autoattack_version,
                                                   eval_cfg.threat.norm)
          if a != "clean"]:
    raise ConfigError(f"transfer needs an attack to craft points with; eval.attacks is "
                      f"{eval_cfg.attacks!r}")
  return robustness.report_on_arrays(source[0], source[1], images, labels, eval_cfg, real=real,
                                     seed=seed, key=key, verbose=verbose, return_points=True)


def transfer_report(target: Model, source: Model, images: np.ndarray, labels: np.ndarray,
                    eval_cfg, *, source_name: str, real: Optional[np.ndarray] = None,
                    seed: int = 0, key: Optional[jax.Array] = None,
                    verbose: bool = False) -> Dict[str, Any]:
  """Each attack of `eval_cfg.attacks` crafted on `source` and evaluated on `target`:
  {"source", "source_clean_accuracy", "clean_accuracy" (the target's), "attacks":
  {"transfer:<attack>": {"robust_accuracy", "source_robust_accuracy"}}, "examples":
  {"transfer:<attack>": per-example table, with "source"}, "warnings"}. `real` masks
  padding entries (on several hosts, every host passes the same number of entries)."""
  report = _crafted(source, images, labels, eval_cfg, real=real, seed=seed, key=key,
                    verbose=verbose)
  real = np.ones(len(labels), bool) if real is None else np.asarray(real, bool)
  images, labels = np.asarray(images, np.float32)[real], np.asarray(labels)[real]
  predict = predictor(target, int(eval_cfg.batch_size))
  clean_ok = predict(images, labels)[0] == labels
  out = {"source": source_name, "source_clean_accuracy": report["clean_accuracy"],
         "clean_accuracy": float(clean_ok.mean()), "attacks": {}, "examples": {},
         "warnings": [f"source: {w}" for w in report["warnings"]]}
  for name, table in report["examples"]["attacks"].items():
    pred, margin = predict(table["x_adv"], labels)
    robust = clean_ok & (pred == labels)
    out["attacks"][f"transfer:{name}"] = {
        "robust_accuracy": float(robust.mean()),
        "source_robust_accuracy": report["attacks"][name]["robust_accuracy"]}
    out["examples"][f"transfer:{name}"] = {
        "broken_by": list(np.where(~clean_ok, "clean", np.where(
            robust, "", np.asarray(table["broken_by"], object)))),
        "margin": margin, "perturbation": table["perturbation"], "source": source_name}
  return out


def matrix(models: Mapping[str, Model], images: np.ndarray, labels: np.ndarray, eval_cfg, *,
           seed: int = 0) -> Dict[str, Dict[str, float]]:
  """{source: {target: robust accuracy of target on the points `eval_cfg.attacks`' last
  attack crafts on source}}: each source attacked once, every model judged on its points
  (the diagonal is the white-box robust accuracy)."""
  images, labels = np.asarray(images, np.float32), np.asarray(labels)
  predict = {n: predictor(m, int(eval_cfg.batch_size)) for n, m in models.items()}
  clean_ok = {n: p(images, labels)[0] == labels for n, p in predict.items()}
  out = {}
  for name, model in models.items():
    tables = _crafted(model, images, labels, eval_cfg, seed=seed)["examples"]["attacks"]
    points = list(tables.values())[-1]["x_adv"]
    out[name] = {t: float(np.mean(clean_ok[t] & (predict[t](points, labels)[0] == labels)))
                 for t in models}
  return out
