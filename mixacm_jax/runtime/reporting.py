"""Progress lines, JSON-lines metrics, TensorBoard summaries and summary tables.
Only process 0 writes or prints."""
import json
import os
import sys
import time
from typing import Mapping, Optional, Sequence

import jax

from mixacm_jax.runtime import storage


def is_primary() -> bool:
  return jax.process_index() == 0


def _format_duration(seconds: float) -> str:
  seconds = int(max(0, seconds))
  return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class MetricWriter:
  """Writes scalars to `workdir/metrics.jsonl` and TensorBoard event files in `workdir`."""

  def __init__(self, workdir: str, enabled: Optional[bool] = None):
    self.enabled = is_primary() if enabled is None else enabled
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._tb = None
    if self.enabled:
      try:  # TensorBoard's own event writer: no TensorFlow needed.
        from tensorboard.summary.writer.event_file_writer import EventFileWriter  # pylint: disable=g-import-not-at-top
        self._tb = EventFileWriter(os.path.join(workdir, "tensorboard"))
      except ImportError:  # e.g. a stock JAX GPU image: JSON lines only
        print("note: the tensorboard package is not installed; metrics go to "
              f"{self.path} only", file=sys.stderr)

  def write(self, step: int, scalars: Mapping[str, float], prefix: str = "") -> None:
    if not self.enabled:
      return
    row = {f"{prefix}{k}": float(v) for k, v in scalars.items()}
    with storage.writing("append to", self.path), open(self.path, "a") as f:
      f.write(json.dumps({"step": int(step), "time": time.time(), **row}) + "\n")
    if self._tb is None:
      return
    from tensorboard.compat.proto import event_pb2, summary_pb2  # pylint: disable=g-import-not-at-top
    summary = summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=k, simple_value=v)
                                         for k, v in row.items()])
    self._tb.add_event(event_pb2.Event(wall_time=time.time(), step=int(step), summary=summary))
    self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


class Progress:
  """One line per report: step, the given metrics, examples/s and ETA."""

  def __init__(self, total_steps: int, examples_per_step: int, start_step: int = 0,
               label: str = "train", stream=None):
    self.total, self.per_step, self.label = total_steps, examples_per_step, label
    self.stream = stream or sys.stdout
    self._t, self._step = time.perf_counter(), start_step

  def report(self, step: int, metrics: Mapping[str, float]) -> None:
    now = time.perf_counter()
    rate = (step - self._step) * self.per_step / max(now - self._t, 1e-9)
    self._t, self._step = now, step
    eta = (self.total - step) * self.per_step / rate if rate > 0 else float("nan")
    parts = " | ".join(f"{k} {v:.4g}" for k, v in metrics.items())
    if is_primary():
      print(f"[{self.label}] step {step}/{self.total} | {parts} | {rate:,.0f} ex/s | "
            f"ETA {_format_duration(eta) if eta == eta else '?'}", file=self.stream, flush=True)


def table(rows: Sequence[Mapping[str, object]], columns: Sequence[str]) -> str:
  """A Markdown table of `rows` (floats in [0, 1] under *accuracy* columns shown as %)."""
  def cell(col, v):
    if isinstance(v, float):
      return f"{100 * v:.2f}" if "acc" in col else f"{v:.4g}"
    return str(v)
  body = [[cell(c, r.get(c, "")) for c in columns] for r in rows]
  widths = [max(len(c), *(len(b[i]) for b in body)) if body else len(c)
            for i, c in enumerate(columns)]
  line = lambda cells: "| " + " | ".join(x.ljust(w) for x, w in zip(cells, widths)) + " |"
  return "\n".join([line(columns), line(["-" * w for w in widths])] + [line(b) for b in body])
