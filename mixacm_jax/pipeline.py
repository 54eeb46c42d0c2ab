"""The MixACM pipeline end to end: a robust teacher (trained here or loaded), students
distilled from it and baselines, and a robustness/cost report produced by the code."""
import json
import os
from typing import Any, Callable, Dict, List

import jax

from mixacm_jax import config_checks, input_pipeline, reporting, train
from mixacm_jax import teacher as teacher_lib
from mixacm_jax.errors import ConfigError

COLUMNS = ["run", "model", "objective", "clean_accuracy", "robust_accuracy", "train_seconds",
           "passes_per_example", "total_passes"]


def teacher_config(config):
  """The student's config with the teacher's model, objective and length."""
  cfg = config.copy_and_resolve_references()
  cfg.model = config.teacher.model.copy_and_resolve_references()
  cfg.objective.name = config.pipeline.teacher_objective
  cfg.optim.num_epochs = config.pipeline.teacher_epochs
  cfg.optim.batch_size = config.pipeline.get("teacher_batch_size") or config.optim.batch_size
  return cfg


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


def train_resumable(cfg, run_dir: str, teacher=None) -> Dict[str, Any]:
  """`train.train_and_evaluate`, keeping the training seconds of a run that had already
  finished (running it again only restores and evaluates it)."""
  summary_path = os.path.join(run_dir, "summary.json")
  previous = None
  if os.path.exists(summary_path):
    with open(summary_path) as f:
      previous = json.load(f)
  result = train.train_and_evaluate(cfg, run_dir, teacher=teacher)
  if previous and result["resumed_from"] == result["steps"]:
    result["train_seconds"] = previous["train_seconds"]
  return result


def cached_record(run_dir: str, make: Callable[[], Dict[str, Any]]) -> Dict[str, Any]:
  """`make()` once per run directory: its record is kept in `run_dir/record.json` and read
  back on later calls (so a study resumes run by run)."""
  path = os.path.join(run_dir, "record.json")
  if os.path.exists(path):
    with open(path) as f:
      return json.load(f)
  record = make()
  with open(path, "w") as f:
    json.dump(record, f, indent=2)
  # Every run compiles its own programs; without this a long study exhausts XLA:CPU's JIT
  # code memory ("LLVM ERROR: Unable to allocate section memory").
  jax.clear_caches()
  return record


def result_row(run: str, result: Dict[str, Any]) -> Dict[str, Any]:
  row = {"run": run, **{k: v for k, v in result.items() if k != "state"}}
  row["total_passes"] = float(row.get("student_forward_passes", 0) +
                              row.get("student_backward_passes", 0) +
                              row.get("teacher_forward_passes", 0))
  return row


def run_pipeline(config, workdir: str) -> List[Dict[str, Any]]:
  """Teacher -> students -> report; every stage resumes from its own workdir."""
  info = input_pipeline.get_info(config.data)
  rows = []
  if config.teacher.checkpoint:
    source = config.teacher.checkpoint
    teacher = teacher_lib.load_teacher(config.teacher, info.num_classes, info.image_shape)
  else:
    source = os.path.join(workdir, "teacher")
    if reporting.is_primary():
      print(f"== teacher: {config.teacher.model.name} with "
            f"{config.pipeline.teacher_objective} in {source}", flush=True)
    rows.append(result_row("teacher", train.train_and_evaluate(teacher_config(config), source)))
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
    print(f"\nTeacher: {source}. Accuracy in %, robust = PGD-{config.eval.pgd.steps} "
          f"({config.eval.pgd.norm}, eps={config.eval.pgd.eps:.4g}); passes = network "
          "forward + backward passes per training example-step, and in total.\n")
    print(report, flush=True)
    with open(os.path.join(workdir, "results.json"), "w") as f:
      json.dump(rows, f, indent=2)
    with open(os.path.join(workdir, "results.md"), "w") as f:
      f.write(report + "\n")
  return rows
