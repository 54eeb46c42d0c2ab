"""The command line: `mixacm --config=configs/default.py --workdir=/tmp/run` (or `python run.py`)."""
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

# The default config next to the package (a checkout, or the installed `configs` package).
_DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                               "configs", "default.py")

FLAGS = flags.FLAGS


def define_flags():
  """Defined on the command's start, not at import: ml_collections reads the config file and
  the command line's overrides already here, and their errors are reported like the others."""
  config_flags.DEFINE_config_file("config", _DEFAULT_CONFIG, "ml_collections config file.",
                                  lock_config=True)
  flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and reports.")
  flags.DEFINE_enum("mode", "train", ["train", "eval", "pipeline", "convert"],
                    "train: train (resuming if possible) and evaluate; eval: evaluate the "
                    "workdir's latest checkpoint; pipeline: teacher -> students -> report "
                    "(configs/default_mixacm.py); convert: PyTorch weights -> orbax checkpoint.")
  flags.DEFINE_string("coordinator_address", None, "host:port of process 0, for multi-host "
                      "runs started by hand (with --num_processes and --process_id).")
  flags.DEFINE_integer("num_processes", 0, "Number of processes (hosts) in a multi-host run.")
  flags.DEFINE_integer("process_id", -1, "This process's index in a multi-host run.")
  flags.DEFINE_bool("distributed", False, "Initialise jax.distributed from the cluster's "
                    "environment (TPU pod slices, SLURM, Open MPI).")
  flags.DEFINE_integer("host_devices", 1, "On CPU: split every batch over this many host "
                       "devices (XLA:CPU runs a convolution on one core; devices run at once). "
                       "Up to the number of cores; batches must divide by it. GPU/TPU: ignored.",
                       lower_bound=1)
  flags.mark_flags_as_required(["workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
  from mixacm_jax import cli  # pylint: disable=g-import-not-at-top
  return cli.run(FLAGS.mode, FLAGS.config, FLAGS.workdir, distributed=dict(
      coordinator_address=FLAGS.coordinator_address, num_processes=FLAGS.num_processes,
      process_id=FLAGS.process_id, auto=FLAGS.distributed), host_devices=FLAGS.host_devices)


def _config_path(argv) -> str:
  for i, arg in enumerate(argv):
    if arg.startswith("--config="):
      return arg.split("=", 1)[1]
    if arg == "--config" and i + 1 < len(argv):
      return argv[i + 1]
  return _DEFAULT_CONFIG


def _unknown_key_message(argv, config_path: str) -> str:
  """The first `--config.a.b=` override naming no field, and why (moved, or the nearest)."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  from mixacm_jax import config_checks  # pylint: disable=g-import-not-at-top
  spec = importlib.util.spec_from_file_location("_user_config", config_path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  for arg in argv:
    if arg.startswith("--config."):
      message = config_checks.unknown_key(config, arg[len("--config."):].split("=", 1)[0], arg)
      if message:
        return message
  return ""


def _config_error(argv, error: Exception) -> str:
  path = _config_path(argv)
  if not os.path.isfile(path):
    return f"config file {path!r} not found"
  try:
    return _unknown_key_message(argv, path) or f"bad config {path!r}: {error}"
  except Exception as inner:  # pylint: disable=broad-except
    return f"config file {path!r} cannot be loaded: {type(inner).__name__}: {inner}"


def _fail(message: str):
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.exit(2)


def parse_flags(argv):
  """absl's flag parsing, with a bad config file or override reported in one line."""
  if not os.path.isfile(_config_path(argv)):
    _fail(f"config file {_config_path(argv)!r} not found")
  try:
    remaining = FLAGS(argv)
    _ = FLAGS.config.keys()  # the config file loads lazily: load it (and its overrides) now
    return remaining
  except flags.Error as e:
    _fail(str(e))
  except (AttributeError, KeyError, OSError) as e:
    _fail(_config_error(argv, e))


def entry():
  try:
    define_flags()
  except (AttributeError, KeyError, OSError) as e:
    _fail(_config_error(sys.argv, e))
  sys.exit(app.run(main, flags_parser=parse_flags))
