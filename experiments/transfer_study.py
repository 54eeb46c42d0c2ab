"""Which settings make the MixACM student robust within half the teacher's passes?

Every choice is made on the embedded digits' *validation* split (clean and PGD-20 accuracy at
the end of training); the test split is left to `robustness_transfer.py`, run once at the
chosen defaults. For each seed a teacher is trained (the config's own), then the points of the
chosen groups:

  lengths     MixACM, ACM + mixup, KD only, natural training and PGD-AT of the student at
              1x, 2x, 3x, 5x the teacher's epochs (robust accuracy vs training cost in passes)
  variations  one change at a time around the base point (MixACM at --base_multiple x the
              teacher's epochs): w_acm, w_kd, tau, matched stages, ACM mapping, mixup alpha and
              per-example lambda, weight decay on the ACM transformations, batch size
  combos      the changes that helped, together (COMBOS)
  costs       at the chosen settings, MixACM, mixup alone, fast-AT and PGD-AT of the student
              at 0.25x, 0.5x and 1x the teacher's passes (epochs fitted to the budget)
  controls    at the chosen settings and 0.5x the passes: MixACM from a naturally trained
              teacher, and MixACM without mixup (alpha = 0)

Writes `results.md`, `results.json` and `lengths.png` / `variations.png` to --out; every run
resumes (finished runs are read back from their `record.json`); `--render_only` re-writes
them from --out/results.json.

  python experiments/transfer_study.py --out=experiments/results/digits_study
"""
import math
import os
from typing import Any, Dict, NamedTuple, Optional, Tuple

from absl import app, flags
from ml_collections import config_flags

from mixacm_jax import objectives
from mixacm_jax.training import pipeline

import common

# The methods of the lengths group (common.METHODS).
METHODS = {name: common.METHODS[name] for name in ("mixacm", "acm_mixup", "kd", "natural",
                                                   "pgd_at")}
MULTIPLES = (1, 2, 3, 5)
# The costs group: each method at each budget, a fraction of the teacher's passes.
COST_METHODS = {
    "mixacm": common.METHODS["mixacm"],
    "mixup": common.METHODS["mixup"],
    "fast_at": common.METHODS["fast_at_equal"]._replace(label="fast-AT (FGSM-RS)"),
    "pgd_at": common.METHODS["pgd_at"],
}
COST_RATIOS = (0.25, 0.5, 1.0)
CONTROLS = {name: common.METHODS[name] for name in ("mixacm_natural_teacher", "acm_kd")}
CONTROL_RATIO = 0.5
ALL_METHODS = {**METHODS, **COST_METHODS, **CONTROLS}
# One change each from the base MixACM point: name -> overrides.
VARIATIONS = {
    "w_acm=3": {"objective.mixacm.w_acm": 3.0},
    "w_acm=30": {"objective.mixacm.w_acm": 30.0},
    "w_kd=0": {"objective.mixacm.w_kd": 0.0},
    "w_kd=3": {"objective.mixacm.w_kd": 3.0},
    "tau=4": {"objective.mixacm.temperature": 4.0},
    "stages 2-4": {"objective.mixacm.acm.stages": ("stage2", "stage3", "stage4")},
    "stages 3-4": {"objective.mixacm.acm.stages": ("stage3", "stage4")},
    "mapping mean_pow": {"objective.mixacm.acm.mapping": "mean_pow"},
    "mapping max": {"objective.mixacm.acm.mapping": "max"},
    "mixup alpha=0.4": {"objective.mixacm.mixup_alpha": 0.4},
    "mixup alpha=2": {"objective.mixacm.mixup_alpha": 2.0},
    "per-example lambda": {"objective.mixacm.mixup_per_example": True},
    "no wd on ACM transforms": {"optim.decay_acm_transforms": False},
    "batch 32": {"optim.batch_size": 32},
}

# Combinations of the variations that helped (chosen from the variations' validation
# results, then run on validation like them): name -> names of VARIATIONS applied together.
COMBOS = {
    "w_acm=3 + tau=4": ("w_acm=3", "tau=4"),
    "w_acm=3 + stages 3-4": ("w_acm=3", "stages 3-4"),
    "tau=4 + stages 3-4": ("tau=4", "stages 3-4"),
    "w_acm=3 + tau=4 + stages 3-4": ("w_acm=3", "tau=4", "stages 3-4"),
    # Batch 32 makes 35 steps of an epoch (the teacher's 64 make 17): 29 epochs keep the
    # student within half the teacher's passes (0.50x; 30 would be 0.51x).
    "batch 32 + tau=4 + stages 3-4 (29 epochs)": ("batch 32", "tau=4", "stages 3-4",
                                                 {"optim.num_epochs": 29}),
    "batch 32 + stages 3-4 (29 epochs)": ("batch 32", "stages 3-4", {"optim.num_epochs": 29}),
}

# The point chosen as the new defaults of configs/default_mixacm.py (marked in the plot).
CHOSEN = "mixacm@2x batch 32 + stages 3-4 (29 epochs)"
# Those defaults on top of the study's base: where the costs and controls groups run.
CHOSEN_SETTINGS = {"optim.batch_size": 32, "objective.mixacm.acm.stages": ("stage3", "stage4")}


class Point(NamedTuple):
  groups: Tuple[str, ...]
  name: str
  method: str                      # a key of ALL_METHODS
  multiple: Optional[float]        # epochs as a multiple of the teacher's, or
  passes_ratio: Optional[float]    # a budget: a fraction of the teacher's passes
  overrides: Dict[str, Any]

_CONFIG = config_flags.DEFINE_config_file("config", "configs/default_mixacm.py",
                                          "A pipeline config (teacher + student).")
_OUT = flags.DEFINE_string("out", "experiments/results/digits_study", "Where results go.")
_WORKDIR = flags.DEFINE_string("workdir", "workdirs/study", "Checkpoints of every run.")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds (each trains its own teacher).")
_GROUPS = flags.DEFINE_list("groups", ["lengths", "variations", "combos", "costs", "controls"],
                            "lengths | variations | combos | costs | controls")
_METHODS = flags.DEFINE_list("methods", list(METHODS), "Methods of the lengths group.")
_MULTIPLES = flags.DEFINE_list("multiples", [str(m) for m in MULTIPLES],
                               "Training lengths, in multiples of the teacher's epochs.")
_COST_METHODS = flags.DEFINE_list("cost_methods", list(COST_METHODS),
                                  "Methods of the costs group.")
_COST_RATIOS = flags.DEFINE_list("cost_ratios", [f"{r:g}" for r in COST_RATIOS],
                                 "Budgets of the costs group (fractions of the teacher's passes).")
_VARIATIONS = flags.DEFINE_list("variations", list(VARIATIONS), "Variations to run.")
_COMBOS = flags.DEFINE_list("combos", list(COMBOS), "Combinations to run (group combos).")
_BASE_MULTIPLE = flags.DEFINE_float(
    "base_multiple", 2.0, "Length of the variations' base point, in the teacher's epochs.")
_SPLIT = flags.DEFINE_string("eval_split", "validation", "Split every choice is made on.")
_MAX_PASSES = flags.DEFINE_float(
    "max_passes_ratio", 2.0, "Skip length points that cost more than this multiple of the "
    "teacher's passes (PGD-AT of the student at 3x and 5x: it reaches the teacher by 2x).")


def points(config):
  """The Point of every requested run."""
  out = []
  if "lengths" in _GROUPS.value:
    def per_example(name):
      objective = objectives.get_objective(name)
      return sum(objective.passes(objective.settings(config.objective)).values())
    teacher = per_example(config.pipeline.teacher_objective)
    for method in _METHODS.value:
      for m in _MULTIPLES.value:
        if float(m) * per_example(METHODS[method][0]) / teacher <= _MAX_PASSES.value:
          out.append(("lengths", f"{method}@{m}x", method, float(m), None, {}))
  if "variations" in _GROUPS.value:
    base = _BASE_MULTIPLE.value
    out.append(("variations", f"mixacm@{base:g}x", "mixacm", base, None, {}))
    for name in _VARIATIONS.value:
      out.append(("variations", f"mixacm@{base:g}x {name}", "mixacm", base, None,
                  VARIATIONS[name]))
  if "combos" in _GROUPS.value:
    base = _BASE_MULTIPLE.value
    for name in _COMBOS.value:
      overrides = {k: v for part in COMBOS[name]
                   for k, v in (part if isinstance(part, dict) else VARIATIONS[part]).items()}
      out.append(("combos", f"mixacm@{base:g}x {name}", "mixacm", base, None, overrides))
  if "costs" in _GROUPS.value:
    for method in _COST_METHODS.value:
      for ratio in [float(r) for r in _COST_RATIOS.value]:
        out.append(("costs", f"{method}@{ratio:g}x passes", method, None, ratio,
                    CHOSEN_SETTINGS))
  if "controls" in _GROUPS.value:
    for method in CONTROLS:
      out.append(("controls", f"{method}@{CONTROL_RATIO:g}x passes", method, None,
                  CONTROL_RATIO, CHOSEN_SETTINGS))
  # A point asked for twice (the base point is also a length) runs once, in both tables.
  merged = {}
  for group, name, *rest in out:
    groups = merged[name].groups + (group,) if name in merged else (group,)
    merged[name] = Point(groups, name, *rest)
  return list(merged.values())


def run_config(config, seed, point):
  """A point's student config: with a budget, its epochs spend that fraction of the teacher's
  passes under the point's overrides; else the teacher's epochs times the multiple."""
  method = ALL_METHODS[point.method]._replace(passes_ratio=point.passes_ratio)
  cfg = common.method_config(config, method, seed, point.overrides)
  if point.passes_ratio is None:
    cfg.optim.num_epochs = int(round(config.pipeline.teacher_epochs * point.multiple))
  return cfg


# The point the study varies around: the MixACM settings before it, fixed here so that the
# study reproduces after its result became the new defaults of configs/default_mixacm.py.
STUDY_BASE = {
    "optim.batch_size": 64, "pipeline.teacher_batch_size": 64,
    "objective.mixacm.w_ce": 1.0, "objective.mixacm.w_kd": 1.0,
    "objective.mixacm.w_acm": 10.0,
    "objective.mixacm.temperature": 1.0, "objective.mixacm.mixup_alpha": 1.0,
    "objective.mixacm.mixup_per_example": False, "objective.mixacm.acm.mapping": "mean_act",
    "objective.mixacm.acm.stages": ("stem", "stage1", "stage2", "stage3", "stage4"),
    "optim.decay_acm_transforms": True,
}


def prepare(config):
  """The study's base point and evaluation: the final clean and PGD-20 accuracy on the
  chosen split."""
  config = pipeline.apply_overrides(config.copy_and_resolve_references(), STUDY_BASE)
  config.data.eval_split = _SPLIT.value
  config.train_evals.pgd.attacks = "clean,pgd20"
  config.checkpoint.every_steps = 500
  return config


def run_one(name, cfg, run_dir, teacher=None):
  """`teacher`: a call that gives the frozen teacher, made only if the run is."""
  return common.cached_record(run_dir, lambda: {
      **pipeline.result_row(name, common.train_resumable(cfg, run_dir, teacher and teacher())),
      "seed": cfg.seed})


def summarise(records, specs):
  """Per point: mean, std and the worst seed of the robust accuracy and its ratio to the
  same seed's teacher; the passes ratio to the teacher."""
  teachers = {r["seed"]: r for r in records if r["run"] == "teacher"}
  rows = {}
  teacher_points = [Point((kind,), kind, kind, 1.0, None, {}) for kind in common.TEACHERS]
  for group, name, method, multiple, _, _ in teacher_points + specs:
    mine = [r for r in records if r["run"] == name]
    if not mine:
      continue
    robust = [r["robust_accuracy"] for r in mine]
    ratio = [r["robust_accuracy"] / teachers[r["seed"]]["robust_accuracy"] for r in mine]
    natural_run = f"natural@{multiple:g}x" if multiple else None
    gap = [r["robust_accuracy"] - next(
        (n["robust_accuracy"] for n in records
         if n["run"] == natural_run and n["seed"] == r["seed"]), float("nan"))
           for r in mine]
    rows[name] = {
        "groups": tuple(group), "method": method,
        "multiple": multiple, "seeds": len(mine),
        "clean": common.mean_std([r["clean_accuracy"] for r in mine]),
        "robust": common.mean_std(robust), "robust_worst": min(robust),
        "ratio": common.mean_std(ratio), "ratio_worst": min(ratio),
        "minus_natural": common.mean_std(gap),
        "passes_ratio": mine[0]["total_passes"] / teachers[mine[0]["seed"]]["total_passes"],
        "total_passes": mine[0]["total_passes"],
        "train_seconds": common.mean_std([r["train_seconds"] for r in mine])}
  return rows


_pct = common.pct


def _points(gap: float) -> str:
  """A gap to natural training in points; '—' where its group trained no natural student."""
  return "—" if math.isnan(gap) else f"{100 * gap:+.1f}"


def markdown(rows, records, provenance):
  del records
  t = rows["teacher"]
  lines = [
      "# MixACM on the embedded digits: the validation study", "", provenance, "",
      f"Split: **{_SPLIT.value}** (every figure here; the test split is not used). Robust = "
      "PGD-20 L-inf at the config's eps, at the end of training; mean ± std over "
      f"{t['seeds']} seeds, each with its own teacher; 'x teacher' is the ratio to the same "
      "seed's teacher (mean ± std, worst seed); passes = network forward + backward passes "
      "spent on training, as a multiple of the teacher's.", "",
      f"Teacher: clean {_pct(t['clean'])} %, robust {_pct(t['robust'])} % (worst seed "
      f"{100 * t['robust_worst']:.1f} %).", ""]
  for group, title in (("lengths", "Training length"),
                       ("variations", "One change at a time around the base point"),
                       ("combos", "Combinations of the changes that helped"),
                       ("costs", "Equal cost: each method at fractions of the teacher's "
                        "passes (the chosen settings; epochs fitted to the budget)"),
                       ("controls", "Controls at half the teacher's passes (the chosen "
                        "settings)"),
                       ("teacher_natural", "The natural teacher of the controls")):
    mine = {k: r for k, r in rows.items() if group in r["groups"]}
    if not mine:
      continue
    lines += [f"## {title}", "",
              "| point | clean % | robust % | worst seed % | x teacher | worst x | "
              "minus natural (pts) | passes x teacher |",
              "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, r in mine.items():
      lines.append(
          f"| {name} | {_pct(r['clean'])} | {_pct(r['robust'])} | {100 * r['robust_worst']:.1f} "
          f"| {r['ratio'][0]:.2f} ± {r['ratio'][1]:.2f} | {r['ratio_worst']:.2f} | "
          f"{_points(r['minus_natural'][0])} | {r['passes_ratio']:.2f} |")
    lines.append("")
  has = lambda *groups: any(set(groups) & set(r["groups"]) for r in rows.values())
  plots = [text for text, shown in (
      ("[robust accuracy vs training passes](lengths.png)", has("lengths")),
      ("[variations](variations.png)", has("variations", "combos")),
      ("[equal cost and controls](costs.png)", has("costs", "controls"))) if shown]
  lines += ["Plots: " + ", ".join(plots) + "."]
  return "\n".join(lines) + "\n"


def _plot_costs(plt, rows, out):
  """Robust accuracy against passes, one curve per method of the costs group, the controls
  as single markers."""
  costs = {k: r for k, r in rows.items() if {"costs", "controls"} & set(r["groups"])}
  if not costs:
    return
  t = rows["teacher"]
  fig, ax = plt.subplots(figsize=(9.5, 4.6))
  ax.axhline(100 * t["robust"][0], color="k", lw=1.5, label="teacher (PGD-AT)")
  ax.axhline(80 * t["robust"][0], color="k", ls=":", lw=1, label="0.8x teacher")
  for method, spec in {**COST_METHODS, **CONTROLS}.items():
    pts = sorted((r for r in costs.values() if r["method"] == method),
                 key=lambda r: r["passes_ratio"])
    if pts:
      ax.errorbar([r["passes_ratio"] for r in pts], [100 * r["robust"][0] for r in pts],
                  yerr=[100 * r["robust"][1] for r in pts], capsize=3,
                  marker="o" if method in COST_METHODS else "s",
                  ls="-" if method in COST_METHODS else "none",
                  lw=2.5 if method == "mixacm" else 1.2, label=spec.label)
  if "teacher_natural" in rows:
    ax.axhline(100 * rows["teacher_natural"]["robust"][0], color="gray", lw=1, ls="-.",
               label="the natural teacher")
  ax.set_xscale("log")
  ax.set_xlabel("training cost: network passes, multiple of the teacher's (log)")
  ax.set_ylabel(f"PGD-20 robust accuracy on {_SPLIT.value} (%)")
  ax.set_title("Equal cost (batch 32, ACM on stages 3-4, epochs fitted to each budget)",
               fontsize=9)
  ax.grid(alpha=0.3, which="both")
  ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
  fig.tight_layout()
  common.save_figure(fig, os.path.join(out, "costs.png"))


def plot(rows, records, out):
  del records
  plt = common.pyplot()
  t = rows["teacher"]
  lengths = {k: r for k, r in rows.items() if "lengths" in r["groups"]}
  if lengths:
    fig, ax = plt.subplots(figsize=(9.5, 4.6))
    ax.axhline(100 * t["robust"][0], color="k", lw=1.5, label="teacher (PGD-AT)")
    ax.axhspan(100 * (t["robust"][0] - t["robust"][1]), 100 * (t["robust"][0] + t["robust"][1]),
               color="k", alpha=0.08)
    ax.axhline(80 * t["robust"][0], color="k", ls=":", lw=1, label="0.8x teacher")
    ax.axvline(0.5, color="gray", ls="--", lw=1, label="half the teacher's passes")
    for method in METHODS:
      pts = sorted((r for r in lengths.values() if r["method"] == method),
                   key=lambda r: r["passes_ratio"])
      if pts:
        ax.errorbar([r["passes_ratio"] for r in pts], [100 * r["robust"][0] for r in pts],
                    yerr=[100 * r["robust"][1] for r in pts], marker="o", capsize=3,
                    lw=2.5 if method == "mixacm" else 1.2, label=METHODS[method].label)
        for r in pts:
          ax.annotate(f"{r['multiple']:g}x", (r["passes_ratio"], 100 * r["robust"][0]),
                      fontsize=6, xytext=(3, 3), textcoords="offset points")
    if CHOSEN in rows:
      r = rows[CHOSEN]
      ax.errorbar([r["passes_ratio"]], [100 * r["robust"][0]], yerr=[100 * r["robust"][1]],
                  marker="*", ms=14, color="tab:blue", mec="k", capsize=3, ls="none",
                  label="MixACM, the new defaults (batch 32, stages 3-4)")
    ax.set_xscale("log")
    ax.set_xlabel("training cost: network passes, multiple of the teacher's (log)")
    ax.set_ylabel(f"PGD-20 robust accuracy on {_SPLIT.value} (%)")
    ax.set_title("Robustness bought per training pass (labels: epochs x the teacher's)",
                 fontsize=9)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    common.save_figure(fig, os.path.join(out, "lengths.png"))
  _plot_costs(plt, rows, out)
  variations = {k: r for k, r in rows.items()
                if {"variations", "combos"} & set(r["groups"])}
  if variations:
    names = list(variations)
    fig, ax = plt.subplots(figsize=(10, 0.32 * len(names) + 1.6))
    ax.barh(range(len(names)), [100 * variations[n]["robust"][0] for n in names],
            xerr=[100 * variations[n]["robust"][1] for n in names], color="tab:blue",
            alpha=0.7, capsize=3)
    ax.axvline(100 * t["robust"][0], color="k", lw=1.5, label="teacher")
    ax.axvline(80 * t["robust"][0], color="k", ls=":", lw=1, label="0.8x teacher")
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel(f"PGD-20 robust accuracy on {_SPLIT.value} (%), mean ± std over seeds",
                  fontsize=8)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3, axis="x")
    fig.subplots_adjust(left=0.42, right=0.97, bottom=1.0 / (0.32 * len(names) + 1.6),
                        top=0.98)
    common.save_figure(fig, os.path.join(out, "variations.png"))


def main(argv):
  del argv
  common.quiet_logs()
  config = prepare(_CONFIG.value)
  unknown = ([m for m in _METHODS.value if m not in METHODS] +
             [v for v in _VARIATIONS.value if v not in VARIATIONS] +
             [c for c in _COMBOS.value if c not in COMBOS])
  if unknown:
    raise app.UsageError(f"unknown methods/variations {unknown}; known: {', '.join(METHODS)}; "
                         f"{', '.join(VARIATIONS)}")
  specs = points(config)
  seeds = [int(s) for s in _SEEDS.value]

  def collect():
    kinds = common.teacher_kinds([ALL_METHODS[p.method] for p in specs])
    records, teachers = common.teachers_per_seed(config, seeds, _WORKDIR.value, run_one, kinds)
    # Point by point over all seeds, so that an interrupted study has whole points.
    for point in specs:
      method = ALL_METHODS[point.method]
      for seed in seeds:
        print(f"== seed {seed}: {point.name}", flush=True)
        run_dir = os.path.join(_WORKDIR.value, f"seed{seed}", common.run_dir_name(point.name))
        records.append(run_one(point.name, run_config(config, seed, point), run_dir,
                               common.teacher_of(method, teachers, seed)))
    return records

  common.run("transfer_study.py", _OUT.value, collect, lambda r: summarise(r, specs),
             markdown, plot)


if __name__ == "__main__":
  app.run(main)
