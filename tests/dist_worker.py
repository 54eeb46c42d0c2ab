"""Worker for distributed_test.py: a few pmapped train steps on a fixed global batch, params
saved to an .npz. Run as a script, with the device count set through XLA_FLAGS; with
--num_processes > 1 it joins a jax.distributed run and feeds only its own slice."""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--out", required=True)
  p.add_argument("--steps", type=int, default=3)
  p.add_argument("--objective", default="pgd_at")
  p.add_argument("--coordinator", default="")
  p.add_argument("--num_processes", type=int, default=1)
  p.add_argument("--process_id", type=int, default=0)
  p.add_argument("--ckpt_dir", default="")
  args = p.parse_args()

  from mixacm_jax.runtime import distributed  # pylint: disable=g-import-not-at-top
  if args.num_processes > 1:
    distributed.maybe_initialize(args.coordinator, args.num_processes, args.process_id)
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  from mixacm_jax import models, objectives
  from mixacm_jax.configs import default  # pylint: disable=g-import-not-at-top
  from mixacm_jax.data import digits, input_pipeline  # pylint: disable=g-import-not-at-top
  from mixacm_jax.runtime import parallel
  from mixacm_jax.training import train

  config = default.get_config()
  config.model.kwargs.base_width = 4
  config.model.kwargs.stage_sizes = (1, 1)
  config.objective.name = args.objective
  for method in default.ADVERSARIAL_METHODS:
    config.objective[method].attack.steps = 2
  info = input_pipeline.get_info(config.data)
  model = models.create_model_from_config(config.model, info.num_classes)
  state = train.create_train_state(model, info.image_shape, config.optim, seed=config.seed,
                                   steps_per_epoch=10, total_steps=100)
  images, labels = digits.arrays("train")
  step = train.make_p_train_step(config.objective, model,
                                 objectives.get_objective(args.objective))
  p_state = parallel.replicate(state)
  n_local, global_batch = jax.local_device_count(), 16
  per_process = global_batch // jax.process_count()
  for i in range(args.steps):
    lo = i * global_batch + jax.process_index() * per_process
    batch = {"image": images[lo:lo + per_process], "label": labels[lo:lo + per_process]}
    batch = {k: v.reshape((n_local, -1) + v.shape[1:]) for k, v in batch.items()}
    p_state, _ = step(p_state, batch, parallel.replicate({}))
  final = jax.device_get(parallel.unreplicate(p_state))
  if args.ckpt_dir:  # every process takes part in the save; orbax coordinates the writes
    from mixacm_jax.runtime.checkpoint import Checkpointer  # pylint: disable=g-import-not-at-top
    ckpt = Checkpointer(args.ckpt_dir, async_save=False)
    ckpt.save(args.steps, final)
    ckpt.close()
    restored, step = Checkpointer(args.ckpt_dir, read_only=True, async_save=False).restore(final)
    same = jax.tree_util.tree_map(lambda a, b: bool(np.array_equal(a, b)),
                                  (final.params, final.batch_stats, final.opt_state),
                                  (restored.params, restored.batch_stats, restored.opt_state))
    assert step == args.steps and all(jax.tree_util.tree_leaves(same))
    print(f"process {jax.process_index()}: checkpoint round trip ok")
  flat = jax.tree_util.tree_flatten_with_path((final.params, final.batch_stats))[0]
  np.savez(args.out, **{jax.tree_util.keystr(k): np.asarray(v) for k, v in flat})
  print(f"process {jax.process_index()}/{jax.process_count()}, {jax.device_count()} devices: ok")


if __name__ == "__main__":
  main()
