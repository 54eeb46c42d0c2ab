"""The scaffold the experiment scripts stand on: one teacher per seed, then a grid of points
over the seeds, each run's record kept in its own directory (a study resumes run by run),
mean ± std with the worst seed, the Markdown writer and the files a study leaves behind.

A script defines its grid (points, overrides, labels) and how to summarise and draw it;
`--render_only` re-writes `results.md` and the plots from a committed `results.json`
without training anything, which reproduces the committed tables exactly.
"""
import datetime
import functools
import json
import os
import platform
import sys
import time
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence

from absl import flags, logging
import jax
import numpy as np

from mixacm_jax import objectives
from mixacm_jax.data import input_pipeline
from mixacm_jax.runtime import compilation_cache
from mixacm_jax.training import pipeline, teacher as teacher_lib, train

RENDER_ONLY = flags.DEFINE_bool(
    "render_only", False, "Re-write results.md and the plots from --out/results.json "
    "(nothing is trained or attacked).")


class Method(NamedTuple):
  """A way to train the student: its objective, dotted config overrides and label; the
  teacher it distils from (a key of TEACHERS); and, when set, a budget: the number of epochs
  is chosen so that its training passes are nearest to this fraction of the teacher's."""
  objective: str
  overrides: Dict[str, Any]
  label: str
  teacher: str = "teacher"
  passes_ratio: Optional[float] = None
  # Evaluate (clean, PGD) after every epoch: a robust accuracy that collapses during FGSM
  # training is catastrophic overfitting (Wong et al.), which only the history shows.
  eval_every_epoch: bool = False
  # A second, clean teacher (a key of TEACHERS): MTARD's.
  clean_teacher: Optional[str] = None


# The teachers one seed may train: run name -> objective (None: the config's
# pipeline.teacher_objective, the robust one). Same architecture, epochs and batch size.
TEACHERS = {"teacher": None, "teacher_natural": "natural"}
TEACHER_LABELS = {"teacher": "teacher", "teacher_natural": "natural teacher (same architecture "
                  "and epochs, natural training)"}

_NO_MIXUP = {"objective.mixacm.mixup_alpha": 0.0}
METHODS = {
    "natural": Method("natural", {}, "natural training"),
    "kd": Method("kd", {}, "KD only"),
    "acm": Method("mixacm", {"objective.mixacm.w_kd": 0.0, **_NO_MIXUP}, "ACM only (+ CE)"),
    "acm_kd": Method("mixacm", _NO_MIXUP, "ACM + KD"),
    "acm_mixup": Method("mixacm", {"objective.mixacm.w_kd": 0.0}, "ACM + mixup"),
    "mixacm": Method("mixacm", {}, "MixACM (ACM + KD + mixup)"),
    "ard": Method("ard", {}, "ARD (adversarial KD)"),
    "rslad": Method("rslad", {}, "RSLAD (adversarial KD)"),
    "pgd_at": Method("pgd_at", {}, "PGD-AT of the student"),
    # The controls: is the robustness transferred from the robust teacher?
    "mixup": Method("mixup", {}, "mixup only (no teacher)"),
    "mixacm_natural_teacher": Method("mixacm", {}, "MixACM from a natural teacher",
                                     teacher="teacher_natural"),
    # Cheap adversarial training at MixACM's budget (half the teacher's passes).
    "fast_at_equal": Method("fast_at", {}, "fast-AT (FGSM-RS) at 0.5x the teacher's passes",
                            passes_ratio=0.5, eval_every_epoch=True),
    "pgd_at_equal": Method("pgd_at", {}, "PGD-AT of the student at 0.5x the teacher's passes",
                           passes_ratio=0.5),
    # The robust distillation methods at their authors' settings (configs.default) and the
    # config's student length; MTARD's clean teacher is the natural one.
    "iad": Method("iad", {}, "IAD"),
    "adaad": Method("adaad", {}, "AdaAD"),
    "adaad_igdm": Method("adaad", {"objective.adaad.igdm_alpha": 1.0}, "AdaAD + IGDM"),
    "mtard": Method("mtard", {}, "MTARD", clean_teacher="teacher_natural"),
    "saad": Method("saad", {}, "SAAD"),
    "peeraid": Method("peeraid", {}, "PeerAiD (a peer, no teacher)"),
}
# Each distillation method again at MixACM's budget, half the teacher's passes.
METHODS.update({f"{name}_equal": METHODS[name]._replace(
    label=f"{METHODS[name].label} at 0.5x the teacher's passes", passes_ratio=0.5)
                for name in ("ard", "rslad", "iad", "adaad", "adaad_igdm", "mtard", "saad",
                             "peeraid")})


def method_config(config, method: Method, seed: int, extra: Optional[Dict[str, Any]] = None,
                  workdir: str = ""):
  """The student config of `method` for `seed`: its objective and overrides, then `extra`,
  then (with a budget) the epochs that spend the budget. A clean teacher is read from the
  seed's run of that kind in `workdir` (see `teachers_per_seed`)."""
  cfg = pipeline.student_config(config, method.objective)
  cfg.seed = seed
  if method.clean_teacher:
    cfg.clean_teacher = cfg.teacher.copy_and_resolve_references()
    cfg.clean_teacher.checkpoint = os.path.join(workdir, f"seed{seed}", method.clean_teacher)
  cfg = pipeline.apply_overrides(pipeline.apply_overrides(cfg, method.overrides), extra or {})
  if method.passes_ratio is not None:
    fit_epochs_to_passes(cfg, method.passes_ratio * training_passes(
        teacher_lib.training_config(config)))
  if method.eval_every_epoch:
    cfg.train_evals.pgd.every_steps = input_pipeline.steps_per_epoch(cfg.data, cfg.optim.batch_size)
  return cfg


def eval_history(run_dir: str) -> List[List[float]]:
  """[step, robust accuracy] of every evaluation during training (metrics.jsonl)."""
  path = os.path.join(run_dir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    rows = [json.loads(line) for line in f if line.strip()]
  return [[r["step"], r["eval/robust_accuracy"]] for r in rows if "eval/robust_accuracy" in r]


def collapse(history: Sequence[Sequence[float]], drop: float = 0.2) -> Optional[str]:
  """Catastrophic overfitting, as a reviewer checks for it: the robust accuracy during
  training falls by more than `drop` (absolute) below its best and stays there at the end."""
  if len(history) < 2:
    return None
  best_step, best = max(history, key=lambda r: r[1])
  final_step, final = history[-1]
  if best - final > drop:
    return (f"robust accuracy fell from {100 * best:.1f} % (step {best_step:.0f}) to "
            f"{100 * final:.1f} % (step {final_step:.0f})")
  return None


def training_passes(cfg) -> float:
  """Network passes (forward + backward, student and teacher) a training config spends."""
  batch = cfg.optim.batch_size
  steps = cfg.optim.get("num_steps") or int(
      cfg.optim.num_epochs * input_pipeline.steps_per_epoch(cfg.data, batch))
  objective = objectives.get_objective(cfg.objective.name)
  awp = 1 if cfg.optim.get("awp", {}).get("gamma") else 0  # its proxy pass (warm-up ignored)
  return float(steps * batch * objective.training_cost(cfg.objective, 1, 1, awp)[
      "passes_per_example"])


def fit_epochs_to_passes(cfg, target: float):
  """Sets cfg.optim.num_epochs to the whole number of epochs (at least 1) whose training
  passes are nearest to `target`; returns cfg."""
  cfg.optim.num_epochs = 1
  per_epoch = training_passes(cfg)
  cfg.optim.num_epochs = max(1, int(round(target / per_epoch)))
  return cfg


def quiet_logs() -> None:
  """orbax logs every save and restore; the scripts print their own progress."""
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.ERROR)


def cached_record(run_dir: str, make: Callable[[], Dict[str, Any]],
                  archive: str = "") -> Dict[str, Any]:
  """`make()` once per run: its record is kept in `run_dir/record.json` and read back on later
  calls (so a study resumes run by run). `archive`, when given, is a second copy outside the
  workdir (a committed folder): read first and written beside, so that a study resumes on
  another machine from its records alone."""
  for path in filter(None, (archive, os.path.join(run_dir, "record.json"))):
    if os.path.exists(path):
      with open(path) as f:
        record = json.load(f)
      if archive and not os.path.exists(archive):
        _write_json(archive, record)
      return record
  record = make()
  for path in filter(None, (os.path.join(run_dir, "record.json"), archive)):
    _write_json(path, record)
  # Every run compiles its own programs; without this a long study exhausts XLA:CPU's JIT
  # code memory ("LLVM ERROR: Unable to allocate section memory").
  jax.clear_caches()
  return record


def _write_json(path: str, record: Dict[str, Any]) -> None:
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  with open(path + ".tmp", "w") as f:
    json.dump(record, f, indent=2)
  os.replace(path + ".tmp", path)  # a study stopped mid-write leaves no half record


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


def teachers_per_seed(config, seeds: Sequence[int], workdir: str, run_one: Callable,
                      kinds: Sequence[str] = ("teacher",)) -> tuple:
  """For each seed and each kind of TEACHERS its own teacher, trained (or read back) in
  `workdir/seed<s>/<kind>`: (records, {kind: {seed: the frozen teacher, a call away}}). The
  teachers load on first use, so a seed whose students all have records needs none."""
  records, teachers = [], {kind: {} for kind in kinds}
  for seed in seeds:
    for kind in kinds:
      t_cfg = teacher_lib.training_config(config)
      t_cfg.objective.name = TEACHERS[kind] or t_cfg.objective.name
      t_cfg.seed = seed
      print(f"== seed {seed}: {kind}", flush=True)
      t_dir = os.path.join(workdir, f"seed{seed}", kind)
      records.append(run_one(kind, t_cfg, t_dir))
      teachers[kind][seed] = functools.lru_cache(None)(
          functools.partial(_frozen_teacher, config, t_cfg, t_dir))
  return records, teachers


def _frozen_teacher(config, t_cfg, t_dir: str):
  """The teacher of `t_dir`; trained there again first when only its record survived (a study
  resumed on another machine from archived records)."""
  if not os.path.exists(os.path.join(t_dir, "summary.json")):  # written when training ends
    print(f"== training {t_dir} (again): its record is archived, its finished checkpoint is "
          "not here", flush=True)
    train_resumable(t_cfg, t_dir)
  info = input_pipeline.get_info(config.data)
  return teacher_lib.load_teacher(config.teacher, info.num_classes, info.image_shape,
                                  path=t_dir)


def teacher_of(method: Method, teachers, seed: int) -> Optional[Callable[[], Any]]:
  """A call that gives `method`'s frozen teacher for `seed` (from `teachers_per_seed`), with
  its clean teacher's checkpoint (MTARD's, read by path) made sure of first; None for a method
  that distils from no teacher."""
  if not objectives.get_objective(method.objective).needs_teacher:
    return None

  def get():
    if method.clean_teacher:
      teachers[method.clean_teacher][seed]()
    return teachers[method.teacher][seed]()
  return get


def teacher_kinds(methods: Sequence[Method]) -> List[str]:
  """The teachers the methods distil from, the robust one first (always trained: every
  ratio is to it)."""
  return list(dict.fromkeys(["teacher"] + [m.teacher for m in methods]
                            + [m.clean_teacher for m in methods if m.clean_teacher]))


def run_dir_name(point: str) -> str:
  return point.replace(" ", "_").replace("=", "-")


def mean_std(values: Sequence[Optional[float]]) -> List[float]:
  """[mean, sample std] of the values that are not None ([nan, nan] for none)."""
  v = np.asarray([x for x in values if x is not None], float)
  if not len(v):
    return [float("nan"), float("nan")]
  return [float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0]


def pct(ms: Sequence[float]) -> str:
  """A [mean, std] of fractions as 'mean ± std' in %."""
  return f"{100 * ms[0]:.1f} ± {100 * ms[1]:.1f}"


def provenance(command: str, records: List[Dict[str, Any]], elapsed: float) -> str:
  """The 'Generated by' sentence of a results.md: command, date, machine and compute."""
  evaluation = sum(r.get("eval_seconds", 0.0) for r in records)
  return (f"Generated by `{command}` on {datetime.date.today().isoformat()} "
          f"({platform.machine()}, {os.cpu_count()} CPU cores, JAX {jax.__version__} on "
          f"{jax.default_backend()}, {jax.device_count()} device(s)); compute: "
          f"{sum(r['train_seconds'] for r in records) / 60:.1f} min training"
          + (f", {evaluation / 60:.1f} min evaluation" if evaluation else "")
          + f" (this invocation: {elapsed / 60:.1f} min; finished runs are read back).")


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> List[str]:
  return (["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
          + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])


def command_line(script: str) -> str:
  return " ".join([f"python experiments/{script}"] + sys.argv[1:]).strip()


def save_figure(fig, path: str) -> None:
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig.savefig(path, dpi=120)
  plt.close(fig)


def pyplot():
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


def read_results(out: str) -> Dict[str, Any]:
  """A committed results.json, with the provenance of its results.md when the JSON has none."""
  with open(os.path.join(out, "results.json")) as f:
    results = json.load(f)
  md = os.path.join(out, "results.md")
  if "provenance" not in results and os.path.exists(md):
    with open(md) as f:
      results["provenance"] = next(
          (line.rstrip("\n") for line in f if line.startswith("Generated by")), "")
  return results


def write_results(out: str, text: str, summary: Dict[str, Any],
                  records: List[Dict[str, Any]], provenance_line: str) -> None:
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, "results.md"), "w") as f:
    f.write(text)
  with open(os.path.join(out, "results.json"), "w") as f:
    json.dump({"provenance": provenance_line, "summary": summary, "records": records}, f,
              indent=2)


def run(script: str, out: str, collect: Callable[[], List[Dict[str, Any]]],
        summarise: Callable, render: Callable, plot: Callable) -> str:
  """The whole of a study: collect (train/attack, resuming) or, with --render_only, read
  the records; summarise, write results.md / results.json and the plots. Returns the text."""
  t_start = time.perf_counter()
  if RENDER_ONLY.value:
    results = read_results(out)
    records, line = results["records"], results.get("provenance", "")
  else:
    compilation_cache.enable()
    records = collect()
    line = provenance(command_line(script), records, time.perf_counter() - t_start)
  rows = summarise(records)
  text = render(rows, records, line)
  write_results(out, text, rows, records, line)
  plot(rows, records, out)
  print(text, flush=True)
  return text
