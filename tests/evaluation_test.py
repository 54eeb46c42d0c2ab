"""Evaluation a reviewer can audit and a preempted job can resume: a `--mode=eval` killed
(SIGKILL, SIGTERM) and started again ends with exactly an uninterrupted run's report and
per-example table; that table reproduces every accuracy; each sanity flag fires on a model
built to trigger it and stays quiet otherwise; EOT and BPDA do what they say."""
import csv
import functools
import json
import os
import shutil
import re
import signal
import subprocess
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mixacm_jax
from mixacm_jax import api, models
from mixacm_jax.attacks import autoattack
from mixacm_jax.data import digits
from mixacm_jax.errors import ConfigError
from mixacm_jax.evaluation import journal as journal_lib, robustness
from mixacm_jax.training import train

from conftest import TINY_MODEL, tiny_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# `--mode=eval` with AutoAttack's stages shortened (the same in every run of a test).
DRIVER = """
import functools, sys
from mixacm_jax.attacks import autoattack as aa
aa.STAGES["apgd-ce"] = functools.partial(aa.STAGES["apgd-ce"], n_iter=6)
aa.STAGES["apgd-t"] = functools.partial(aa.STAGES["apgd-t"], n_iter=6, n_target_classes=3)
from mixacm_jax.cli.main import entry
sys.argv = ["mixacm"] + sys.argv[1:]
entry()
"""
EVAL_FLAGS = ["--mode=eval", "--host_devices=1", "--config.eval.attacks=clean,pgd5,autoattack",
              "--config.eval.autoattack_version=apgd", "--config.eval.num_examples=320",
              "--config.eval.batch_size=32"] + TINY_MODEL


def _eval(workdir, *extra, wait=True):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", XLA_FLAGS="", JAX_PLATFORMS="cpu")
  cmd = [sys.executable, "-c", DRIVER, f"--workdir={workdir}", *EVAL_FLAGS, *extra]
  if wait:
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
  return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                          cwd=ROOT, env=env)


def _chunks(workdir):
  directory = os.path.join(workdir, "eval_progress", "host0")
  return len([f for f in os.listdir(directory) if f.endswith(".npz")]) \
      if os.path.isdir(directory) else 0


def _stop_after(workdir, n_chunks, sig):
  proc = _eval(workdir, wait=False)
  while _chunks(workdir) < n_chunks and proc.poll() is None:
    time.sleep(0.05)
  proc.send_signal(sig)
  _, err = proc.communicate(timeout=300)
  return proc.returncode, err


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A tiny digits model trained a few dozen steps (its checkpoint's workdir)."""
  from mixacm_jax.configs import default  # pylint: disable=g-import-not-at-top
  config = default.get_config()
  config.model.kwargs.base_width, config.model.kwargs.stage_sizes = 4, (1, 1)
  config.objective.name, config.optim.num_steps = "natural", 40
  config.train_evals.pgd.attacks, config.checkpoint.best_metric = "clean", "clean_accuracy"
  config.checkpoint.async_save = False
  workdir = str(tmp_path_factory.mktemp("trained"))
  train.train_and_evaluate(config, workdir)
  return workdir


@pytest.mark.slow
def test_a_killed_eval_continues_to_exactly_the_uninterrupted_result(trained, tmp_path):
  whole, killed = str(tmp_path / "whole"), str(tmp_path / "killed")
  for d in (whole, killed):
    shutil.copytree(trained, d)
  done = _eval(whole)
  assert done.returncode == 0, done.stderr[-2000:]
  assert not os.path.exists(os.path.join(whole, "eval_progress"))  # removed when complete

  rng = np.random.RandomState(int(time.time()) % 1000)
  rc, _ = _stop_after(killed, 2 + rng.randint(3), signal.SIGKILL)
  assert rc == -signal.SIGKILL and _chunks(killed) >= 2
  changed = _eval(killed, "--config.eval.threat.eps=0.2")  # refuses to mix settings
  assert changed.returncode == 2
  assert "unfinished evaluation with other settings (eps: 0.1 -> 0.2" in changed.stderr
  before = _chunks(killed)
  rc, err = _stop_after(killed, before + 2, signal.SIGTERM)  # preempted: commits, exits
  assert rc != 0 and "SIGTERM: evaluation progress saved" in err, err[-2000:]
  resumed = _eval(killed)
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  assert "Continuing the evaluation" in resumed.stdout

  reports = [json.load(open(os.path.join(d, "robustness.json"))) for d in (whole, killed)]
  for key in ("num_examples", "clean_accuracy", "attacks", "settings"):
    assert reports[0][key] == reports[1][key], key
  tables = [open(os.path.join(d, "robustness_examples.csv")).read() for d in (whole, killed)]
  assert tables[0] == tables[1]
  _check_table_reproduces_the_report(reports[0], os.path.join(whole, "robustness_examples.csv"))


def _check_table_reproduces_the_report(report, path):
  rows = list(csv.DictReader(open(path)))
  n = len(rows)
  assert n == report["num_examples"] == 320
  assert sum(r["clean_prediction"] == r["label"] for r in rows) / n == report["clean_accuracy"]
  for name, result in report["attacks"].items():
    broken = [r[f"{name}_broken_by"] for r in rows]
    assert broken.count("") / n == result["robust_accuracy"], name
    assert broken.count("clean") / n == pytest.approx(1 - report["clean_accuracy"])
    seen = {"clean"}
    for stage, acc in result.get("after_each_stage", {}).items():
      seen.add(stage)
      assert sum(b not in seen for b in broken) / n == acc, (name, stage)
    for r in rows:  # a broken point's returned point is misclassified; a robust one is x
      margin, size = float(r[f"{name}_margin"]), float(r[f"{name}_perturbation"])
      if r[f"{name}_broken_by"] == "":
        assert margin > 0 and size == 0
      elif r[f"{name}_broken_by"] != "clean":
        assert margin < 1e-4 and 0 < size <= report["eps"] + 1e-5
  assert report["settings"]["seed"] == 0 and len(report["settings"]["prng_key"]) == 2
  assert report["settings"]["stages"]["apgd-ce"]["n_iter"] == 6
  assert report["settings"]["versions"]["jax"] == jax.__version__


def test_a_changed_setting_is_refused_in_one_line(tmp_path):
  first = journal_lib.Journal(str(tmp_path), {"eps": 0.1, "attacks": "pgd20"})
  # Nothing committed yet: other settings may take the folder (a failed start binds nothing).
  assert journal_lib.Journal(str(tmp_path), {"eps": 0.3, "attacks": "pgd20"}).resumed == 0
  first.save("clean", prediction=np.zeros(3))
  with pytest.raises(ConfigError, match=r"other settings \(eps: 0.1 -> 0.2\)") as e:
    journal_lib.Journal(str(tmp_path), {"eps": 0.2, "attacks": "pgd20"})
  assert "\n" not in str(e.value)


# ---------------------------------------------------------------------------------------------
# Sanity flags, each made to fire and kept quiet.

W = jax.random.normal(jax.random.PRNGKey(0), (64, 10))
linear = lambda v: v.reshape(len(v), -1) @ W
X = digits.arrays("test")[0][:64]
Y = np.asarray(linear(X).argmax(-1))


def _report(fn, attacks="clean,pgd5", version="standard", x=X, y=Y, eps=0.1):
  cfg = api.eval_config(attacks=attacks, eps=eps, version=version, batch_size=32)
  return robustness.report_on_arrays(fn, None, x, y, cfg, verbose=False)


def _flags(report, text):
  return [w for w in report["warnings"] if text in w]


def test_the_flags_stay_quiet_on_a_plain_differentiable_model():
  assert _report(linear)["warnings"] == []


def test_the_flags_stay_quiet_on_a_trained_network(trained):
  from mixacm_jax.runtime import checkpoint  # pylint: disable=g-import-not-at-top
  model = tiny_model()
  variables = checkpoint.load_variables(model, (8, 8, 1), trained)
  x, y = digits.arrays("test")
  cfg = api.eval_config(attacks="clean,pgd5", eps=0.1, batch_size=64, num_examples=128)
  report = robustness.report_on_arrays(model, variables, x[:128], y[:128], cfg, verbose=False)
  assert report["warnings"] == []


def test_probabilities_instead_of_logits_are_flagged():
  assert _flags(_report(lambda v: jax.nn.softmax(linear(v))), "probabilities")


def test_a_randomised_model_is_flagged():
  noisy = lambda v, rng=jax.random.PRNGKey(0): linear(v) + jax.random.normal(rng, (len(v), 10))
  assert _flags(_report(noisy), "randomised defence")


def test_zero_gradients_are_flagged():
  quantised = lambda v: linear(jnp.round(v * 4) / 4)
  assert _flags(_report(quantised), "64 of 64 inputs have an all-zero")


@pytest.mark.slow
def test_square_beating_the_white_box_stages_is_flagged(monkeypatch):
  monkeypatch.setitem(autoattack.VERSIONS, "short", [("apgd-ce", {}), ("square", {})])
  monkeypatch.setitem(autoattack.STAGES, "apgd-ce",
                      functools.partial(autoattack.STAGES["apgd-ce"], n_iter=5))
  monkeypatch.setitem(autoattack.STAGES, "square",
                      functools.partial(autoattack.STAGES["square"], n_queries=100))
  # Gradients that point nowhere (a flat, rounded input): only the black-box search works.
  quantised = lambda v: linear(jnp.round(v * 2) / 2)
  y = np.asarray(quantised(X).argmax(-1))
  report = _report(quantised, "clean,autoattack", "short", y=y, eps=0.3)
  stages = report["attacks"]["autoattack"]["after_each_stage"]
  assert stages["square"] < stages["apgd-ce"] - 0.002
  assert _flags(report, "Square lowered the robust accuracy")
  assert not _flags(_report(linear, "clean,autoattack", "short", eps=0.3),
                    "Square lowered")


@pytest.mark.slow
def test_class_counts_the_version_cannot_serve():
  three = lambda v: linear(v)[:, :3]
  y3 = np.asarray(three(X).argmax(-1))
  report = _report(three, "clean,autoattack", "apgd", y=y3, eps=0.05)
  assert _flags(report, "3 classes: the targeted stages attack 2 target classes")
  assert report["settings"]["stages"]["apgd-t"]["n_target_classes"] == 9
  two = lambda v: linear(v)[:, :2]
  with pytest.raises(ConfigError, match="apgd-t use the DLR loss, which needs at least 3 "
                                        "classes; the model has 2") as e:
    _report(two, "clean,autoattack", "apgd", y=np.asarray(two(X).argmax(-1)))
  assert "\n" not in str(e.value)


# ---------------------------------------------------------------------------------------------
# The wrappers and the per-example arrays of the library calls.

def test_eot_averages_logits_and_gradients_over_the_draws():
  noisy = lambda v, rng: linear(v) * (1 + jax.random.normal(rng, (len(v), 1)))
  f = mixacm_jax.eot(noisy, n=4)
  key = jax.random.PRNGKey(7)
  draws = jax.random.split(key, 4)
  manual = np.mean([np.asarray(noisy(X[:5], k)) for k in draws], 0)
  np.testing.assert_allclose(np.asarray(f(X[:5], rng=key)), manual, rtol=1e-5, atol=1e-5)
  grad = jax.grad(lambda v: f(v, rng=key)[:, 0].sum())(X[:5])
  manual_grad = np.mean([np.asarray(jax.grad(lambda v, k=k: noisy(v, k)[:, 0].sum())(X[:5]))
                         for k in draws], 0)
  np.testing.assert_allclose(np.asarray(grad), manual_grad, rtol=1e-5, atol=1e-5)


def test_bpda_has_the_forward_value_and_the_backward_gradient():
  t = mixacm_jax.bpda(lambda v: jnp.round(v * 4) / 4, backward=lambda v: 2 * v)
  x = jnp.asarray(X[:3])
  np.testing.assert_array_equal(np.asarray(t(x)), np.asarray(jnp.round(x * 4) / 4))
  np.testing.assert_array_equal(np.asarray(jax.grad(lambda v: t(v).sum())(x)), 2.0)


@pytest.mark.slow
def test_run_autoattack_and_evaluate_give_the_same_per_example_arrays(monkeypatch):
  for stage, extra in (("apgd-ce", {}), ("apgd-t", {"n_target_classes": 3})):
    monkeypatch.setitem(autoattack.STAGES, stage, functools.partial(
        autoattack.STAGES[stage], n_iter=10, **extra))
  x_adv, after, examples = mixacm_jax.run_autoattack(
      linear, X, Y, jax.random.PRNGKey(0), eps=0.05, version="apgd", per_example=True)
  robust = after["apgd-t"]
  assert [b == "" for b in examples["broken_by"]] == robust.tolist()
  assert np.all((examples["margin"] > 0) == robust)
  assert np.all(examples["perturbation"][robust] == 0)
  assert np.all(examples["perturbation"] <= 0.05 + 1e-6)
  report = mixacm_jax.evaluate(linear, None, X, labels=Y, attacks="clean,autoattack",
                               eps=0.05, version="apgd")
  ex = report["examples"]
  assert set(ex) == {"index", "label", "clean_prediction", "clean_margin", "attacks"}
  table = ex["attacks"]["autoattack"]
  assert len(table["broken_by"]) == len(X)
  assert (np.asarray(table["broken_by"]) == "").mean() == \
      report["attacks"]["autoattack"]["robust_accuracy"]
  np.testing.assert_array_equal(ex["clean_prediction"], examples["clean_prediction"])
  # One engine's keys: each point is attacked with the key of its index in both.
  assert table["broken_by"] == examples["broken_by"]
  np.testing.assert_allclose(table["margin"], examples["margin"], atol=1e-5)


@pytest.mark.slow
def test_a_point_is_attacked_the_same_in_any_batch_size(monkeypatch):
  """Keys come from each point's index: the batch size (and so the chunks, and the points
  still robust beside it in each chunk) changes no result, of any randomised stage."""
  for stage, extra in (("apgd-ce", {"n_iter": 10}), ("apgd-t", {"n_iter": 10,
                                                                  "n_target_classes": 3}),
                       ("square", {"n_queries": 60})):
    monkeypatch.setitem(autoattack.STAGES, stage, functools.partial(
        autoattack.STAGES[stage], **extra))
  reports = [robustness.report_on_arrays(
      linear, None, X, Y, api.eval_config(attacks="clean,pgd5,autoattack,square", eps=0.05,
                                          version="apgd", batch_size=b), verbose=False)
             for b in (8, 64)]
  small, large = (r["examples"]["attacks"] for r in reports)
  for name in ("pgd5", "autoattack", "square"):
    assert small[name]["broken_by"] == large[name]["broken_by"], name
    np.testing.assert_allclose(small[name]["margin"], large[name]["margin"], atol=1e-5)
  # Not vacuous: every attack broke some points and left others.
  for name in ("pgd5", "autoattack", "square"):
    assert 0 < reports[0]["attacks"][name]["robust_accuracy"] < reports[0]["clean_accuracy"]


# ---------------------------------------------------------------------------------------------
# AutoAttack's versions (plus, custom) and modes (individual), and the dynamic-model flag.

def _short_stages(monkeypatch):
  for name, short in (("apgd-ce", {"n_iter": 5}), ("apgd-dlr", {"n_iter": 5}),
                      ("fab", {"n_iter": 5}), ("fab-t", {"n_iter": 5, "n_target_classes": 2}),
                      ("apgd-t", {"n_iter": 5, "n_target_classes": 2}),
                      ("square", {"n_queries": 20})):
    monkeypatch.setitem(autoattack.STAGES, name,
                        functools.partial(autoattack.STAGES[name], **short))


def _robust(report, attack):
  return np.asarray(report["examples"]["attacks"][attack]["broken_by"]) == ""


@pytest.mark.slow
def test_individual_mode_runs_each_stage_on_every_point_beside_the_worst_case(monkeypatch):
  """Each stage alone gives what the same attack gives on its own (Square has the first
  stage's key, FAB-T uses none); the worst case is robust where every stage failed, and a
  point is attributed to the first stage in order that broke it."""
  _short_stages(monkeypatch)
  cfg = api.eval_config(attacks="clean,autoattack", eps=0.05, version="square+fab-t",
                        mode="individual", batch_size=32)
  report = robustness.report_on_arrays(linear, None, X, Y, cfg, verbose=False)
  single = robustness.report_on_arrays(linear, None, X, Y, api.eval_config(
      attacks="clean,square,fab-t", eps=0.05, batch_size=32), verbose=False)
  aa = report["attacks"]["autoattack"]
  alone = {a: _robust(single, a) for a in ("square", "fab-t")}
  assert aa["individual"] == {a: float(r.mean()) for a, r in alone.items()}
  worst = alone["square"] & alone["fab-t"]
  np.testing.assert_array_equal(_robust(report, "autoattack"), worst)
  assert 0 < aa["robust_accuracy"] == worst.mean() < aa["individual"]["square"]
  broken_by = np.asarray(report["examples"]["attacks"]["autoattack"]["broken_by"])
  clean = broken_by != "clean"
  np.testing.assert_array_equal(broken_by == "square", clean & ~alone["square"])
  assert aa["after_each_stage"] == {"square": float(alone["square"].mean()),
                                    "fab-t": float(worst.mean())}
  assert report["settings"]["autoattack_mode"] == "individual"


@pytest.mark.slow
def test_plus_restarts_attack_only_what_is_left_and_never_break_fewer(monkeypatch):
  assert autoattack.get_version("plus") == ["apgd-ce", "apgd-dlr", "fab", "square", "apgd-t",
                                            "fab-t"]
  assert autoattack.version_settings("plus") == {s: {"n_restarts": 5}
                                                 for s in ("apgd-ce", "apgd-dlr", "fab")}
  passes = autoattack.stage_passes("fab", 10, {"n_restarts": 3})
  assert [(p.rank, p.restart, p.settings) for p in passes] == [
      (None, 0, ()), (None, 1, (("random_start", True),)), (None, 2, (("random_start", True),))]
  assert [(p.rank, p.restart) for p in autoattack.stage_passes(
      "apgd-t", 10, {"n_restarts": 2, "n_target_classes": 2})] == [(2, 0), (2, 1), (3, 0), (3, 1)]
  _short_stages(monkeypatch)
  cfg = api.eval_config(attacks="clean,autoattack", eps=0.03, version="fab+apgd-ce",
                        batch_size=32)
  once = robustness.report_on_arrays(linear, None, X, Y, cfg, verbose=False)
  again = robustness.report_on_arrays(linear, None, X, Y, cfg, verbose=False, stage_settings={
      "fab": {"n_restarts": 3}, "apgd-ce": {"n_restarts": 3}})
  assert np.all(_robust(again, "autoattack") <= _robust(once, "autoattack"))
  assert again["settings"]["stages"]["fab"]["n_restarts"] == 3
  plus = api.eval_config(attacks="clean,autoattack", eps=0.03, version="plus", batch_size=32)
  report = robustness.report_on_arrays(linear, None, X, Y, plus, verbose=False)
  assert list(report["attacks"]["autoattack"]["after_each_stage"]) == \
      autoattack.get_version("plus")
  assert report["settings"]["autoattack_settings"]["fab"] == {"n_restarts": 5}


def test_custom_versions_and_modes_are_checked_in_one_line():
  from mixacm_jax.attacks import registry  # pylint: disable=g-import-not-at-top
  from mixacm_jax.configs import checks  # pylint: disable=g-import-not-at-top
  assert autoattack.get_version("apgd-ce+square") == ["apgd-ce", "square"]
  for version, message in (("apgd-ce+pgd20", "unknown AutoAttack stage 'pgd20' in the custom "
                                             "version 'apgd-ce+pgd20'; known stages: apgd-ce"),
                           ("plus2", "unknown AutoAttack version 'plus2'; known: standard, "
                                     "plus, rand, apgd, or stages joined by '+'")):
    with pytest.raises(ConfigError, match=re.escape(message)):
      registry.validate_attacks("clean", version, "linf")
  with pytest.raises(ConfigError, match="eval.autoattack_mode must be one of"):
    checks.validate_eval(api.eval_config(mode="each"))


class _Counting(nn.Module):
  """A dynamic defence: its forward counts its calls in its own state when allowed to."""

  @nn.compact
  def __call__(self, x):
    calls = self.variable("state", "calls", lambda: jnp.zeros((), jnp.int32))
    if self.is_mutable_collection("state"):
      calls.value += 1
    return nn.Dense(10)(x.reshape(len(x), -1))


def test_a_dynamic_model_is_flagged_and_a_static_one_is_not():
  counting = _Counting()
  variables = counting.init(jax.random.PRNGKey(0), X[:1])
  y = np.asarray(counting.apply(variables, X).argmax(-1))
  cfg = api.eval_config(attacks="clean,fgsm", eps=0.1, batch_size=32)
  flags = lambda m, v, yy: _flags(robustness.report_on_arrays(m, v, X, yy, cfg, verbose=False),
                                  "dynamic defence")
  assert flags(counting, variables, y) == [
      "the model's forward pass changes its state (state): it seems to be a dynamic defence, "
      "and the evaluation with AutoAttack might be insufficient (use an adaptive attack)"]

  def adapting(v):  # test-time optimisation: one gradient step on the input's entropy
    entropy = lambda u: -jnp.sum(jax.nn.softmax(linear(u)) * jax.nn.log_softmax(linear(u)))
    return linear(v - 0.01 * jax.grad(entropy)(v))
  assert flags(adapting, None, Y)[0].startswith("the model's forward pass computes gradients:")
  assert flags(linear, None, Y) == []  # a static Flax network: see the trained-network test


def test_targeted_pgd_in_the_report_records_its_target_and_checks_it():
  from mixacm_jax.configs import checks  # pylint: disable=g-import-not-at-top
  cfg = api.eval_config(attacks="clean,pgd5,pgd5_t,cw5_t", eps=0.1, batch_size=32)
  cfg.pgd.target = "least_likely"
  report = robustness.report_on_arrays(linear, None, X, Y, cfg, verbose=False)
  assert report["settings"]["stages"]["pgd5_t"]["target"] == "least_likely"
  assert "target" not in report["settings"]["stages"]["pgd5"]
  for name in ("pgd5_t", "cw5_t"):
    assert 0 <= report["attacks"][name]["robust_accuracy"] < report["clean_accuracy"]
  cfg.pgd.target = "12"
  with pytest.raises(ConfigError, match="eval.pgd.target 12 is not a class of the model, "
                                        "which has 10 classes"):
    robustness.report_on_arrays(linear, None, X, Y, cfg, verbose=False)
  cfg.pgd.target = "likely"
  with pytest.raises(ConfigError, match="eval.pgd.target must be one of"):
    checks.validate_eval(cfg)


# ---------------------------------------------------------------------------------------------
# Transfer attacks.

def test_transfer_judges_the_target_on_the_points_crafted_on_the_source():
  """The target's robust flags equal a NumPy evaluation of the target at the source's
  returned points; judged on its own points a model gives its white-box numbers."""
  from mixacm_jax.evaluation import transfer  # pylint: disable=g-import-not-at-top
  w_other = W + 0.3 * np.random.RandomState(3).randn(*W.shape).astype(np.float32)
  other = lambda v: v.reshape(len(v), -1) @ w_other
  cfg = api.eval_config(attacks="clean,fgsm,pgd5", eps=0.1, batch_size=32)
  result = transfer.transfer_report((other, None), (linear, None), X, Y, cfg,
                                    source_name="linear")
  crafted = robustness.report_on_arrays(linear, None, X, Y, cfg, verbose=False,
                                        return_points=True)
  flat = lambda v: np.asarray(v).reshape(len(v), -1)
  clean_ok = (flat(X) @ w_other).argmax(-1) == Y
  for name in ("fgsm", "pgd5"):
    points = crafted["examples"]["attacks"][name]["x_adv"]
    robust = clean_ok & ((flat(points) @ w_other).argmax(-1) == Y)
    table = result["examples"][f"transfer:{name}"]
    np.testing.assert_array_equal(np.asarray(table["broken_by"]) == "", robust)
    assert result["attacks"][f"transfer:{name}"]["robust_accuracy"] == robust.mean()
    assert table["source"] == "linear"
    assert set(table["broken_by"]) <= {"", "clean", name}
  assert result["clean_accuracy"] == clean_ok.mean() and result["source_clean_accuracy"] == 1.0
  grid = transfer.matrix({"linear": (linear, None), "other": (other, None)}, X, Y, cfg)
  assert grid["linear"]["linear"] == crafted["attacks"]["pgd5"]["robust_accuracy"]
  assert grid["linear"]["other"] == result["attacks"]["transfer:pgd5"]["robust_accuracy"]
  assert grid["linear"]["linear"] < grid["linear"]["other"]  # white-box beats transfer


@pytest.mark.slow
def test_eval_mode_adds_the_transfer_from_a_source_checkpoint(trained, tmp_path):
  """--config.transfer.checkpoint: the model transfers from itself, so each transfer entry
  equals the white-box one (the same points, keys and settings); the table names the
  source and the CSV has its columns."""
  workdir = str(tmp_path / "eval")
  shutil.copytree(trained, workdir)
  out = _eval(workdir, "--config.eval.attacks=clean,pgd5",
              f"--config.transfer.checkpoint={trained}",
              "--config.transfer.model.kwargs.base_width=4",
              "--config.transfer.model.kwargs.stage_sizes=(1, 1)")
  assert out.returncode == 0, out.stderr[-2000:]
  report = json.load(open(os.path.join(workdir, "robustness.json")))
  assert report["transfer"]["source"] == trained
  assert report["attacks"]["transfer:pgd5"]["robust_accuracy"] == \
      report["attacks"]["pgd5"]["robust_accuracy"]
  header = open(os.path.join(workdir, "robustness_examples.csv")).readline()
  assert "transfer:pgd5_broken_by" in header and "transfer:pgd5" in out.stdout


# ---------------------------------------------------------------------------------------------
# Minimum-norm evaluation and the robustness curve.

def test_fab_and_fmn_find_the_exact_distance_to_a_linear_models_boundary():
  """A linear model with its boundaries inside the box: untargeted FAB's smallest L2 (L-inf,
  L1) perturbation per point is the analytic distance to the nearest decision boundary,
  min_j (z_y - z_j) / ||w_y - w_j||_dual (NumPy), from above within 1 % (FAB overshoots the
  boundary by eta and steps back by beta), FMN's within 0.1 %; the curve at eps counts the
  points beyond it."""
  from mixacm_jax.evaluation import min_norm  # pylint: disable=g-import-not-at-top
  rng = np.random.RandomState(0)
  w = (0.2 * rng.randn(48, 5)).astype(np.float32)
  x = (0.4 + 0.2 * rng.rand(64, 4, 4, 3)).astype(np.float32)
  f = lambda v: v.reshape(len(v), -1) @ w
  z = x.reshape(64, -1) @ w
  y = z.argmax(-1)
  for norm, dual in (("l2", 2), ("linf", 1), ("l1", np.inf)):
    gaps = z[np.arange(64), y][:, None] - z
    widths = np.linalg.norm((w[:, y].T[:, None, :] - w.T[None]), ord=dual, axis=-1)
    other = np.arange(5)[None] != y[:, None]
    distance = np.where(other, gaps / np.where(other, widths, 1.0), np.inf).min(1)
    inside = distance < 0.1  # the boundary is reached before any pixel meets the box
    assert inside.sum() >= 10
    norms = min_norm.smallest_perturbations(f, None, x, y, norm=norm, batch_size=32)
    np.testing.assert_allclose(norms[inside], distance[inside], rtol=1e-2, atol=1e-5)
    assert np.all(norms >= distance * (1 - 1e-4))
    # FMN converges to the boundary itself where it finds it (nearly every point here).
    fmn = min_norm.smallest_perturbations(f, None, x, y, norm=norm, batch_size=32,
                                          attack="fmn")
    found = np.isfinite(fmn)
    # Under L1 the optimum moves one coordinate, and FMN can settle exactly on a linear
    # boundary (margin 0.0, a tie argmax gives to the label): found for fewer points.
    assert found[inside].mean() >= (0.75 if norm == "l1" else 0.9)
    np.testing.assert_allclose(fmn[inside & found], distance[inside & found], rtol=1e-3)
  cfg = api.eval_config(attacks="clean", eps=0.05, norm="l2", batch_size=32)
  result = min_norm.report(f, None, x, y, cfg)
  accuracy = result["curve"]["accuracy"]
  assert accuracy[0] == 1.0 and all(a >= b for a, b in zip(accuracy, accuracy[1:]))
  assert result["robust_accuracy_at_eps"] == np.mean(result["per_point"] > 0.05)


@pytest.mark.slow
def test_eval_mode_writes_the_minimum_norm_curve(trained, tmp_path):
  """--config.eval.min_norm=fab,fmn (the robustness-curve example of docs/attacks.md at CI
  size): each point's smallest perturbation in the CSV, the curves in robustness.json, their
  value at the report's eps recomputed from the CSV, and the plot."""
  workdir = str(tmp_path / "eval")
  shutil.copytree(trained, workdir)
  out = _eval(workdir, "--config.eval.attacks=clean,pgd5", "--config.eval.num_examples=96",
              "--config.eval.min_norm=fab,fmn")
  assert out.returncode == 0, out.stderr[-2000:]
  report = json.load(open(os.path.join(workdir, "robustness.json")))
  rows = list(csv.DictReader(open(os.path.join(workdir, "robustness_examples.csv"))))
  for attack in ("fab", "fmn"):
    norms = np.array([float(r[f"min_norm_{attack}"]) for r in rows])
    found = np.isfinite(norms) & (norms > 0)
    result = report["min_norm"][attack]
    assert len(norms) == 96 and result["found"] == found.sum() > 0
    assert result["robust_accuracy_at_eps"] == np.mean(norms > report["eps"])
    accuracy = result["curve"]["accuracy"]
    assert accuracy[0] == report["clean_accuracy"] and accuracy[-1] <= accuracy[0]
  assert os.path.getsize(os.path.join(workdir, "robustness_curve.png")) > 1000


@pytest.mark.slow
def test_review_guards_compile_once_restore_tracers_and_fail_early(monkeypatch, trained,
                                                                   tmp_path):
  """A stage compiles once for all its target classes; the dynamic check leaves another
  tracer in place; a repeated custom stage, a missing transfer source and a training-time
  targeted PGD towards a class the data lacks are one line, before any work."""
  from mixacm_jax.configs import default  # pylint: disable=g-import-not-at-top
  from mixacm_jax.errors import CheckpointError  # pylint: disable=g-import-not-at-top
  from mixacm_jax.evaluation import (  # pylint: disable=g-import-not-at-top
      checkpoint_report, programs)
  _short_stages(monkeypatch)
  built = []
  stage = programs.stage
  monkeypatch.setattr(programs, "stage", lambda *a: built.append(1) or stage(*a))
  cfg = api.eval_config(attacks="clean,autoattack", eps=0.05, version="apgd-t", batch_size=32)
  tracer = lambda frame, event, arg: None
  sys.settrace(tracer)
  try:
    robustness.report_on_arrays(linear, None, X, Y, cfg, verbose=False)
    assert sys.gettrace() is tracer
  finally:
    sys.settrace(None)
  assert len(built) == 1  # 2 target classes, one program
  with pytest.raises(ConfigError, match="repeats a stage"):
    api.evaluate(linear, None, X, labels=Y, attacks="autoattack", version="apgd-ce+apgd-ce")
  config = default.get_config()
  config.model.kwargs.base_width, config.model.kwargs.stage_sizes = 4, (1, 1)
  config.transfer.checkpoint = str(tmp_path / "missing")
  with pytest.raises(CheckpointError, match="the transfer source"):
    checkpoint_report.robustness_of_checkpoint(config, trained)
  assert not os.path.exists(os.path.join(trained, "robustness.json"))
  config = default.get_config()
  config.train_evals.pgd.attacks, config.eval.pgd.target = "clean,pgd2_t", "12"
  with pytest.raises(ConfigError, match="eval.pgd.target 12 is not a class"):
    train.train_and_evaluate(config, str(tmp_path / "train"))
  assert not os.path.exists(tmp_path / "train" / "checkpoints")
