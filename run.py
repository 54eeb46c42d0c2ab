"""The one entry point: `python run.py --config=configs/default.py --workdir=/tmp/run`."""
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TF is only the input pipeline here

from absl import app, flags, logging  # pylint: disable=g-import-not-at-top
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", "configs/default.py", "ml_collections config file.",
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
flags.mark_flags_as_required(["workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
  from mixacm_jax import cli  # pylint: disable=g-import-not-at-top
  return cli.run(FLAGS.mode, FLAGS.config, FLAGS.workdir, distributed=dict(
      coordinator_address=FLAGS.coordinator_address, num_processes=FLAGS.num_processes,
      process_id=FLAGS.process_id, auto=FLAGS.distributed))


if __name__ == "__main__":
  sys.exit(app.run(main))
