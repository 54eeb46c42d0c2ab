"""Checkpoints: round trip, keep-last-k plus best, corrupt latest falls back."""
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mixacm_jax.errors import CheckpointError
from mixacm_jax.runtime.checkpoint import Checkpointer


def _state(v):
  return {"params": {"w": jnp.full((3, 2), v, jnp.float32)}, "step": jnp.asarray(int(v)),
          "rng": jax.random.PRNGKey(int(v))}


def test_round_trip_and_retention(tmp_path):
  ckpt = Checkpointer(str(tmp_path), keep=2, best_metric="acc", async_save=False)
  for step, acc in [(1, 0.9), (2, 0.1), (3, 0.2), (4, 0.3)]:
    ckpt.save(step, _state(step), {"acc": acc})
  ckpt.wait()
  assert ckpt.all_steps() == [1, 3, 4]  # the last two, plus the best (step 1)
  restored, step = ckpt.restore(_state(0))
  assert step == 4
  np.testing.assert_array_equal(restored["params"]["w"], np.full((3, 2), 4.0))
  np.testing.assert_array_equal(restored["rng"], jax.random.PRNGKey(4))
  restored, _ = ckpt.restore(_state(0), step=1)
  assert float(restored["params"]["w"][0, 0]) == 1.0
  ckpt.close()


def test_corrupt_latest_falls_back_to_previous(tmp_path, capsys):
  ckpt = Checkpointer(str(tmp_path), keep=3, async_save=False)
  ckpt.save(1, _state(1))
  ckpt.save(2, _state(2))
  ckpt.close()
  # Damage every data file of step 2, as a truncated write would.
  for root, _, files in os.walk(tmp_path / "2"):
    for f in files:
      if not f.startswith("_"):
        with open(os.path.join(root, f), "r+b") as fh:
          fh.truncate(3)
  reader = Checkpointer(str(tmp_path), keep=3)
  restored, step = reader.restore(_state(0))
  reader.close()  # an open async checkpointer's event loop would be collected mid-flight
  assert step == 1 and float(restored["params"]["w"][0, 0]) == 1.0
  assert "checkpoint step 2" in capsys.readouterr().out


def test_only_unreadable_checkpoints_raise(tmp_path):
  ckpt = Checkpointer(str(tmp_path), keep=3, async_save=False)
  ckpt.save(1, _state(1))
  ckpt.close()
  shutil.rmtree(tmp_path / "1" / "default")
  reader = Checkpointer(str(tmp_path), keep=3)
  with pytest.raises(CheckpointError, match="no readable checkpoint"):
    reader.restore(_state(0))
  reader.close()


def test_missing_checkpoint_returns_target(tmp_path):
  target = _state(7)
  restored, step = Checkpointer(str(tmp_path / "fresh")).restore(target)
  assert step is None and restored is target
