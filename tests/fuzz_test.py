"""Fuzz-style checks of the two boundaries a user types into: the command's config (random
misspelt keys, values of the wrong type, values out of range, parsed by the real parser and
run) and the public functions' arrays (random shapes, dtypes, ranges and labels). Every case
ends in a result that is right or in one line that says what is wrong; never a traceback."""
import json
import os

from absl import flags
import jax
import numpy as np
import pytest

import mixacm_jax
from mixacm_jax.cli import main, modes
from mixacm_jax.configs import checks, default
from mixacm_jax.errors import ConfigError

from conftest import TINY

FUZZ_SEED = int(os.environ.get("FUZZ_SEED", 20261204))  # printed with every case: replayable
# Keys whose large values are legitimate long runs, not errors (the fuzz would wait on them).
LONG_RUN_KEYS = ("optim.num_steps", "optim.num_epochs", "objective.pgd_at.attack.steps",
                 "optim.warmup_epochs", "eval.pgd.restarts")
BASE = TINY + ["--config.optim.num_steps=2", "--config.train_evals.pgd.num_examples=32",
               "--config.eval.batch_size=32", "--config.eval.num_examples=32",
               "--config.checkpoint.async_save=False"]


def _mutations(rng, n):
  """`n` (flag, kind) pairs: a misspelt key, a value of the wrong type or out of range."""
  leaves = [(p, v) for p, v in checks.leaves(default.get_config()) if p not in LONG_RUN_KEYS
            and not p.startswith(("convert.", "teacher."))]
  # Mostly what this run reads (the other objectives' groups are only checked).
  active = [i for i, (p, _) in enumerate(leaves)
            if not p.startswith("objective.") or p.startswith("objective.pgd_at.")]
  out = []
  for _ in range(n):
    pool = active if rng.random() < 0.75 else range(len(leaves))
    path, value = leaves[rng.choice(pool)]
    kind = rng.choice(["misspelt", "type", "range", "range"])
    if kind == "type" and (isinstance(value, str) or value is None):
      kind = "range"  # any text is a string
    if kind == "misspelt":
      *parents, leaf = path.split(".")
      i = rng.integers(len(leaf))
      leaf = leaf[:i] + leaf[i + 1:] + ("x" if len(leaf) < 3 else "")
      out.append((f"--config.{'.'.join(parents + [leaf])}=1", kind))
    elif kind == "type":
      bad = "abc" if isinstance(value, (int, float)) and not isinstance(value, bool) else (
          "maybe" if isinstance(value, bool) else "(1, 'x')" if isinstance(value, tuple) else
          "0.5")
      out.append((f"--config.{path}={bad}", kind))
    else:
      if isinstance(value, bool):
        bad = rng.choice(["True", "False"])
      elif isinstance(value, int):
        bad = rng.choice(["-1", "0", "1000000000", "-1000000000"])
      elif isinstance(value, float):
        bad = rng.choice(["-1.0", "0.0", "1e9", "nan", "inf", "-inf"])
      elif isinstance(value, tuple):
        bad = rng.choice(["()", "(-1,)", "(1000000000,)"])
      else:
        bad = rng.choice(["zzz", "", "linf", "clean", "standard"])
      out.append((f"--config.{path}={bad}", kind))
  return out


def _run(argv, workdir, capsys):
  """The command's own parsing and dispatch, in this process: (exit code, stdout, stderr)."""
  fv = flags.FlagValues()
  code = None
  try:
    main.define_flags_or_fail(fv, argv)
    main.parse_flags(argv, fv)
    code = modes.run("train", fv.config, str(workdir))
  except SystemExit as e:  # the parser's one-line failures exit 2
    code = e.code
  out = capsys.readouterr()
  return code, out.out, out.err


@pytest.mark.slow
def test_random_config_values_end_in_a_result_or_one_line(tmp_path, capsys):
  rng = np.random.default_rng(FUZZ_SEED)
  outcomes = {}
  for i, (flag, kind) in enumerate(_mutations(rng, int(os.environ.get("FUZZ_CASES", 24)))):
    workdir = tmp_path / str(i)
    base = [a for a in BASE if a.split("=")[0] != flag.split("=")[0]]
    code, out, err = _run(["mixacm", f"--workdir={workdir}", *base, flag], workdir, capsys)
    case = f"case {i} (seed {FUZZ_SEED}): {flag}"
    assert code in (0, 2), f"{case}: exit code {code}\n{err[-2000:]}"
    assert "Traceback" not in err, f"{case}\n{err[-2000:]}"
    if code == 2:
      lines = [l for l in err.splitlines() if l.strip()]
      assert len(lines) == 1 and lines[0].startswith("error: "), f"{case}: {err[-2000:]}"
    else:
      summary = json.loads((workdir / "summary.json").read_text())
      assert summary["steps"] == 2, case
      assert 0.0 <= summary["clean_accuracy"] <= 1.0, case
      assert 0.0 <= summary.get("robust_accuracy", 0.0) <= summary["clean_accuracy"], case
    outcomes.setdefault((kind, code), []).append(flag)
    with capsys.disabled():
      print(case, "->", code, (err.strip().splitlines() or [""])[-1][:200])
  # Misspelt keys and wrong types never run.
  assert not outcomes.get(("misspelt", 0)) and not outcomes.get(("type", 0)), outcomes


# The public functions' arrays -----------------------------------------------------------------

W = np.random.default_rng(0).normal(size=(4 * 4 * 3, 5)).astype(np.float32)
linear = lambda x: x.reshape(len(x), -1) @ W  # a logits function of NHWC 4x4x3 images


def _random_input(rng):
  """Images and labels with one property (shape, dtype, range, finiteness, labels) perhaps
  wrong, and whether an independent reading of the contract accepts them."""
  n = int(rng.integers(1, 9))
  shape = [n, 4, 4, 3]
  x = rng.random(shape)
  y = rng.integers(0, 5, n)
  fault = rng.choice(["none", "none", "nchw", "rank", "scale", "shift", "nan", "int", "bool",
                      "labels_len", "labels_range", "labels_float", "labels_onehot", "dtype64"])
  if fault == "nchw":
    x = x.transpose(0, 3, 1, 2)
  elif fault == "rank":
    x = x.reshape(n, -1) if rng.random() < 0.5 else x[None]
  elif fault == "scale":
    x = x * 255
  elif fault == "shift":
    x = x - 0.5
  elif fault == "nan":
    x[rng.integers(n), 0, 0, 0] = rng.choice([np.nan, np.inf, -np.inf])
  elif fault == "int":
    x = (x * 255).astype(rng.choice([np.uint8, np.int32]))
  elif fault == "bool":
    x = x > 0.5
  elif fault == "labels_len":
    y = y[:-1] if n > 1 else np.concatenate([y, y])
  elif fault == "labels_range":
    y = y + rng.choice([-10, 5, 100])
  elif fault == "labels_float":
    y = y + 0.25
  elif fault == "labels_onehot":
    y = np.eye(5)[y]
  elif fault == "dtype64":  # float64 in [0, 1] is valid input
    x = x.astype(np.float64)
  if fault in ("none", "dtype64") and rng.random() < 0.3:
    x = x.astype(np.float32)
  valid = fault in ("none", "dtype64")
  return x, y, fault, valid


def test_random_arrays_to_the_public_functions_end_in_a_right_result_or_one_line():
  rng = np.random.default_rng(FUZZ_SEED)
  seen = set()
  for i in range(int(os.environ.get("FUZZ_CASES", 24)) * 2):
    x, y, fault, valid = _random_input(rng)
    case = f"case {i} (seed {FUZZ_SEED}): {fault}, images {x.shape} {x.dtype}"
    try:
      report = mixacm_jax.evaluate(linear, None, x, labels=y, attacks="clean", eps=0.1)
    except ConfigError as e:
      assert not valid, f"{case}: refused valid input: {e}"
      assert "\n" not in str(e), case
      with pytest.raises(ConfigError):  # the same contract
        mixacm_jax.run_autoattack(linear, x, y, jax.random.PRNGKey(0), eps=0.1)
    else:
      assert valid, f"{case}: accepted bad input"
      expected = np.mean(np.argmax(np.asarray(x, np.float64).reshape(len(x), -1) @ W, 1) == y)
      assert report["clean_accuracy"] == pytest.approx(expected), case
    seen.add(fault)
  assert len(seen) >= 10, seen  # the cases reach most kinds of fault
