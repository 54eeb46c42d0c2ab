"""Transfer between a pipeline's teacher and students: each model attacked (white-box) and
every model judged on its points, as a matrix of robust accuracy (rows: the source that
crafted the points; columns: the model judged on them; the diagonal is white-box).

  python experiments/transfer_matrix.py --config=configs/default_mixacm.py \
      --workdir=workdirs/mixacm --attack=pgd20 --num_examples=360

reads `<workdir>/teacher` (architecture `teacher.model`) and every `<workdir>/student_*`
(architecture `model`), as `--mode=pipeline` leaves them, and writes the table to stdout and
`<workdir>/transfer_matrix.md`.
"""
import os

from absl import app, flags
from ml_collections import config_flags

from mixacm_jax import models
from mixacm_jax.attacks import registry
from mixacm_jax.data import input_pipeline
from mixacm_jax.evaluation import robustness, transfer
from mixacm_jax.runtime import checkpoint, reporting

FLAGS = flags.FLAGS


def define_flags():
  """The command's flags (defined when run, so that tests can import the module beside the
  other experiments, which define flags of the same names)."""
  config_flags.DEFINE_config_file("config", "configs/default_mixacm.py",
                                  "The pipeline's config (its architectures).")
  flags.DEFINE_string("workdir", "workdirs/mixacm", "A --mode=pipeline workdir.")
  flags.DEFINE_string("attack", "pgd20", "The attack that crafts the points.")
  flags.DEFINE_integer("num_examples", 0, "First n eval examples (0: all).")


def load_models(config, workdir: str, info):
  """{name: (model, variables)}: the teacher, then each student of the workdir."""
  runs = {"teacher": config.teacher.model}
  for name in sorted(os.listdir(workdir)):
    if name.startswith("student_") and os.path.isdir(os.path.join(workdir, name)):
      runs[name[len("student_"):]] = config.model
  out = {}
  for name, model_cfg in runs.items():
    model = models.create_model_from_config(model_cfg, info.num_classes)
    run_dir = os.path.join(workdir, "teacher" if name == "teacher" else f"student_{name}")
    out[name] = (model, checkpoint.load_variables(model, info.image_shape, run_dir))
  return out


def markdown(grid, attack: str, eps: float, n: int) -> str:
  names = list(grid)
  rows = [{"source \\ judged": s, **{t: f"{100 * grid[s][t]:.2f}" for t in names}}
          for s in names]
  return (f"Robust accuracy (%) of each column's model on the points {attack} (eps={eps:g}) "
          f"crafts on each row's model, {n} eval examples; the diagonal is white-box.\n\n"
          + reporting.table(rows, ["source \\ judged"] + names) + "\n")


def main(argv):
  del argv
  config = FLAGS.config
  registry.validate_attacks(FLAGS.attack, config.eval.autoattack_version,
                            config.eval.threat.norm)
  info = input_pipeline.get_info(config.data)
  eval_cfg = config.eval.copy_and_resolve_references()
  eval_cfg.attacks, eval_cfg.num_examples = FLAGS.attack, FLAGS.num_examples
  images, labels, real = robustness.split_arrays(config.data, eval_cfg)
  grid = transfer.matrix(load_models(config, FLAGS.workdir, info), images[real],
                         labels[real], eval_cfg, seed=config.seed)
  text = markdown(grid, FLAGS.attack, eval_cfg.threat.eps, int(real.sum()))
  print(text)
  with open(os.path.join(FLAGS.workdir, "transfer_matrix.md"), "w") as f:
    f.write(text)


if __name__ == "__main__":
  define_flags()
  app.run(main)
