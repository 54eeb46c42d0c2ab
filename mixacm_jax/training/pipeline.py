"""The MixACM pipeline end to end: a robust teacher (trained here or loaded), students
distilled from it and baselines, and a robustness/cost report produced by the code."""
import json
import os
import re
from typing import Any, Dict, List

from mixacm_jax.configs import checks as config_checks
from mixacm_jax.data import input_pipeline
from mixacm_jax.errors import ConfigError
from mixacm_jax.runtime import reporting, storage, workdir_lock
from mixacm_jax.training import teacher as teacher_lib, train

COLUMNS = ["run", "model", "objective", "clean_accuracy", "robust_accuracy", "train_seconds",
           "passes_per_example", "total_passes"]


def apply_overrides(cfg, overrides: Dict[str, Any]):
  """Sets dotted config paths in place, e.g. {"objective.mixacm.w_kd": 0.0}; returns cfg.
  A path that names no field is refused (a new key would be set and silently ignored)."""
  for path, value in overrides.items():
    problem = config_checks.unknown_key(cfg, path)
    if problem:
      raise ConfigError(problem)
    *parents, leaf = path.split(".")
    node = cfg
    for p in parents:
      node = node[p]
    node[leaf] = value
  return cfg


def student_config(config, objective: str):
  cfg = config.copy_and_resolve_references()
  cfg.objective.name = objective
  return cfg


def result_row(run: str, result: Dict[str, Any]) -> Dict[str, Any]:
  row = {"run": run, **{k: v for k, v in result.items() if k != "state"}}
  row["total_passes"] = float(row.get("student_forward_passes", 0) +
                              row.get("student_backward_passes", 0) +
                              row.get("teacher_forward_passes", 0) +
                              row.get("teacher_backward_passes", 0))
  return row


def run_pipeline(config, workdir: str) -> List[Dict[str, Any]]:
  """Teacher -> students -> report; every stage resumes from its own workdir. Every stage's
  config is checked before the first starts; the workdir is locked (one run in it)."""
  configs = [student_config(config, objective) for objective in config.pipeline.students]
  if not teacher_lib.is_given(config.teacher):
    configs.insert(0, teacher_lib.training_config(config))
  for cfg in configs:
    config_checks.validate_training(cfg)
  config_checks.check_writable(workdir)
  with workdir_lock.hold(workdir):
    return _run_pipeline(config, workdir)


def _run_pipeline(config, workdir: str) -> List[Dict[str, Any]]:
  info = input_pipeline.get_info(config.data)
  rows = []
  if teacher_lib.is_given(config.teacher):
    teacher = teacher_lib.load_teacher(config.teacher, info.num_classes, info.image_shape)
    source = teacher.source
  else:
    source = os.path.join(workdir, "teacher")
    if reporting.is_primary():
      print(f"== teacher: {config.teacher.model.name} with "
            f"{config.pipeline.teacher_objective} in {source}", flush=True)
    result = train.train_and_evaluate(teacher_lib.training_config(config), source)
    rows.append(result_row("teacher", result))
    teacher = teacher_lib.load_teacher(config.teacher, info.num_classes, info.image_shape,
                                       path=source)
  for objective in config.pipeline.students:
    run_dir = os.path.join(workdir, f"student_{objective}")
    if reporting.is_primary():
      print(f"== student: {config.model.name} with {objective} in {run_dir}", flush=True)
    result = train.train_and_evaluate(student_config(config, objective), run_dir,
                                      teacher=teacher)
    rows.append(result_row(f"student ({objective})", result))
  report = reporting.table(rows, COLUMNS)
  if reporting.is_primary():
    first = next(iter(config.train_evals.values()))
    attacks = re.sub(r"^(pgd|cw)(\d+)$", lambda m: f"{m[1].upper()}-{m[2]}", ", ".join(
        a for a in first.attacks.split(",") if a != "clean"))
    print(f"\nTeacher: {source}. Accuracy in %, robust = {attacks} "
          f"({config.eval.threat.norm}, eps={config.eval.threat.eps:.4g}); passes = network "
          "forward + backward passes per training example-step, and in total.\n")
    print(report, flush=True)
    for name, text in (("results.json", json.dumps(rows, indent=2)), ("results.md", report)):
      path = os.path.join(workdir, name)
      with storage.writing("write", path), open(path, "w") as f:
        f.write(text + "\n")
  return rows
