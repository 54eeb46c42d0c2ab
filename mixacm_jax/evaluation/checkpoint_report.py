"""`--mode=eval`: the robustness report of a checkpoint (this project's or converted),
resumable: its progress is committed under `<workdir>/eval_progress` chunk by chunk."""
import os
from typing import Any, Dict

import jax

from mixacm_jax import models
from mixacm_jax.attacks import registry
from mixacm_jax.configs import checks as config_checks
from mixacm_jax.data import input_pipeline
from mixacm_jax.errors import CheckpointError
from mixacm_jax.evaluation import (journal as journal_lib, min_norm, provenance, robustness,
                                   robustness_output, transfer)
from mixacm_jax.port import source
from mixacm_jax.runtime import checkpoint, preemption, reporting, workdir_lock

PROGRESS_DIR = "eval_progress"


def robustness_of_checkpoint(config, workdir: str, step=None) -> Dict[str, Any]:
  """Clean and robust accuracy of the model in `config.model` from `workdir`'s latest (or
  given) checkpoint; writes robustness.json and robustness_examples.csv (and an eps-sweep
  plot when asked). Killed, the same command continues where it stopped. Holds the
  workdir's lock (one run in it)."""
  config_checks.validate(config)
  if not os.path.isdir(workdir):
    raise CheckpointError(f"no checkpoint at {workdir}")
  with workdir_lock.hold(workdir):
    return _robustness_of_checkpoint(config, workdir, step)


def _robustness_of_checkpoint(config, workdir: str, step) -> Dict[str, Any]:
  info = input_pipeline.get_info(config.data)
  model = models.create_model_from_config(config.model, info.num_classes)
  variables = checkpoint.load_variables(model, info.image_shape, workdir, step,
                                        config.eval.get("weights", "raw"))
  source_model = (source.load(config.transfer, info.num_classes, info.image_shape,
                              role="the transfer source (config.transfer)")
                  if source.is_given(config.transfer) else None)  # before any work
  attacks = registry.parse_attacks(config.eval.attacks, config.eval.autoattack_version,
                                   config.eval.threat.norm)
  settings = provenance.attack_settings(config.eval, attacks, config.eval.threat.eps,
                                        config.seed)
  settings.pop("versions")
  settings.update(
      model=config.model.name, variables=journal_lib.fingerprint(variables),
      data={k: config.data.get(k) for k in ("name", "eval_split")},
      num_examples=int(config.eval.get("num_examples") or 0),
      devices=[jax.process_count(), jax.local_device_count()],
      image_shape=list(info.image_shape))
  directory = os.path.join(workdir, PROGRESS_DIR, f"host{jax.process_index()}")
  journal = journal_lib.Journal(directory, settings)
  if journal.resumed and reporting.is_primary():
    print(f"Continuing the evaluation in {directory} ({journal.resumed} chunks done)",
          flush=True)
  with preemption.SigtermFlag() as sigterm:
    journal.should_stop = lambda: sigterm.raised
    report = robustness.report_on_split(model, variables, config.data, config.eval,
                                        seed=config.seed, journal=journal)
  report["checkpoint"] = os.path.abspath(workdir)
  report["weights"] = config.eval.get("weights", "raw")
  if source_model is not None:
    _add_transfer(report, (model, variables), source_model, config)
  if config.eval.eps_sweep:
    sweep = robustness.eps_sweep(model, variables, config.data, config.eval,
                                 list(config.eval.eps_sweep), seed=config.seed)
    report["eps_sweep"] = sweep
    report["warnings"] += sweep["warnings"]
    if reporting.is_primary():
      robustness_output.plot_sweep(sweep, os.path.join(workdir, "robustness_vs_eps.png"))
  if config.eval.get("min_norm"):
    _add_min_norm(report, model, variables, config, workdir)
  if reporting.is_primary():
    robustness_output.write_report(report, workdir)
  journal.finish()
  return report


def _add_transfer(report: Dict[str, Any], target, loaded: source.Loaded, config) -> None:
  """The report's transfer entries: each attack crafted on `config.transfer`'s model and
  evaluated on the checkpoint's (the same points, keys and settings)."""
  images, labels, real = robustness.split_arrays(config.data, config.eval)
  if reporting.is_primary():
    print(f"Transfer: crafting each attack on {loaded.source}", flush=True)
  result = transfer.transfer_report(target, (loaded.model, loaded.variables), images, labels,
                                    config.eval, source_name=loaded.source, real=real,
                                    seed=config.seed, verbose=True)
  report["attacks"].update(result.pop("attacks"))
  report["examples"]["attacks"].update(result.pop("examples"))
  report["warnings"] += result.pop("warnings")
  report["transfer"] = result


def _add_min_norm(report: Dict[str, Any], model, variables, config, workdir: str) -> None:
  """Each point's smallest perturbation by each attack of `eval.min_norm` and the
  robustness curves, plotted with the bounded attacks' points (`robustness_curve.png`)."""
  images, labels, real = robustness.split_arrays(config.data, config.eval)
  report["min_norm"], report["examples"]["min_norm"] = {}, {}
  for attack in registry.parse_min_norm(config.eval.min_norm):
    if reporting.is_primary():
      print(f"Minimum norm: {attack} on {int(real.sum())} points", flush=True)
    result = min_norm.report(model, variables, images[real], labels[real], config.eval,
                             attack=attack)
    report["examples"]["min_norm"][attack] = result.pop("per_point")
    report["min_norm"][attack] = result
  if reporting.is_primary():
    robustness_output.plot_curve(report, os.path.join(workdir, "robustness_curve.png"))
