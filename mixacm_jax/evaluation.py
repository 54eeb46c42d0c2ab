"""Evaluation of a trained checkpoint: clean and PGD accuracy over the eval split."""
import os
from typing import Dict


from mixacm_jax import parallel

from mixacm_jax import checkpoint as ckpt_lib
from mixacm_jax import config_checks, input_pipeline, models, train
from mixacm_jax.errors import CheckpointError


def load_variables(config, checkpoint_dir: str, step=None):
  """params and batch_stats of the model in `config.model` from a TrainState checkpoint."""
  info = input_pipeline.get_info(config.data)
  model = models.create_model_from_config(config.model, info.num_classes)
  template = train.create_train_state(config, model, info.image_shape, 1, 1)
  if not os.path.isdir(checkpoint_dir):
    raise CheckpointError(f"no checkpoint directory at {checkpoint_dir}")
  checkpointer = ckpt_lib.Checkpointer(checkpoint_dir, read_only=True, async_save=False)
  if not checkpointer.all_steps():
    raise CheckpointError(f"no checkpoint in {checkpoint_dir}")
  state, step = checkpointer.restore(template, step)
  return model, {"params": state.params, "batch_stats": state.batch_stats}, step


def evaluate_checkpoint(config, workdir: str) -> Dict[str, float]:
  config_checks.validate(config)
  model, variables, step = load_variables(config, os.path.join(workdir, "checkpoints"))
  p_eval_step = train.make_p_eval_step(model, config.eval.pgd)
  metrics = train.evaluate(p_eval_step, parallel.replicate(variables["params"]),
                           parallel.replicate(variables["batch_stats"]), config.data,
                           config.eval, config.seed)

  return {"step": step, **metrics}
