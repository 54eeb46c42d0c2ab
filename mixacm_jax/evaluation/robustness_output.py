"""The robustness report on disk and on screen: JSON, the per-example CSV, a table, the
accuracy-vs-eps plot and the minimum-norm robustness curve."""
import csv
import json
import os
from typing import Any, Dict

from mixacm_jax.runtime import reporting, storage


def _figure():
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt, *plt.subplots(figsize=(5, 3.5))


def _save(plt, fig, ax, path: str) -> None:
  ax.set_xlabel("eps")
  ax.set_ylabel("accuracy (%)")
  ax.legend()
  ax.grid(alpha=0.3)
  fig.tight_layout()
  with storage.writing("write", path):
    fig.savefig(path, dpi=120)
  plt.close(fig)


def plot_curve(report: Dict[str, Any], path: str) -> None:
  """The minimum-norm robustness curve (accuracy against eps, from each point's smallest
  perturbation), with the eps-bounded attacks' robust accuracy on the same axes: at the
  report's eps, and at each eps of a sweep."""
  plt, fig, ax = _figure()
  for style, (name, result) in zip(("k-", "k--"), report["min_norm"].items()):
    ax.plot(result["curve"]["eps"], [100 * a for a in result["curve"]["accuracy"]], style,
            label=f"{name} minimum norm")
  for name, result in report["attacks"].items():
    ax.plot([report["eps"]], [100 * result["robust_accuracy"]], "o", label=name)
  sweep = report.get("eps_sweep")
  for name in (sweep["reports"][0]["attacks"] if sweep else ()):
    ax.plot(sweep["epsilons"], [100 * r["attacks"][name]["robust_accuracy"]
                                for r in sweep["reports"]], "x:", label=f"{name} (sweep)")
  ax.set_title(f"{report['norm']} robustness curve, {report['num_examples']} examples",
               fontsize=9)
  _save(plt, fig, ax, path)


def plot_sweep(sweep: Dict[str, Any], path: str) -> None:
  plt, fig, ax = _figure()
  eps = sweep["epsilons"]
  ax.plot(eps, [100 * r["clean_accuracy"] for r in sweep["reports"]], "k--", label="clean")
  for name in sweep["reports"][0]["attacks"]:
    ax.plot(eps, [100 * r["attacks"][name]["robust_accuracy"] for r in sweep["reports"]],
            marker="o", label=name)
  _save(plt, fig, ax, path)


def report_table(report: Dict[str, Any]) -> str:
  rows = [{"attack": "clean", "accuracy": report["clean_accuracy"],
           "seconds": report["seconds"]["clean"]}]
  for name, r in report["attacks"].items():
    rows.append({"attack": name, "accuracy": r["robust_accuracy"],
                 "seconds": report["seconds"].get(name, "")})
    for stage, acc in r.get("after_each_stage", {}).items():
      rows.append({"attack": f"  after {stage}", "accuracy": acc, "seconds": ""})
    for stage, acc in (r.get("individual") or {}).items():
      rows.append({"attack": f"  {stage} alone", "accuracy": acc, "seconds": ""})
  return reporting.table(rows, ["attack", "accuracy", "seconds"])


def _without_examples(report):
  out = {k: v for k, v in report.items() if k != "examples"}
  if "eps_sweep" in out:
    out["eps_sweep"] = dict(out["eps_sweep"], reports=[
        _without_examples(r) for r in out["eps_sweep"]["reports"]])
  return out


def write_report(report: Dict[str, Any], workdir: str, name: str = "robustness.json") -> str:
  """robustness.json, and beside it robustness_examples.csv when the report has examples."""
  path = os.path.join(workdir, name)
  with storage.writing("write", path), open(path, "w") as f:
    json.dump(_without_examples(report), f, indent=2)
  if "examples" in report:
    write_examples(report["examples"], os.path.join(workdir, "robustness_examples.csv"))
  return path


def example_rows(examples: Dict[str, Any]):
  """The header and one row per evaluated point: its index in the split, label, clean
  prediction and margin, and per attack the stage that broke it ('' if robust, 'clean' if
  misclassified already), the margin (true logit minus the largest other) at the returned
  point and the perturbation's norm; with a minimum-norm run, each point's smallest
  perturbation found (0: misclassified already, inf: none found)."""
  attacks = examples["attacks"]
  header = ["index", "label", "clean_prediction", "clean_margin"] + [
      f"{a}_{c}" for a in attacks for c in ("broken_by", "margin", "perturbation")]
  min_norm = examples.get("min_norm") or {}
  header += [f"min_norm_{a}" for a in min_norm]
  rows = []
  for i in range(len(examples["index"])):
    row = [int(examples["index"][i]), int(examples["label"][i]),
           int(examples["clean_prediction"][i]), f"{examples['clean_margin'][i]:.6g}"]
    for a in attacks.values():
      row += [a["broken_by"][i], f"{a['margin'][i]:.6g}", f"{a['perturbation'][i]:.6g}"]
    row += [f"{norms[i]:.6g}" for norms in min_norm.values()]
    rows.append(row)
  return header, rows


def write_examples(examples: Dict[str, Any], path: str) -> None:
  header, rows = example_rows(examples)
  with storage.writing("write", path), open(path, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(header)
    writer.writerows(rows)
