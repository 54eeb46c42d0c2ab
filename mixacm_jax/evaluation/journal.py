"""The progress of a long evaluation on disk, so that a killed or preempted `--mode=eval`
continues where it stopped: one file per finished chunk of points (per attack, stage and
target), each written atomically, under a manifest of the settings it belongs to. A run
replays the chunks it finds and computes only the rest, in the same order with the same
keys, so it ends with exactly the numbers of an uninterrupted run. The manifest is written
with the first chunk: a run that failed before committing any work binds nothing."""
import hashlib
import io
import json
import os
import re
import shutil
from typing import Any, Dict, Optional

import jax
import numpy as np

from mixacm_jax.errors import CheckpointError, ConfigError
from mixacm_jax.runtime import storage

MANIFEST = "manifest.json"


class Journal:
  """Chunks of an evaluation in `directory`, for the settings `settings` (JSON-able)."""

  def __init__(self, directory: str, settings: Dict[str, Any]):
    self.directory = directory
    self.settings = settings
    self.should_stop = lambda: False  # e.g. a SIGTERM flag: stop after the chunk in hand
    self.resumed = len(self._chunks())
    path = os.path.join(directory, MANIFEST)
    if self.resumed and os.path.exists(path):
      with open(path) as f:
        found = json.load(f)
      changed = [k for k in sorted(set(found) | set(settings)) if found.get(k) != settings.get(k)]
      if changed:
        raise ConfigError(
            f"{directory} holds an unfinished evaluation with other settings ("
            + "; ".join(f"{k}: {found.get(k)} -> {settings.get(k)}" for k in changed[:4])
            + "): run it with its settings to finish it, or delete the folder")
    self._bound = bool(self.resumed)

  def _chunks(self):
    if not os.path.isdir(self.directory):
      return []
    return [f for f in os.listdir(self.directory) if f.endswith(".npz")]

  def _path(self, key: str) -> str:
    return os.path.join(self.directory, re.sub(r"[^A-Za-z0-9_.-]", "_", key) + ".npz")

  def load(self, key: str) -> Optional[Dict[str, np.ndarray]]:
    path = self._path(key)
    if not os.path.exists(path):
      return None
    try:
      with np.load(path) as f:
        return {k: f[k] for k in f.files}
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointError(f"evaluation progress {path} is unreadable "
                            f"({type(e).__name__}); delete it to recompute that chunk") from None

  def save(self, key: str, **arrays: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    with storage.writing("save evaluation progress in", self.directory):
      if not self._bound:  # the first chunk binds the folder to these settings
        os.makedirs(self.directory, exist_ok=True)
        _write_atomic(os.path.join(self.directory, MANIFEST),
                      json.dumps(self.settings, indent=2, sort_keys=True).encode())
        self._bound = True
      _write_atomic(self._path(key), buffer.getvalue())

  def finish(self) -> None:
    """The evaluation is complete (its report written): its progress is no longer needed."""
    shutil.rmtree(self.directory, ignore_errors=True)
    parent = os.path.dirname(self.directory)
    if os.path.isdir(parent) and not os.listdir(parent):
      os.rmdir(parent)


def _write_atomic(path: str, data: bytes) -> None:
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "wb") as f:
    f.write(data)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def fingerprint(tree) -> str:
  """A short hash of a pytree of arrays (the model's variables), to tell models apart."""
  digest = hashlib.sha256()
  for leaf in jax.tree_util.tree_leaves(tree):
    digest.update(np.ascontiguousarray(np.asarray(leaf)).tobytes())
  return digest.hexdigest()[:16]
