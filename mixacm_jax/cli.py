"""What run.py does for each mode; every user-fixable error becomes one line on stderr."""
import os
import sys

from mixacm_jax.errors import MixACMError


def _train(config, workdir):
  from mixacm_jax import reporting, train  # pylint: disable=g-import-not-at-top
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
  from mixacm_jax import evaluation, reporting, robustness_output  # pylint: disable=g-import-not-at-top
  report = evaluation.evaluate_checkpoint(config, workdir)
  if reporting.is_primary():
    print(f"\n{report['num_examples']} examples, {report['norm']} eps={report['eps']:.4g}; "
          "accuracy in %\n")
    print(robustness_output.report_table(report))
    for w in report["warnings"]:
      print(f"WARNING: {w}")
    print(f"\nReport: {os.path.join(workdir, 'robustness.json')}")
  return 0


def _pipeline(config, workdir):
  from mixacm_jax import pipeline  # pylint: disable=g-import-not-at-top
  if "pipeline" not in config:
    from mixacm_jax.errors import ConfigError  # pylint: disable=g-import-not-at-top
    raise ConfigError("--mode=pipeline needs a config with a `pipeline` section, "
                      "e.g. configs/default_mixacm.py")
  pipeline.run_pipeline(config, workdir)
  return 0


def _convert(config, workdir):
  from mixacm_jax.port import convert  # pylint: disable=g-import-not-at-top
  info = convert.convert(config.convert, workdir)
  print(f"Converted {info['source']} -> {workdir}/checkpoints ({info['arch']}, "
        f"{info['num_classes']} classes).")
  if info["mean"] or info["std"]:
    print(f"The file normalises its inputs: use it with --config.teacher.model.mean="
          f"'{info['mean']}' --config.teacher.model.std='{info['std']}'")
  return 0


MODES = {"train": _train, "eval": _eval, "pipeline": _pipeline, "convert": _convert}


def run(mode: str, config, workdir: str, distributed=None, host_devices: int = 1) -> int:
  try:
    if host_devices > 1:
      from mixacm_jax import parallel  # pylint: disable=g-import-not-at-top
      parallel.use_host_devices(host_devices)
    if distributed:
      from mixacm_jax import distributed as dist  # pylint: disable=g-import-not-at-top
      dist.maybe_initialize(**distributed)
    return MODES[mode](config, workdir)
  except MixACMError as e:
    print(f"error: {e}", file=sys.stderr, flush=True)
    return 2
