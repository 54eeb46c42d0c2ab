"""Robustness transfer without adversarial examples, end to end, on the test split.

For each seed: a robust teacher (the config's `pipeline.teacher_objective`, PGD-AT by default)
and, with the same student architecture throughout, the students of STUDENTS: natural, KD
only, the MixACM ablations (ACM only, ACM + KD, ACM + mixup, full MixACM), ARD and RSLAD for
contrast and PGD-AT of the student itself. Each model is evaluated on clean accuracy, PGD-20
and AutoAttack (the strongest version that fits) and a PGD-20 eps sweep; training cost is
recorded in seconds and in network passes. Writes `results.md`, `results.json` and three
PNG plots to --out. Every run resumes: finished runs are read back from `record.json`;
`--render_only` re-writes them from --out/results.json.

  python experiments/robustness_transfer.py --out=experiments/results/digits
"""
import os
import time

from absl import app, flags
from ml_collections import config_flags

from mixacm_jax import models
from mixacm_jax.attacks import registry
from mixacm_jax.data import input_pipeline
from mixacm_jax.evaluation import robustness
from mixacm_jax.runtime import checkpoint
from mixacm_jax.training import pipeline

import common

# The students of the experiment (common.METHODS): the ablation, the baselines, the controls
# (mixup alone; MixACM from a natural teacher; acm_kd is MixACM without mixup, alpha = 0) and
# cheap adversarial training at MixACM's budget.
STUDENTS = {name: common.METHODS[name] for name in (
    "natural", "kd", "acm", "acm_kd", "acm_mixup", "mixacm", "ard", "rslad", "pgd_at",
    "mixup", "mixacm_natural_teacher", "fast_at_equal", "pgd_at_equal")}
# Diagnostics of the MixACM result (run with --students=...): one change each. (Lengths and
# the other settings are studied on the validation split by transfer_study.py.)
Method = common.Method
DIAGNOSTICS = {
    "mixacm_teacher_width": Method("mixacm", {"model.kwargs.base_width": 16},
                                   "MixACM, student as wide as the teacher"),
    "mixacm_w_acm_100": Method("mixacm", {"objective.mixacm.w_acm": 100.0},
                               "MixACM, w_acm = 100"),
    "acm_only_no_ce": Method("mixacm", {"objective.mixacm.w_ce": 0.0,
                                        "objective.mixacm.w_kd": 0.0,
                                        "objective.mixacm.mixup_alpha": 0.0},
                             "ACM alone (no CE, no KD)"),
}
# The robust distillation methods, at their settings and at MixACM's budget (run with
# --students=...; experiments/results/digits_distillation).
DISTILLATION = {name: common.METHODS[name] for name in common.METHODS
                if name not in STUDENTS and name != "kd"}
ALL_STUDENTS = {**STUDENTS, **DIAGNOSTICS, **DISTILLATION}
# The paper's supplementary CIFAR-10 ablation (WRN-34-10 teacher), robust accuracy in %.
PAPER_ABLATION = {"acm": 48.38, "acm_kd": 49.53, "acm_mixup": 52.29, "mixacm": 56.65}
# What the claim needs, checked on every result set: the MixACM student's robust accuracy as
# a fraction of its teacher's, and its lead over natural training (in accuracy).
CLAIM = {"ratio_to_teacher": 0.8, "over_natural": 0.30}

_CONFIG = config_flags.DEFINE_config_file("config", "configs/default_mixacm.py",
                                          "A pipeline config (teacher + student).")
_OUT = flags.DEFINE_string("out", "experiments/results/digits", "Where results go.")
_WORKDIR = flags.DEFINE_string("workdir", "workdirs/experiment", "Checkpoints of every run.")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds (each trains its own teacher).")
_STUDENTS = flags.DEFINE_list("students", list(STUDENTS), "Students to train.")
_ATTACKS = flags.DEFINE_string("attacks", "pgd20,autoattack",
                               "Attacks on the AutoAttack subset (PGD-20 also runs on all).")
_AA_VERSION = flags.DEFINE_string("autoattack_version", "apgd", "standard | apgd | rand")
_AA_EXAMPLES = flags.DEFINE_integer("autoattack_examples", 180,
                                    "First n eval examples for AutoAttack (0: all).")
_SWEEP = flags.DEFINE_list("eps_sweep", ["0.05", "0.1", "0.15", "0.2"],
                           "eps values of the PGD-20 sweep.")


_RECORDS = flags.DEFINE_string(
    "records", "", "A folder that also keeps every run's record (seed<s>/<run>.json): "
    "committed, it lets the study resume on another machine without the checkpoints.")


def run_one(name, cfg, run_dir, teacher=None):
  """Trains (or resumes) one model and evaluates it; the record is cached in run_dir (and in
  --records). `teacher`: a call that gives the frozen teacher, made only if the run is."""
  archive = (os.path.join(_RECORDS.value, f"seed{cfg.seed}", f"{name}.json")
             if _RECORDS.value else "")
  return common.cached_record(
      run_dir, lambda: _train_and_attack(name, cfg, run_dir, teacher and teacher()), archive)


def _train_and_attack(name, cfg, run_dir, teacher):
  result = common.train_resumable(cfg, run_dir, teacher)
  info = input_pipeline.get_info(cfg.data)
  model = models.create_model_from_config(cfg.model, info.num_classes)
  variables = checkpoint.load_variables(model, info.image_shape, run_dir)
  t0 = time.perf_counter()
  eval_cfg = cfg.eval.copy_and_resolve_references()
  eval_cfg.attacks = "pgd20"
  report = robustness.report_on_split(model, variables, cfg.data, eval_cfg, seed=cfg.seed)
  sweep = robustness.eps_sweep(model, variables, cfg.data, eval_cfg,
                               [float(e) for e in _SWEEP.value], seed=cfg.seed)
  # AutoAttack on a subset (its cost), with PGD-20 on the same points for comparison.
  eval_cfg.attacks = _ATTACKS.value
  eval_cfg.autoattack_version = _AA_VERSION.value
  eval_cfg.num_examples = _AA_EXAMPLES.value
  subset = robustness.report_on_split(model, variables, cfg.data, eval_cfg, seed=cfg.seed)
  for r in (report, subset):  # the records keep accuracies; per-example arrays stay out
    r.pop("examples", None)
  report["attacks"].update({k if k == "autoattack" else f"{k}_subset": v
                            for k, v in subset["attacks"].items()})
  report["autoattack_examples"] = subset["num_examples"]
  report["clean_accuracy_subset"] = subset["clean_accuracy"]
  row = pipeline.result_row(name, result)
  return {**row, "seed": cfg.seed, "report": report, "history": common.eval_history(run_dir),
          "eval_seconds": time.perf_counter() - t0,
          "sweep": {"eps": sweep["epsilons"],
                    "pgd20": [r["attacks"]["pgd20"]["robust_accuracy"]
                              for r in sweep["reports"]]},
          "warnings": report["warnings"] + subset["warnings"] + sweep["warnings"]}


def student_config(config, name, seed, workdir=""):
  """`workdir`: where the seed's teachers are (MTARD's clean one is read from there)."""
  return common.method_config(config, ALL_STUDENTS[name], seed, workdir=workdir)


def label(name):
  return common.TEACHER_LABELS.get(name) or ALL_STUDENTS[name].label


def summarise(records):
  """One row per model over seeds: mean and std of every figure."""
  rows = {}
  for name in list(common.TEACHERS) + list(ALL_STUDENTS):
    if not any(r["run"] == name for r in records):
      continue
    mine = [r for r in records if r["run"] == name]
    if not mine:
      continue
    figures = {
        "clean": [r["report"]["clean_accuracy"] for r in mine],
        "train_seconds": [r["train_seconds"] for r in mine],
        "total_passes": [r["total_passes"] for r in mine],
    }
    for attack in mine[0]["report"]["attacks"]:
      figures[attack] = [r["report"]["attacks"][attack]["robust_accuracy"] for r in mine]
      for stage in mine[0]["report"]["attacks"][attack].get("after_each_stage", {}):
        figures[f"{attack}:{stage}"] = [
            r["report"]["attacks"][attack]["after_each_stage"][stage] for r in mine]
    rows[name] = {"seeds": len(mine), **{k: common.mean_std(v) for k, v in figures.items()},
                  "sweep": [common.mean_std(v) for v in zip(*(r["sweep"]["pgd20"] for r in mine))],
                  "eps": mine[0]["sweep"]["eps"]}
  return rows


def _robust_key(rows):
  """The strongest attack every row has: AutoAttack, else PGD-20."""
  return "autoattack" if all("autoattack" in r for r in rows.values()) else "pgd20"


def _ratio(a, b):
  return a / b if b else float("nan")


def _steps(records, name):
  return next((r["steps"] for r in records if r["run"] == name), "?")


_pct = common.pct


def _per_seed(records, robust_key):
  """For each seed with a teacher and a MixACM student: the student's robust accuracy as a
  ratio to that seed's teacher, and its gap to that seed's natural student."""
  out = []
  for seed in sorted({r["seed"] for r in records}):
    by = {r["run"]: r for r in records if r["seed"] == seed}
    if "teacher" not in by or "mixacm" not in by:
      continue
    acc = lambda r: r["report"]["attacks"].get(robust_key, {}).get("robust_accuracy")
    row = {"seed": seed, "ratio": _ratio(acc(by["mixacm"]), acc(by["teacher"]))}
    if "natural" in by:
      row["gap"] = acc(by["mixacm"]) - acc(by["natural"])
    out.append(row)
  return out


def _paired(records, a, b, robust_key):
  """Per seed, a's robust accuracy minus b's (the seeds that have both)."""
  acc = lambda r: r["report"]["attacks"][robust_key]["robust_accuracy"]
  by = {(r["run"], r["seed"]): r for r in records}
  return [acc(by[(a, s)]) - acc(by[(b, s)]) for s in sorted({r["seed"] for r in records})
          if (a, s) in by and (b, s) in by]


def _control_lines(rows, records, robust_key):
  """The controls and the equal-cost baselines against MixACM, in plain numbers: paired
  differences over seeds (mean ± std, worst seed); with several distillation methods, the
  frontier of robust accuracy against cost."""
  if "mixacm" not in rows:
    return []
  lines = []
  m = rows["mixacm"][robust_key][0]

  def versus(name, what):
    d = _paired(records, "mixacm", name, robust_key)
    if not d:
      return
    mean, std = common.mean_std(d)
    lines.append(f"- {what}: {100 * rows[name][robust_key][0]:.1f} % against MixACM's "
                 f"{100 * m:.1f} %; MixACM minus it, per seed: {100 * mean:+.1f} ± {100 * std:.1f}"
                 f" points (smallest {100 * min(d):+.1f}, {sum(x > 0 for x in d)} of {len(d)} "
                 "seeds above).")

  versus("mixup", "Mixup alone (no teacher)")
  versus("mixacm_natural_teacher", "MixACM from a naturally trained teacher")
  versus("acm_kd", "MixACM without mixup (alpha = 0: ACM and KD on clean inputs)")
  if "mixacm_natural_teacher" in rows and "natural" in rows:
    base = rows["natural"][robust_key][0]
    gain = m - base
    needs = (m - rows["mixacm_natural_teacher"][robust_key][0]) / gain if gain else float("nan")
    lines.append(f"- Of MixACM's robustness above natural training ({100 * gain:+.1f} points), "
                 f"{100 * needs:.0f} % needs the robust teacher (MixACM minus MixACM from a "
                 "natural teacher, over MixACM minus natural training).")
  for name in rows:
    if name.endswith("_equal"):
      versus(name, f"{label(name)} ({rows[name]['total_passes'][0] / 1e6:.3f} M passes, MixACM "
                   f"{rows['mixacm']['total_passes'][0] / 1e6:.3f} M)")
  if sum(name in DISTILLATION for name in rows) > 1:  # the comparison, not the older sets
    lines.append(_frontier_line(rows, robust_key))
  collapsed = [f"{r['run']} seed {r['seed']}: {c}" for r in records
               if r["run"].startswith("fast_at") for c in [common.collapse(r.get("history", []))]
               if c]
  if any(r["run"].startswith("fast_at") and r.get("history") for r in records):
    lines.append("- Catastrophic overfitting in fast-AT (PGD robust accuracy on the eval split "
                 "after every epoch falling > 20 points below its best): "
                 + ("; ".join(collapsed) if collapsed else "none on any seed") + ".")
  return lines


# Passes within this fraction count as the same cost: the equal-cost runs' budgets are whole
# epochs, so they land within about 10 % of MixACM's.
SAME_COST = 0.15


def _beats(o, r, robust_key):
  """o is more robust at the same passes (SAME_COST included) or fewer, or as robust at
  clearly fewer."""
  cost_o, cost_r = o["total_passes"][0], r["total_passes"][0]
  acc_o, acc_r = o[robust_key][0], r[robust_key][0]
  return ((acc_o > acc_r and cost_o <= cost_r * (1 + SAME_COST))
          or (acc_o == acc_r and cost_o * (1 + SAME_COST) < cost_r))


def frontier(rows, robust_key):
  """The students (not the teachers) that no other student beats (`_beats`), cheapest first:
  the methods worth their cost."""
  students = {n: r for n, r in rows.items() if n not in common.TEACHERS}
  on = [n for n, r in students.items()
        if not any(_beats(o, r, robust_key) for m, o in students.items() if m != n)]
  return sorted(on, key=lambda n: students[n]["total_passes"][0])


def _frontier_line(rows, robust_key):
  """The frontier in one line, and, when MixACM is off it, the students that beat it."""
  passes = lambda n: rows[n]["total_passes"][0]
  robust = lambda n: rows[n][robust_key][0]
  show = lambda n: f"{label(n)} ({passes(n) / 1e6:.2f} M passes, {100 * robust(n):.1f} %)"
  line = (f"- The frontier of robust accuracy against passes (seed means; passes within "
          f"{100 * SAME_COST:.0f} % count as equal): "
          + ", ".join(show(n) for n in frontier(rows, robust_key)) + ".")
  if "mixacm" in rows:
    ahead = sorted((n for n in rows if n not in common.TEACHERS and n != "mixacm"
                    and _beats(rows[n], rows["mixacm"], robust_key)), key=robust, reverse=True)
    if ahead:
      line += " MixACM is off it: " + ", ".join(
          f"{label(n)} is {100 * (robust(n) - robust('mixacm')):.1f} points more robust"
          for n in ahead) + " at the same passes or fewer."
  return line


def markdown(rows, records, config, provenance):
  robust_key = _robust_key(rows)
  teacher = rows["teacher"]
  nan = (float("nan"), float("nan"))
  lines = [
      "# Robustness transfer on the embedded digits: results",
      "",
      provenance,
      "",
      f"Teacher: {config.teacher.model.name} {dict(config.teacher.model.kwargs)} trained with "
      f"{config.pipeline.teacher_objective} ({_steps(records, 'teacher')} steps). Students: "
      f"{config.model.name} {dict(config.model.kwargs)}, {_steps(records, 'mixacm')} steps of "
      f"{config.optim.batch_size} examples. "
      f"Attacks: L-inf eps = {config.eval.threat.eps:g} on the {teacher['seeds']}-seed mean "
      f"± std; clean and PGD-20 (step {config.eval.pgd.step_size:g}) on all "
      f"{records[0]['report']['num_examples']} eval examples; AutoAttack `{_AA_VERSION.value}` "
      f"(each stage on the points the earlier ones left) and PGD-20 again on the first "
      f"{records[0]['report'].get('autoattack_examples', '?')}. Cost: seconds of "
      "training on this machine and network passes (forward + backward, student and teacher) "
      "over all training examples; the teacher's column is its own training.",
      "",
      "| model | clean % | PGD-20 % | PGD-20 % (subset) | AutoAttack % (subset) | "
      f"{'AA' if robust_key == 'autoattack' else 'PGD-20'} / teacher's | train s | passes (M) |",
      "| --- | --- | --- | --- | --- | --- | --- | --- |",
  ]
  for name, r in rows.items():
    ratio = _ratio(r[robust_key][0], teacher[robust_key][0])
    lines.append(
        f"| {label(name)} | {_pct(r['clean'])} | {_pct(r.get('pgd20', nan))} | "
        f"{_pct(r.get('pgd20_subset', nan))} | {_pct(r.get('autoattack', nan))} | {ratio:.2f} | "
        f"{r['train_seconds'][0]:.0f} ± {r['train_seconds'][1]:.0f} | "
        f"{r['total_passes'][0] / 1e6:.2f} |")
  stage_cols = [k for k in teacher if k.startswith("autoattack:")]
  if stage_cols:
    lines += ["", "AutoAttack, robust accuracy (%) after each stage:", "",
              "| model | " + " | ".join(k.split(":")[1] for k in stage_cols) + " |",
              "| --- |" + " --- |" * len(stage_cols)]
    for name, r in rows.items():
      if all(k in r for k in stage_cols):
        lines.append(f"| {name} | " + " | ".join(_pct(r[k]) for k in stage_cols) + " |")
  lines += ["", "## Checks, computed", ""]
  if "mixacm" in rows:
    m = rows["mixacm"]
    ratio = _ratio(m[robust_key][0], teacher[robust_key][0])
    goal = CLAIM["ratio_to_teacher"]
    lines.append(f"- MixACM student's {robust_key} accuracy is {ratio:.2f}x the teacher's "
                 f"(expectation: >= {goal:g}x): {'met' if ratio >= goal else 'NOT met'}.")
    per_seed = _per_seed(records, robust_key)
    if per_seed:
      worst = min(per_seed, key=lambda r: r["ratio"])
      lines.append("- Per seed (ratio to that seed's teacher): " + ", ".join(
          f"seed {r['seed']} {r['ratio']:.2f}x" for r in per_seed) + f"; worst seed "
          f"{worst['seed']}: {worst['ratio']:.2f}x, "
          + (f">= {goal:g}x on every seed." if worst["ratio"] >= goal else
             f"below {goal:g}x on some seed."))
    if "natural" in rows:
      gap = m[robust_key][0] - rows["natural"][robust_key][0]
      worst_gap = (f", {100 * min(r['gap'] for r in per_seed):+.1f} on the worst seed "
                   f"(expectation: >= +{100 * CLAIM['over_natural']:.0f})"
                   if per_seed and all("gap" in r for r in per_seed) else "")
      lines.append(f"- MixACM minus natural training: {100 * gap:+.1f} points on average"
                   f"{worst_gap}.")
    seconds = lambda name: rows[name]["train_seconds"][0]
    pgd_at = (f"; {_ratio(seconds('mixacm'), seconds('pgd_at')):.2f}x the seconds of PGD-AT of "
              "the same student" if "pgd_at" in rows else "")
    lines.append(f"- MixACM training cost: "
                 f"{_ratio(m['total_passes'][0], teacher['total_passes'][0]):.2f}x the "
                 f"teacher's passes, {_ratio(seconds('mixacm'), seconds('teacher')):.2f}x its "
                 f"seconds{pgd_at}.")
  lines += _control_lines(rows, records, robust_key)
  present = [k for k in PAPER_ABLATION if k in rows]
  if len(present) > 1:
    ours = [rows[k][robust_key][0] for k in present]
    ordered = all(a <= b for a, b in zip(ours, ours[1:]))
    lines.append("- Ablation order (" + " <= ".join(present) + ") as in the paper: "
                 + ("yes" if ordered else "no") + " (" + ", ".join(
                     f"{k} {100 * v:.1f}" for k, v in zip(present, ours)) + "; paper: " +
                 ", ".join(f"{PAPER_ABLATION[k]}" for k in present) + ").")
  if robust_key == "autoattack" and "pgd20_subset" in teacher:
    gap = lambda r: r["pgd20_subset"][0] - r["autoattack"][0]
    worst = max(rows.items(), key=lambda kv: gap(kv[1]))
    lines.append(f"- PGD-20 minus AutoAttack on the same points: at most "
                 f"{100 * gap(worst[1]):.1f} points ({worst[0]}); a large gap would point to "
                 "gradient masking.")
  warnings = sorted({f"{r['run']} (seed {r['seed']}): {w}" for r in records for w in r["warnings"]})
  lines += ["", "Warnings raised by the evaluation: " + ("none." if not warnings else "")]
  lines += [f"- {w}" for w in warnings]
  lines += ["", "Plots: [robust accuracy vs eps](eps_sweep.png), "
            "[clean vs robust](clean_vs_robust.png), [cost vs robust](cost_vs_robust.png)."]
  return "\n".join(lines) + "\n"


def _log_axis(ax, values):
  """A log x axis labelled in plain numbers at 1-2-5 steps (a decade-spanning cost axis)."""
  ax.set_xscale("log")
  lo, hi = min(values), max(values)
  ticks = [t for t in (m * 10.0 ** e for e in range(-4, 4) for m in (1, 2, 5))
           if lo / 1.5 <= t <= hi * 1.5]
  ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
  ax.minorticks_off()


def plot(rows, records, out):
  plt = common.pyplot()
  robust_key = _robust_key(rows)
  # A method and its equal-cost run share a colour; the equal-cost one is drawn with squares.
  base = lambda name: name.removesuffix("_equal")
  bases = list(dict.fromkeys(base(n) for n in rows))
  twenty = plt.cm.tab20.colors[::2] + plt.cm.tab20.colors[1::2]  # ten distinct hues first
  palette = dict(zip(bases, plt.cm.tab10.colors if len(bases) <= 10 else twenty))
  colors = {n: palette[base(n)] for n in rows}
  marker = lambda name: "s" if name.endswith("_equal") else "o"
  many = len(rows) > 10  # then the legend goes beside the axes, not over the points
  size = (10, 5) if many else (6.5, 4.5)
  legend = {"fontsize": 7, **({"loc": "upper left", "bbox_to_anchor": (1.01, 1)} if many else {})}

  fig, ax = plt.subplots(figsize=size)
  for name, r in rows.items():
    mean = [100 * m for m, _ in r["sweep"]]
    std = [100 * s for _, s in r["sweep"]]
    ax.errorbar(r["eps"], mean, yerr=std, marker=marker(name), ms=3, capsize=2,
                color=colors[name], label=label(name),
                lw=2.5 if name in ("teacher", "mixacm") else 1)
  ax.set_xlabel("L-inf eps")
  ax.set_ylabel("PGD-20 robust accuracy (%)")
  ax.grid(alpha=0.3)
  ax.legend(**legend)
  fig.tight_layout()
  common.save_figure(fig, os.path.join(out, "eps_sweep.png"))

  # Cost as network passes: deterministic, unlike seconds on a shared machine.
  for fname, xkey, xlabel in (("clean_vs_robust.png", "clean", "clean accuracy (%)"),
                              ("cost_vs_robust.png", "total_passes",
                               "training cost: network passes (millions)")):
    fig, ax = plt.subplots(figsize=size)
    for name, r in rows.items():
      mine = [x for x in records if x["run"] == name]
      xs = [(100 * x["report"]["clean_accuracy"] if xkey == "clean" else x[xkey] / 1e6)
            for x in mine]
      ys = [100 * (x["report"]["attacks"][robust_key]["robust_accuracy"]) for x in mine]
      ax.scatter(xs, ys, s=12, alpha=0.4, color=colors[name], marker=marker(name))
      mx = 100 * r[xkey][0] if xkey == "clean" else r[xkey][0] / 1e6
      ax.scatter([mx], [100 * r[robust_key][0]], s=70, color=colors[name], label=label(name),
                 edgecolor="k", marker=marker(name))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(f"{robust_key} robust accuracy (%)")
    if xkey == "total_passes":
      _log_axis(ax, [x["total_passes"] / 1e6 for x in records])
    ax.grid(alpha=0.3)
    ax.legend(**legend)
    fig.tight_layout()
    common.save_figure(fig, os.path.join(out, fname))


def main(argv):
  del argv
  common.quiet_logs()
  config = _CONFIG.value
  unknown = [s for s in _STUDENTS.value if s not in ALL_STUDENTS]
  if unknown:
    raise app.UsageError(f"unknown students {unknown}; known: {', '.join(ALL_STUDENTS)}")
  registry.validate_attacks(_ATTACKS.value, _AA_VERSION.value, config.eval.threat.norm)
  seeds = [int(s) for s in _SEEDS.value]

  def collect():
    kinds = common.teacher_kinds([ALL_STUDENTS[n] for n in _STUDENTS.value])
    records, teachers = common.teachers_per_seed(config, seeds, _WORKDIR.value, run_one, kinds)
    for seed in seeds:
      for name in _STUDENTS.value:
        print(f"== seed {seed}: student {name}", flush=True)
        records.append(run_one(name, student_config(config, name, seed, _WORKDIR.value),
                               os.path.join(_WORKDIR.value, f"seed{seed}", name),
                               common.teacher_of(ALL_STUDENTS[name], teachers, seed)))
    return records

  common.run("robustness_transfer.py", _OUT.value, collect, summarise,
             lambda rows, records, line: markdown(rows, records, config, line), plot)


if __name__ == "__main__":
  app.run(main)
