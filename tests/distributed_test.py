"""Pod-scale behaviour on one machine: 1, 2 and 8 simulated devices, two processes joined by
jax.distributed over localhost, and a run killed with SIGKILL / SIGTERM and resumed."""
import os
import random
import signal
import socket
import subprocess
import sys

import numpy as np
import pytest

from conftest import TINY_MODEL

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "tests", "dist_worker.py")


def _env(devices):
  return dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
              TF_CPP_MIN_LOG_LEVEL="3", JAX_PLATFORMS="cpu")


def _worker(out, devices, *extra):
  return subprocess.Popen([sys.executable, WORKER, f"--out={out}", *extra], env=_env(devices),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _load(path):
  with np.load(path) as f:
    return {k: f[k] for k in f.files}


def _max_diff(a, b):
  assert a.keys() == b.keys()
  return max(float(np.max(np.abs(a[k] - b[k]))) for k in a)


@pytest.mark.slow
def test_one_two_and_eight_devices_give_the_same_params(tmp_path):
  procs = {n: _worker(tmp_path / f"d{n}.npz", n) for n in (1, 2, 8)}
  for n, proc in procs.items():
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-2000:]
  one = _load(tmp_path / "d1.npz")
  assert _max_diff(one, _load(tmp_path / "d2.npz")) < 1e-5
  assert _max_diff(one, _load(tmp_path / "d8.npz")) < 1e-5


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_with_jax_distributed_match_one_process(tmp_path):
  port = _free_port()
  procs = [_worker(tmp_path / f"p{i}.npz", 1, f"--coordinator=127.0.0.1:{port}",
                   "--num_processes=2", f"--process_id={i}", f"--ckpt_dir={tmp_path / 'ckpt'}")
           for i in range(2)]
  single = _worker(tmp_path / "single.npz", 2)
  outs = [p.communicate(timeout=600) for p in procs + [single]]
  for p, (out, err) in zip(procs + [single], outs):
    assert p.returncode == 0, err[-3000:]
  assert "process 0/2, 2 devices: ok" in outs[0][0]
  # Both processes saved one checkpoint together and read it back identical.
  assert all(f"process {i}: checkpoint round trip ok" in outs[i][0] for i in range(2))
  assert sorted(d for d in os.listdir(tmp_path / "ckpt") if d.isdigit()) == ["3"]
  ref = _load(tmp_path / "single.npz")
  for i in range(2):
    assert _max_diff(ref, _load(tmp_path / f"p{i}.npz")) < 1e-5


TINY = TINY_MODEL + [
    "--config.optim.batch_size=32", "--config.optim.num_steps=12",
    "--config.objective.pgd_at.attack.steps=1", "--config.train_evals.pgd.attacks=clean,pgd1",
    "--config.eval.num_examples=64", "--config.checkpoint.every_steps=2",
    "--config.log_every_steps=1"]


def _train(workdir, stop_at=None, sig=signal.SIGKILL):
  """Runs the CLI; with `stop_at`, sends `sig` once step `stop_at` has been logged."""
  proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "run.py"), f"--workdir={workdir}",
                           *TINY], env=_env(1), cwd=ROOT, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  lines = []
  if stop_at is not None:
    for line in proc.stdout:
      lines.append(line)
      if f"[train] step {stop_at}/" in line:
        proc.send_signal(sig)
        break
  out, err = proc.communicate(timeout=600)
  return proc.returncode, "".join(lines) + out, err


def _final_params(workdir):
  from mixacm_jax.runtime.checkpoint import Checkpointer  # pylint: disable=g-import-not-at-top
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), read_only=True, async_save=False)
  tree, step = ckpt.restore(None)
  import jax  # pylint: disable=g-import-not-at-top
  flat = jax.tree_util.tree_flatten_with_path((tree["params"], tree["batch_stats"],
                                               tree["opt_state"]))[0]
  return step, {jax.tree_util.keystr(k): np.asarray(v) for k, v in flat}


@pytest.mark.slow
def test_sigkill_at_a_random_step_then_resume_is_bit_identical(tmp_path):
  rc, _, err = _train(tmp_path / "straight")
  assert rc == 0, err[-2000:]
  kill_at = random.Random().choice([3, 5, 6, 7, 9])
  print(f"killing at step {kill_at}")
  rc, out, _ = _train(tmp_path / "killed", stop_at=kill_at)
  assert rc == -signal.SIGKILL
  ckpt_dir = tmp_path / "killed" / "checkpoints"
  # Only committed steps have a plain number as their name; a save cut off by the kill is
  # left as a temporary directory and must not be taken for a checkpoint.
  committed = sorted(int(d) for d in os.listdir(ckpt_dir) if d.isdigit()) if ckpt_dir.exists() else []
  rc, out, err = _train(tmp_path / "killed")
  assert rc == 0, err[-2000:]
  if committed:
    assert f"Resuming from the checkpoint of step {committed[-1]}" in out
  else:  # killed before the first asynchronous save had committed: a fresh start
    assert "Resuming" not in out
  step_a, a = _final_params(tmp_path / "straight")
  step_b, b = _final_params(tmp_path / "killed")
  assert step_a == step_b == 12
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_before_exiting(tmp_path):
  rc, out, err = _train(tmp_path, stop_at=5, sig=signal.SIGTERM)
  assert rc != 0 and "SIGTERM: saved the checkpoint of step" in err
  step = int(err.split("checkpoint of step ")[1].split(" ")[0])
  assert step >= 5
  steps = sorted(int(d) for d in os.listdir(tmp_path / "checkpoints") if d.isdigit())
  assert step in steps
