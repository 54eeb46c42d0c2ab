"""Evaluation of a trained checkpoint: clean and PGD accuracy over the eval split."""
import os
from typing import Dict

from mixacm_jax import config_checks, input_pipeline, models, parallel, train
from mixacm_jax import teacher as teacher_lib


def evaluate_checkpoint(config, workdir: str, step=None) -> Dict[str, float]:
  """The model in `config.model` from `workdir`'s latest (or given) checkpoint."""
  config_checks.validate(config)
  info = input_pipeline.get_info(config.data)
  model = models.create_model_from_config(config.model, info.num_classes)
  variables = teacher_lib.load_variables(model, info.image_shape, workdir, step)
  p_eval_step = train.make_p_eval_step(model, config.eval.pgd)
  metrics = train.evaluate(p_eval_step, parallel.replicate(variables["params"]),
                           parallel.replicate(variables["batch_stats"]), config.data,
                           config.eval, config.seed)
  return {"checkpoint": os.path.abspath(workdir), **metrics}
