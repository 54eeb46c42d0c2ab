"""What each mode of the command does; every user-fixable error becomes one line on stderr."""
import os
import sys

from mixacm_jax.errors import ConfigError, MixACMError
from mixacm_jax.evaluation import checkpoint_report, robustness_output
from mixacm_jax.port import to_orbax
from mixacm_jax.runtime import (compilation_cache, distributed as dist, parallel, reporting,
                                storage)
from mixacm_jax.training import pipeline, train


def _train(config, workdir):
  result = train.train_and_evaluate(config, workdir)
  row = {k: v for k, v in result.items() if k != "state"}
  if reporting.is_primary():
    cols = [c for c in ("model", "objective", "steps", "train_seconds", "clean_accuracy",
                        "robust_accuracy") if c in row]
    print("\n" + reporting.table([row], cols))
    print(f"\nCheckpoints in {os.path.join(workdir, 'checkpoints')}; metrics in "
          f"{os.path.join(workdir, 'metrics.jsonl')} and {os.path.join(workdir, 'tensorboard')}")
  return 0


def _eval(config, workdir):
  report = checkpoint_report.robustness_of_checkpoint(config, workdir)
  if reporting.is_primary():
    print(f"\n{report['num_examples']} examples, {report['norm']} eps={report['eps']:.4g}; "
          "accuracy in %\n")
    print(robustness_output.report_table(report))
    for w in report["warnings"]:
      print(f"WARNING: {w}")
    print(f"\nReport: {os.path.join(workdir, 'robustness.json')}")
  return 0


def _pipeline(config, workdir):
  if "pipeline" not in config:
    raise ConfigError("--mode=pipeline needs a config with a `pipeline` section, "
                      "e.g. configs/default_mixacm.py")
  pipeline.run_pipeline(config, workdir)
  return 0


def _convert(config, workdir):
  info = to_orbax.to_checkpoint(config.convert, workdir)
  print(f"Converted {info['source']} -> {workdir}/checkpoints ({info['arch']}, "
        f"{info['num_classes']} classes).")
  print(f"As a teacher: {to_orbax.teacher_flags(info, workdir)}")
  return 0


MODES = {"train": _train, "eval": _eval, "pipeline": _pipeline, "convert": _convert}


def _host_devices(host_devices: str) -> int:
  """The number of host devices `--host_devices` asks for: a positive integer."""
  try:
    n = int(host_devices)
  except ValueError:
    n = 0
  if n < 1:
    raise ConfigError(f"--host_devices must be a positive integer (the CPU devices every batch "
                      f"is split over), got {host_devices!r}")
  return n


def run(mode: str, config, workdir: str, distributed=None, host_devices: str = "1") -> int:
  try:
    n = _host_devices(str(host_devices))
    if n > 1:
      parallel.use_host_devices(n)
    if distributed:
      dist.maybe_initialize(**distributed)
    compilation_cache.enable()
    return MODES[mode](config, workdir)
  except MixACMError as e:
    print(f"error: {e}", file=sys.stderr, flush=True)
    return 2
  except OSError as e:  # a storage failure no layer named (each main write names its own)
    print(f"error: a file operation failed on {e.filename or 'the workdir'}: "
          f"{storage.reason(e)}", file=sys.stderr, flush=True)
    return 2
