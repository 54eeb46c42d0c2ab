"""`--mode=eval`: the robustness report of a checkpoint (this project's or converted)."""
import os
from typing import Any, Dict

from mixacm_jax import models
from mixacm_jax.configs import checks as config_checks
from mixacm_jax.data import input_pipeline
from mixacm_jax.evaluation import robustness, robustness_output
from mixacm_jax.runtime import checkpoint, reporting


def robustness_of_checkpoint(config, workdir: str, step=None) -> Dict[str, Any]:
  """Clean and robust accuracy of the model in `config.model` from `workdir`'s latest (or
  given) checkpoint; writes robustness.json (and an eps-sweep plot when asked)."""
  config_checks.validate(config)
  info = input_pipeline.get_info(config.data)
  model = models.create_model_from_config(config.model, info.num_classes)
  variables = checkpoint.load_variables(model, info.image_shape, workdir, step)
  report = robustness.report_on_split(model, variables, config.data, config.eval,
                                      seed=config.seed)
  report["checkpoint"] = os.path.abspath(workdir)
  if config.eval.eps_sweep:
    sweep = robustness.eps_sweep(model, variables, config.data, config.eval,
                                 list(config.eval.eps_sweep), seed=config.seed)
    report["eps_sweep"] = sweep
    report["warnings"] += sweep["warnings"]
    if reporting.is_primary():
      robustness_output.plot_sweep(sweep, os.path.join(workdir, "robustness_vs_eps.png"))
  if reporting.is_primary():
    robustness_output.write_report(report, workdir)
  return report
