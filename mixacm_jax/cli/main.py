"""`mixacm --config=configs/default.py --workdir=/tmp/run [--mode=train|eval|pipeline|convert]`
(or `python run.py ...`): flag parsing and dispatch to `modes`."""
import os
import sys

from absl import app, flags
from ml_collections import config_flags

from mixacm_jax.cli import config_errors, modes, quiet
from mixacm_jax.errors import ConfigError
from mixacm_jax.runtime import xla_cpu

# Shipped inside the package, so the installed command has a default from any directory.
DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                              "configs", "default.py")
MODES = ("train", "eval", "pipeline", "convert")

FLAGS = flags.FLAGS


def define_flags(flag_values=FLAGS, sys_argv=None):
  """Defined on the command's start, not at import: ml_collections reads the config file and
  the command line's overrides already here, and their errors are reported like the others.
  (The docs' tests parse every documented command with a fresh `flag_values` and its
  `sys_argv`.)"""
  fv = dict(flag_values=flag_values)
  config_flags.DEFINE_config_file("config", DEFAULT_CONFIG, "ml_collections config file.",
                                  lock_config=True, sys_argv=sys_argv, **fv)
  flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and reports.", **fv)
  flags.DEFINE_enum("mode", "train", list(MODES),
                    "train: train (resuming if possible) and evaluate; eval: evaluate the "
                    "workdir's latest checkpoint; pipeline: teacher -> students -> report "
                    "(configs/default_mixacm.py); convert: PyTorch weights -> orbax checkpoint.",
                    **fv)
  flags.DEFINE_string("coordinator_address", None, "host:port of process 0, for multi-host "
                      "runs started by hand (with --num_processes and --process_id).", **fv)
  flags.DEFINE_integer("num_processes", 0, "Number of processes (hosts) in a multi-host run.",
                       **fv)
  flags.DEFINE_integer("process_id", -1, "This process's index in a multi-host run.", **fv)
  flags.DEFINE_bool("distributed", False, "Initialise jax.distributed from the cluster's "
                    "environment (TPU pod slices, SLURM, Open MPI).", **fv)
  flags.DEFINE_string("host_devices", "1", "On CPU: split every batch over this many host "
                      "devices that run at once (pmapped). XLA:CPU's convolutions already use "
                      "every core, so 1 is the fastest for training. GPU/TPU: ignored.", **fv)
  flags.mark_flags_as_required(["workdir"], **fv)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not FLAGS["verbosity"].present:
    quiet.quiet_libraries()
  return modes.run(FLAGS.mode, FLAGS.config, FLAGS.workdir, distributed=dict(
      coordinator_address=FLAGS.coordinator_address, num_processes=FLAGS.num_processes,
      process_id=FLAGS.process_id, auto=FLAGS.distributed), host_devices=FLAGS.host_devices)


def parse_flags(argv, flag_values=FLAGS):
  """absl's flag parsing, with a bad config file or override reported in one line."""
  config_errors.check_config_file(argv, DEFAULT_CONFIG)
  try:
    remaining = flag_values(argv)
    _ = flag_values.config.keys()  # the config file loads lazily: load it and its overrides
    return remaining
  except flags.Error as e:
    if "parsing config file" in str(e):  # the file's own error, not absl's traceback of it
      config_errors.fail(config_errors.explain(argv, e, DEFAULT_CONFIG))
    config_errors.fail(str(e))
  except (AttributeError, KeyError, OSError) as e:
    config_errors.fail(config_errors.explain(argv, e, DEFAULT_CONFIG))


def define_flags_or_fail(flag_values, argv) -> None:
  """`define_flags`, with a config file or override that cannot load as one line (exit 2)."""
  try:
    define_flags(flag_values, sys_argv=argv)
  except (AttributeError, KeyError, OSError) as e:
    config_errors.fail(config_errors.explain(argv, e, DEFAULT_CONFIG))


def entry():
  try:
    xla_cpu.choice()
  except ConfigError as e:
    config_errors.fail(str(e))
  define_flags_or_fail(FLAGS, sys.argv)
  sys.exit(app.run(main, flags_parser=parse_flags))
