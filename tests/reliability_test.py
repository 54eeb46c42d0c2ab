"""Nothing lost, nothing silent: each fault of the checkpoint lifecycle and each bad input at
the library's boundary, reproduced, ends in a correct result or in one line that says what to
do (docs/reliability.md has the table)."""
import json
import os
import signal
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

import mixacm_jax
from mixacm_jax import models, objectives
from mixacm_jax.data import input_pipeline
from mixacm_jax.errors import (ConfigError, NonFiniteLossError,
                               WorkdirBusyError)
from mixacm_jax.evaluation import checkpoint_report, robustness
from mixacm_jax.objectives import natural
from mixacm_jax.runtime import checkpoint, workdir_lock
from mixacm_jax.training import train

from conftest import ROOT, TINY, run_command


def _steps(workdir):
  return sorted(int(d) for d in os.listdir(workdir / "checkpoints") if d.isdigit())


def _one_error_line(out):
  lines = [l for l in out.stderr.splitlines() if l.strip()]
  assert out.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), out.stderr
  return lines[0]


def _corrupt(step_dir):
  """Damages every data file of a checkpoint step, as a truncated write would."""
  for root, _, files in os.walk(step_dir):
    for f in files:
      if not f.startswith("_"):
        with open(os.path.join(root, f), "r+b") as fh:
          fh.truncate(3)


# 1. A clean-only training, and checkpoint.best_metric -------------------------------------

def test_best_metric_is_checked_before_training_and_a_clean_only_run_finishes(tiny_config,
                                                                                tmp_path):
  tiny_config.train_evals.pgd.attacks = "clean"  # the default best_metric is robust_accuracy
  with pytest.raises(ConfigError, match=r"checkpoint.best_metric 'robust_accuracy' is not "
                     r"produced by config.train_evals \(which give clean_accuracy, "
                     r"pgd/clean_accuracy\)") as e:
    train.train_and_evaluate(tiny_config, str(tmp_path / "a"))
  assert "\n" not in str(e.value) and not (tmp_path / "a" / "checkpoints").exists()
  tiny_config.checkpoint.best_metric = "clean_acuracy"
  with pytest.raises(ConfigError, match="'clean_acuracy' is not produced"):
    train.train_and_evaluate(tiny_config, str(tmp_path / "a"))
  tiny_config.checkpoint.best_metric = "clean_accuracy"
  tiny_config.checkpoint.every_steps, tiny_config.checkpoint.keep = 1, 1
  result = train.train_and_evaluate(tiny_config, str(tmp_path / "a"))
  summary = json.loads((tmp_path / "a" / "summary.json").read_text())
  assert summary["clean_accuracy"] == result["clean_accuracy"] and "robust_accuracy" not in summary
  assert len(_steps(tmp_path / "a")) <= 2 and _steps(tmp_path / "a")[-1] == 6  # keep + best


def test_a_step_saved_without_the_best_metric_is_kept_by_latest_only(tmp_path):
  ckpt = checkpoint.Checkpointer(str(tmp_path), keep=1, best_metric="acc", async_save=False)
  ckpt.save(1, {"w": np.ones(2)}, {"acc": 0.5})
  ckpt.save(2, {"w": np.ones(2)}, {"other": 0.9})  # no crash: counted as no metrics
  ckpt.save(3, {"w": np.ones(2)})
  ckpt.close()
  assert ckpt.all_steps() == [1, 3]


def test_the_command_refuses_a_clean_only_run_with_the_default_best_metric_in_one_line(tmp_path):
  out = run_command(f"--workdir={tmp_path}", *TINY, "--config.objective.name=natural",
                    "--config.train_evals.pgd.attacks=clean")
  assert "--config.checkpoint.best_metric" in _one_error_line(out)
  assert not (tmp_path / "checkpoints").exists()


# 2. A corrupt final checkpoint -------------------------------------------------------------

def test_a_corrupt_step_is_replaced_when_it_is_saved_again(tmp_path, capsys):
  ckpt = checkpoint.Checkpointer(str(tmp_path), keep=3, async_save=False)
  ckpt.save(1, {"w": np.full(3, 1.0)})
  ckpt.save(2, {"w": np.full(3, 2.0)})
  ckpt.close()
  _corrupt(tmp_path / "2")
  again = checkpoint.Checkpointer(str(tmp_path), keep=3, async_save=False)
  state, step = again.restore({"w": np.zeros(3)})
  assert step == 1 and "checkpoint step 2" in capsys.readouterr().out
  again.save(2, {"w": np.full(3, 5.0)})  # recomputed: replaces the corrupt one
  again.close()
  state, step = checkpoint.Checkpointer(str(tmp_path), read_only=True).restore({"w": np.zeros(3)})
  assert step == 2 and state["w"].tolist() == [5.0] * 3


@pytest.mark.slow
def test_a_corrupt_last_checkpoint_is_recomputed_and_then_read_by_eval(tiny_config, tmp_path):
  full = train.train_and_evaluate(tiny_config, str(tmp_path))
  info = input_pipeline.get_info(tiny_config.data)
  model = models.create_model_from_config(tiny_config.model, info.num_classes)
  before = checkpoint.load_variables(model, info.image_shape, str(tmp_path), step=6)
  _corrupt(tmp_path / "checkpoints" / "6")
  again = train.train_and_evaluate(tiny_config, str(tmp_path))
  assert again["resumed_from"] == 3 and again["clean_accuracy"] == full["clean_accuracy"]
  after = checkpoint.load_variables(model, info.image_shape, str(tmp_path))  # the latest
  assert jax.tree_util.tree_all(jax.tree_util.tree_map(np.array_equal, before, after))


# 3. The NaN guard checks the state ---------------------------------------------------------

def test_a_state_that_is_not_finite_is_never_saved_nor_restored(tmp_path, capsys):
  ckpt = checkpoint.Checkpointer(str(tmp_path), keep=3, async_save=False)
  ckpt.save(1, {"params": {"w": np.ones(2)}, "batch_stats": {"mean": np.ones(2)}})
  with pytest.raises(NonFiniteLossError, match=r"state of step 2 is not finite "
                     r"\(\['batch_stats'\]\['mean'\]\).*step 1 is the last good one"):
    ckpt.save(2, {"params": {"w": np.ones(2)}, "batch_stats": {"mean": np.array([1, np.nan])}})
  ckpt.close()
  assert ckpt.all_steps() == [1]
  # A poisoned step written by another program is skipped on restore, like a corrupt one.
  with ocp.CheckpointManager(str(tmp_path)) as manager:
    manager.save(3, args=ocp.args.StandardSave({"params": {"w": np.array([np.inf, 0.0])},
                                                "batch_stats": {"mean": np.ones(2)}}))
  state, step = checkpoint.Checkpointer(str(tmp_path), read_only=True).restore(None)
  assert step == 1 and "not finite" in capsys.readouterr().out


def _poisoning(loss_fn):
  """`loss_fn` whose BatchNorm statistics turn NaN while its loss stays finite."""
  def poisoned(params, ctx, batch):
    loss, (batch_stats, metrics) = loss_fn(params, ctx, batch)
    return loss, (jax.tree_util.tree_map(lambda v: v * np.nan, batch_stats), metrics)
  return poisoned


def test_training_stops_when_the_state_is_not_finite_though_the_loss_is(tiny_config, tmp_path):
  objective = objectives.Objective("natural", _poisoning(natural.loss_fn), natural.passes)
  with pytest.raises(NonFiniteLossError, match=r"the state is not finite at step 3 "
                     r"\(\.batch_stats\['bn1'\].*no checkpoint was saved before it"):
    train.train_and_evaluate(tiny_config, str(tmp_path), objective=objective)
  assert _steps(tmp_path) == []


# 4. A bad evaluation value never locks the workdir -----------------------------------------

def test_an_evaluation_that_fails_before_its_first_chunk_binds_nothing(tiny_config, tmp_path,
                                                                       monkeypatch):
  tiny_config.optim.num_steps, tiny_config.eval.attacks = 3, "clean,fgsm"
  train.train_and_evaluate(tiny_config, str(tmp_path))
  tiny_config.eval.num_examples = -5
  with pytest.raises(ConfigError, match="eval.num_examples must be >= 0"):
    checkpoint_report.robustness_of_checkpoint(tiny_config, str(tmp_path))
  tiny_config.eval.num_examples = 64

  def crash(*args, **kwargs):
    raise RuntimeError("the engine failed before its first chunk")
  monkeypatch.setattr(robustness, "_clean_pass", crash)
  with pytest.raises(RuntimeError):
    checkpoint_report.robustness_of_checkpoint(tiny_config, str(tmp_path))
  monkeypatch.undo()
  tiny_config.eval.threat.eps = 0.2  # other settings than the failed run's
  report = checkpoint_report.robustness_of_checkpoint(tiny_config, str(tmp_path))
  assert report["num_examples"] == 64 and report["eps"] == 0.2


# 5. Runs that did nothing or less ----------------------------------------------------------

def test_a_shorter_run_into_a_longer_ones_workdir_is_refused_and_keeps_its_summary(
    tiny_config, tmp_path):
  train.train_and_evaluate(tiny_config, str(tmp_path))
  written = (tmp_path / "summary.json").read_text()
  tiny_config.optim.num_steps = 3
  with pytest.raises(ConfigError, match=r"holds a checkpoint of step 6, past this run's 3 "
                     r"steps: set optim.num_steps >= 6"):
    train.train_and_evaluate(tiny_config, str(tmp_path))
  assert (tmp_path / "summary.json").read_text() == written
  tiny_config.optim.num_steps = 6  # finished: evaluated again, the training's cost kept
  again = train.train_and_evaluate(tiny_config, str(tmp_path))
  first = json.loads(written)
  assert again["train_seconds"] == first["train_seconds"] > 0
  assert json.loads((tmp_path / "summary.json").read_text()) == first


@pytest.mark.parametrize("flag,message", [
    ("--config.optim.num_steps=-5", "set optim.num_epochs > 0 or optim.num_steps > 0"),
    ("--config.optim.num_epochs=-1", "set optim.num_epochs > 0 or optim.num_steps > 0"),
])
def test_a_negative_length_is_one_line(tmp_path, flag, message):
  out = run_command(f"--workdir={tmp_path}", *TINY, "--config.optim.num_steps=0", flag)
  assert message in _one_error_line(out) and not os.path.exists(tmp_path / "summary.json")


# 6. One writer per workdir -----------------------------------------------------------------

def test_a_second_run_into_a_held_workdir_stops_at_once_naming_the_holder(tiny_config,
                                                                          tmp_path):
  with workdir_lock.hold(str(tmp_path)):
    with pytest.raises(WorkdirBusyError, match=f"in use by process {os.getpid()} on "):
      train.train_and_evaluate(tiny_config, str(tmp_path))
    out = run_command(f"--workdir={tmp_path}", *TINY)
    assert f"is in use by process {os.getpid()}" in _one_error_line(out)
    out = run_command(f"--workdir={tmp_path}", *TINY, "--mode=eval")
    assert "is in use by process" in _one_error_line(out)
  assert not (tmp_path / "checkpoints").exists()


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
  holder = subprocess.Popen(
      [sys.executable, "-c", "import sys, time; from mixacm_jax.runtime import workdir_lock\n"
       f"with workdir_lock.hold({str(tmp_path)!r}):\n  print('held', flush=True); "
       "time.sleep(600)"], cwd=ROOT, stdout=subprocess.PIPE, text=True)
  assert holder.stdout.readline().strip() == "held"
  with pytest.raises(WorkdirBusyError, match=f"process {holder.pid}"):
    with workdir_lock.hold(str(tmp_path)):
      pass
  holder.send_signal(signal.SIGKILL)
  holder.wait()
  with workdir_lock.hold(str(tmp_path)):  # the OS released it with the process
    pass


# 7. Storage failures -----------------------------------------------------------------------

@pytest.mark.slow
def test_a_full_disk_is_one_line_and_the_run_continues_once_there_is_space(tmp_path):
  args = [f"--workdir={tmp_path / 'w'}", *TINY, "--config.model.kwargs.base_width=16",
          "--config.optim.num_steps=4"]
  cache = {"JAX_COMPILATION_CACHE_DIR": str(tmp_path / "xla")}  # not the shared one
  # EFBIG past 20 kB per file: a full disk for this process, without root (Python ignores
  # SIGXFSZ, so the write fails instead of the process).
  full = run_command(*args, extra_env=cache, prefix=["prlimit", "--fsize=20000"])
  line = _one_error_line(full)
  assert "could not save the checkpoint of step 2 in" in line and "File too large" in line
  assert "Traceback" not in full.stderr and not os.path.exists(tmp_path / "w" / "summary.json")
  freed = run_command(*args, extra_env=cache)
  assert freed.returncode == 0, freed.stderr[-2000:]
  assert _steps(tmp_path / "w") == [2, 4]


# A failed save's other writes fail too; asyncio reports each such task or future when it is
# collected, at any moment up to the process's end. Made here: an orbax coroutine (compiled
# under orbax's path), a bare future that failed to write, and a user's own failing task and
# future (an OSError that is not a full disk).
_UNREAD_FAILURES = """
import asyncio, gc
from absl import app
from mixacm_jax.cli import quiet

def failing(filename, message):
  scope = {}
  exec(compile(f"async def write():\\n  raise ValueError({message!r})", filename, "exec"),
       scope)
  return scope["write"]()

def main(_):
  quiet.quiet_libraries()
  loop = asyncio.new_event_loop()
  loop.create_task(failing("/venv/site-packages/orbax/handler.py", "Event loop is closed"))
  loop.create_task(failing("/home/me/mine.py", "my own bug"))
  loop.create_future().set_exception(ValueError("Failed to write: [os_error_code='27']"))
  loop.create_future().set_exception(ConnectionResetError(104, "my own connection"))
  loop.run_until_complete(asyncio.sleep(0))
  gc.collect()
  loop.close()

app.run(main)
"""


def test_asyncio_reports_of_a_failed_saves_unread_writes_are_dropped_and_others_kept():
  out = subprocess.run([sys.executable, "-c", _UNREAD_FAILURES], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
  assert out.returncode == 0, out.stderr
  assert out.stderr.count("never retrieved") == 2, out.stderr
  assert "my own bug" in out.stderr and "my own connection" in out.stderr, out.stderr


def _unshare_works():
  try:
    return subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode == 0
  except OSError:
    return False


@pytest.mark.slow
def test_a_read_only_workdir_is_one_line(tmp_path):
  """A read-only mount in a user namespace (no root needed where the kernel allows it)."""
  if not _unshare_works():
    pytest.skip("user namespaces are not available here (unshare -rm failed); "
                "tools/storage_faults.sh checks this case with root")
  assert run_command(f"--workdir={tmp_path}", *TINY).returncode == 0
  command = " ".join([sys.executable, "run.py", f"--workdir={tmp_path}", "--mode=eval",
                      *[f"'{a}'" for a in TINY]])
  out = subprocess.run(
      ["unshare", "-rm", "sh", "-c", f"mount --bind {tmp_path} {tmp_path} && "
       f"mount -o remount,bind,ro {tmp_path} && {command}"], cwd=ROOT, capture_output=True,
      text=True, env=dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3"))
  line = _one_error_line(out)
  assert "Read-only file system; make it writable or choose another --workdir" in line


# 8. The library's boundary ------------------------------------------------------------------

W = np.random.default_rng(0).normal(size=(8 * 8 * 3, 10)).astype(np.float32)
linear = lambda x: x.reshape(len(x), -1) @ W  # a logits function of NHWC 8x8x3 images
X = np.random.default_rng(1).random((16, 8, 8, 3), dtype=np.float32)
Y = np.arange(16) % 10


@pytest.mark.parametrize("images,labels,message", [
    (X.transpose(0, 3, 1, 2), Y, r"look channels-first \(NCHW\).*x.transpose\(0, 2, 3, 1\)"),
    (X * 255, Y, r"must be in \[0, 1\].*found values in \[.*\]: divide by 255"),
    ((X * 255).astype(np.uint8), Y, r"dtype uint8 \(0-255\?\).*/ 255"),
    (X - 0.5, Y, r"must be in \[0, 1\].*undo the normalisation"),
    (np.where(X > 0.9, np.nan, X), Y, r"hold \d+ NaN or inf values"),
    (X[0], Y[:1], r"one image\? add a batch axis"),
    (X[..., 0], Y, r"add a channel axis"),
    (X, Y[:5], r"one class index per image, shape \(16,\), got shape \(5,\)"),
    (X, np.eye(10)[Y], r"look one-hot; pass class indices"),
    (X, Y + 0.5, r"fractional"),
    (X, Y + 10, r"labels must be in \[0, 10\)"),
    (X, None, r"labels are needed"),
    (X[:, :4], Y, r"the model cannot take images of shape \(4, 8, 3\)"),
    (X.astype(bool), Y, r"real numbers in \[0, 1\], got dtype bool"),
])
def test_bad_inputs_to_evaluate_and_run_autoattack_are_one_line(images, labels, message):
  with pytest.raises(ConfigError, match=message) as e:
    mixacm_jax.evaluate(linear, None, images, labels=labels, attacks="clean", eps=0.1)
  assert "\n" not in str(e.value)
  with pytest.raises(ConfigError, match=message):
    mixacm_jax.run_autoattack(linear, images, labels, jax.random.PRNGKey(0), eps=0.1)


@pytest.mark.parametrize("kwargs,message", [
    ({"eps": 0.0}, r"eps must be in \(0, 1\]"),
    ({"eps": float("nan")}, r"eps must be in \(0, 1\]"),
    ({"eps": 0.1, "norm": "l3"}, r"norm must be one of"),
    ({"eps": 0.1, "version": "plus2"}, r"unknown AutoAttack version 'plus2'"),
    ({"eps": 0.1, "batch_size": 0}, r"batch_size must be a positive integer"),
    ({"eps": "0.1"}, r"an evaluation setting of the wrong type"),
])
def test_run_autoattack_checks_its_settings_as_evaluate_does(kwargs, message):
  with pytest.raises(ConfigError, match=message):
    mixacm_jax.run_autoattack(linear, X, Y, jax.random.PRNGKey(0), **kwargs)
  with pytest.raises(ConfigError, match="key must be one JAX PRNG key"):
    mixacm_jax.run_autoattack(linear, X, Y, 0, eps=0.1)


def test_run_autoattack_returns_the_sanity_flags_evaluate_reports():
  probabilities = lambda x: jax.nn.softmax(linear(x))
  report = mixacm_jax.evaluate(probabilities, None, X, labels=Y, attacks="clean", eps=0.1)
  *_, flags = mixacm_jax.run_autoattack(
      probabilities, X, Y, jax.random.PRNGKey(0), eps=0.1, version="apgd",
      overrides={"apgd-ce": {"n_iter": 2}, "apgd-t": {"n_iter": 2}}, return_flags=True)
  assert any("probabilities" in f for f in report["warnings"])
  assert [f for f in flags if "probabilities" in f] == [
      f for f in report["warnings"] if "probabilities" in f]
