"""The robustness report on disk and on screen: JSON, a table, the accuracy-vs-eps plot."""
import json
import os
from typing import Any, Dict

from mixacm_jax.runtime import reporting


def plot_sweep(sweep: Dict[str, Any], path: str) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(5, 3.5))
  eps = sweep["epsilons"]
  ax.plot(eps, [100 * r["clean_accuracy"] for r in sweep["reports"]], "k--", label="clean")
  for name in sweep["reports"][0]["attacks"]:
    ax.plot(eps, [100 * r["attacks"][name]["robust_accuracy"] for r in sweep["reports"]],
            marker="o", label=name)
  ax.set_xlabel("eps")
  ax.set_ylabel("accuracy (%)")
  ax.legend()
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def report_table(report: Dict[str, Any]) -> str:
  rows = [{"attack": "clean", "accuracy": report["clean_accuracy"],
           "seconds": report["seconds"]["clean"]}]
  for name, r in report["attacks"].items():
    rows.append({"attack": name, "accuracy": r["robust_accuracy"],
                 "seconds": report["seconds"][name]})
    for stage, acc in r.get("after_each_stage", {}).items():
      rows.append({"attack": f"  after {stage}", "accuracy": acc, "seconds": ""})
  return reporting.table(rows, ["attack", "accuracy", "seconds"])


def write_report(report: Dict[str, Any], workdir: str, name: str = "robustness.json") -> str:
  path = os.path.join(workdir, name)
  with open(path, "w") as f:
    json.dump(report, f, indent=2)
  return path
