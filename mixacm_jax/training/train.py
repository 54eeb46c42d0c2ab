"""TrainState, the one pmapped train step over any objective, the eval step, and the loop."""
import dataclasses
import functools
import json
import os
import time
from typing import Any, Callable, Dict, NamedTuple, Optional

from flax.training import train_state
import jax
import jax.numpy as jnp
import numpy as np
import optax

from mixacm_jax import models, objectives
from mixacm_jax.attacks import registry
from mixacm_jax.configs import checks as config_checks
from mixacm_jax.data import input_pipeline
from mixacm_jax.errors import CheckpointError, ConfigError, NonFiniteLossError
from mixacm_jax.evaluation import robustness, sanity
from mixacm_jax.runtime import (checkpoint as ckpt_lib, parallel, preemption, reporting, storage,
                                workdir_lock)
from mixacm_jax.training import awp, ema, optim, teacher as teacher_lib


class TrainState(train_state.TrainState):
  batch_stats: Any = None
  rng: jax.Array = None
  ema_params: Any = None  # the model's averaged weights ({} without optim.ema)
  objective_state: Any = None  # what a stateful objective keeps across steps ({}: none)


class WeightRules(NamedTuple):
  """What the step does to the weights for every objective: averaging and perturbation."""
  ema_decay: float = 0.0
  awp_gamma: float = 0.0
  awp_start_step: int = 0  # AWP's warm-up: plain steps before it

  @classmethod
  def of(cls, optim_cfg, steps_per_epoch: int) -> "WeightRules":
    e, a = optim_cfg.get("ema"), optim_cfg.get("awp")
    return cls(e.decay if ema.enabled(e) else 0.0, a.gamma if awp.enabled(a) else 0.0,
               int(a.warmup_epochs * steps_per_epoch) if awp.enabled(a) else 0)


def make_forward(model) -> Callable:
  """forward(params, batch_stats, x, train, names) -> (logits, {name: act}, new_batch_stats)."""
  def forward(params, batch_stats, x, train, names=()):
    return models.apply_model(model, {"params": params, "batch_stats": batch_stats}, x,
                              train=train, names=names)
  return forward


def create_train_state(model, image_shape, optim_cfg, *, seed: int, steps_per_epoch: int,
                       total_steps: int, objective_params: Optional[Dict[str, Any]] = None,
                       objective_state: Optional[Dict[str, Any]] = None) -> TrainState:
  """`params` = {"model": the network's, "objective": what the objective learns beside it
  (e.g. MixACM's ACM transformations; dropped at inference and export)}."""
  init_rng, state_rng = jax.random.split(jax.random.PRNGKey(seed))
  variables = models.init_variables(model, init_rng, image_shape)
  tx = optim.create_optimizer(optim_cfg, steps_per_epoch, total_steps)
  params = {"model": variables["params"], "objective": objective_params or {}}
  return TrainState.create(apply_fn=model.apply, params=params,
                           batch_stats=variables.get("batch_stats", {}), tx=tx, rng=state_rng,
                           ema_params=ema.initial(variables["params"], optim_cfg.get("ema")),
                           objective_state=objective_state or {})


def _peer_variables(model, image_shape, seed: int):
  """A second network of the student's architecture, with its own initialisation."""
  return models.init_variables(model, jax.random.PRNGKey(seed + 3), image_shape)


def init_objective_state(objective_cfg, objective, model, image_shape, *, seed: int):
  """The objective's own state before the first step: `init_state`'s, and a peer's
  BatchNorm statistics (`peer_batch_stats`) for an objective that trains a peer."""
  state = objective.init_state(objective.settings(objective_cfg)) if objective.init_state else {}
  if objective.trains_peer:
    state["peer_batch_stats"] = _peer_variables(model, image_shape, seed)["batch_stats"]
  return state


def init_objective_params(objective_cfg, objective, model, teacher, image_shape, *, seed: int):
  """Initial params the objective learns beside the model: MixACM's ACM transformations,
  shaped from both models' sown features (traced, not computed); a peer's weights (`peer`)."""
  if objective.trains_peer:
    return {"peer": _peer_variables(model, image_shape, seed)["params"]}
  if objective.init_params is None:
    return {}
  cfg = objective.settings(objective_cfg)
  student_names, teacher_names = objective.feature_names(cfg)
  x = jax.ShapeDtypeStruct((1, *image_shape), jnp.float32)
  shapes = lambda m, v, names: {k: a.shape for k, a in jax.eval_shape(
      lambda v, x: models.apply_model(m, v, x, train=False, names=names)[1], v, x).items()}
  student_vars = jax.eval_shape(lambda: models.init_variables(model, jax.random.PRNGKey(0),
                                                              image_shape))
  return objective.init_params(jax.random.PRNGKey(seed + 2), cfg,
                               shapes(model, student_vars, student_names),
                               shapes(teacher.model, teacher.variables, teacher_names))


def train_step(state: TrainState, batch, teacher_variables, *, objective, forward, cfg,
               teacher_model=None, extra_teachers=None, total_steps: int = 0,
               rules: WeightRules = WeightRules()):
  """One data-parallel update, run under `pmap(axis_name=parallel.AXIS)`.

  `teacher_variables` (frozen, replicated once before training; {} when unused) are an
  argument rather than a closed-over constant, so they are not baked into the program;
  with `extra_teachers` ({role: model}: MTARD's clean teacher) they are {"teacher": the
  main teacher's, role: each extra teacher's}. The objective sees this device's shard;
  gradients, metrics and BatchNorm statistics are averaged over devices (BatchNorm itself syncs batch statistics over 'batch'), so 1 and
  N devices make the same update on the same global batch. `rules` add AWP's perturbed
  gradient and the weights' moving average, whatever the objective.
  """
  n = batch["label"].shape[0]
  extras = {}
  if extra_teachers:
    extras = {role: teacher_lib.frozen_forward(m, teacher_variables[role])
              for role, m in extra_teachers.items()}
    teacher_variables = teacher_variables["teacher"]
  ctx = objectives.ObjectiveContext(
      forward=lambda p, *args: forward(p["model"], *args), batch_stats=state.batch_stats,
      cfg=cfg, teacher=teacher_lib.frozen_forward(teacher_model, teacher_variables),
      rng=jax.random.fold_in(state.rng, state.step),
      example_offset=jax.lax.axis_index(parallel.AXIS) * n, state=state.objective_state,
      progress=jnp.minimum(state.step / max(total_steps, 1), 1.0), teachers=extras)
  params = state.params
  if rules.awp_gamma:  # the inner maximisation keeps attacking w
    ctx = dataclasses.replace(ctx, attack_params=state.params)
    perturb = lambda: awp.perturbed_params(objective, state.params, ctx, batch, rules.awp_gamma)
    params = (perturb() if not rules.awp_start_step else jax.lax.cond(
        state.step >= rules.awp_start_step, perturb, lambda: state.params))
  grad_fn = jax.value_and_grad(objective, has_aux=True)
  (_, (batch_stats, metrics, *objective_state)), grads = grad_fn(params, ctx, batch)
  grads, metrics, batch_stats = jax.lax.pmean((grads, metrics, batch_stats), parallel.AXIS)
  metrics["grad_norm"] = optax.tree.norm(grads)
  state = state.apply_gradients(grads=grads, batch_stats=batch_stats)  # to w, not w + v
  if objective_state:  # computed from global means, the same on every device
    state = state.replace(objective_state=objective_state[0])
  if rules.ema_decay:
    state = state.replace(ema_params=ema.update(state.ema_params, state.params["model"],
                                                rules.ema_decay))
  return state, metrics


def make_p_train_step(objective_cfg, model, objective: objectives.Objective,
                      teacher_model=None, *, devices=None, donate: bool = False,
                      rules: WeightRules = WeightRules(), extra_teachers=None,
                      total_steps: int = 0) -> Callable:
  """The data-parallel train step: p_step(p_state, batch, p_teacher_variables) ->
  (p_state, metrics), with `batch` shaped [devices, per-device batch, ...] and the state and
  teacher variables replicated (`parallel.replicate`); BatchNorm syncs over the device axis.
  `objective_cfg` is `config.objective`; the objective gets its own group of it."""
  return jax.pmap(
      functools.partial(train_step, objective=objective.loss_fn,
                        forward=make_forward(model.clone(bn_axis_name=parallel.AXIS)),
                        cfg=objective.settings(objective_cfg), teacher_model=teacher_model,
                        extra_teachers=extra_teachers, total_steps=total_steps, rules=rules),
      axis_name=parallel.AXIS, devices=devices, donate_argnums=(0,) if donate else ())


def due_evaluations(train_evals, step: int, is_last: bool):
  """The names of `config.train_evals` to run at `step`: each at its every_steps, all at the
  end."""
  return [name for name, e in train_evals.items()
          if is_last or (e.every_steps and step % e.every_steps == 0)]


def evaluate_during_training(model, variables, names, *, data_cfg, eval_cfg, train_evals,
                             seed: int = 0, programs: Optional[Dict] = None
                             ) -> Dict[str, float]:
  """The evaluations `names` of `train_evals`, by the robustness report's engine (the same
  code, keys and numbers as `--mode=eval` with those attacks): `<name>/clean_accuracy` and
  `<name>/<attack>` for each; the first evaluation of `train_evals` also as
  `clean_accuracy`, `robust_accuracy` (its lowest) and `num_examples`. `programs` keeps the
  compiled attacks from one evaluation to the next."""
  out = {}
  for name in names:
    cfg = eval_cfg.copy_and_resolve_references()
    cfg.attacks, cfg.num_examples = train_evals[name].attacks, train_evals[name].num_examples
    report = robustness.report_on_split(model, variables, data_cfg, cfg, seed=seed,
                                        verbose=False, programs=programs)
    out[f"{name}/clean_accuracy"] = report["clean_accuracy"]
    for attack, result in report["attacks"].items():
      out[f"{name}/{attack}"] = result["robust_accuracy"]
    if name == next(iter(train_evals)):
      out["clean_accuracy"], out["num_examples"] = report["clean_accuracy"], report["num_examples"]
      if report["attacks"]:
        out["robust_accuracy"] = min(r["robust_accuracy"] for r in report["attacks"].values())
    for warning in report["warnings"]:
      if reporting.is_primary():
        print(f"[eval {name}] warning: {warning}", flush=True)
  return out


def evaluate_weights(model, state: TrainState, names, **kwargs) -> Dict[str, float]:
  """`evaluate_during_training` of the state's weights, and of their moving average (its
  metrics prefixed `ema/`) when the run keeps one."""
  out = evaluate_during_training(
      model, {"params": state.params["model"], "batch_stats": state.batch_stats}, names,
      **kwargs)
  if state.ema_params:
    averaged = evaluate_during_training(
        model, {"params": state.ema_params, "batch_stats": state.batch_stats}, names, **kwargs)
    out.update({f"ema/{k}": v for k, v in averaged.items() if k != "num_examples"})
  return out


def _check_finite(step: int, metrics: Dict[str, float], checkpointer) -> None:
  bad = [k for k, v in metrics.items() if not np.isfinite(v)]
  if bad:
    raise NonFiniteLossError(
        f"non-finite {', '.join(bad)} at step {step} (values: "
        f"{ {k: metrics[k] for k in bad} }); training stopped ({checkpointer.last_good()}). "
        "Lower optim.learning_rate or check the inputs.")


def _check_state(step: int, state, checkpointer) -> None:
  """Weights, statistics and optimizer state must be finite before they are evaluated or
  saved: the loss can still be finite a few steps after the state is not."""
  bad = ckpt_lib.nonfinite_entries(state)
  if bad:
    raise NonFiniteLossError(
        f"the state is not finite at step {step} ({ckpt_lib.short_list(bad, 3)}); training "
        f"stopped ({checkpointer.last_good()}). Lower optim.learning_rate or check the inputs.")


def _check_evaluations(config, num_classes: int) -> None:
  """Before any training: the training-time evaluations' attacks can serve the data's
  classes (the DLR stages need 3; a targeted PGD's given class must exist)."""
  for e in config.train_evals.values():
    stages = [s for _, names in registry.parse_attacks(
        e.attacks, config.eval.autoattack_version, config.eval.threat.norm)
              for s in names if s != "clean"]
    sanity.check_classes(stages, num_classes)
    sanity.check_target(stages, str(config.eval.pgd.get("target", "random")), num_classes)


def _restore(checkpointer, state, workdir: str):
  """`checkpointer.restore(state)`; a checkpoint of another state layout (the moving average
  on or off, another objective's state, an earlier version) is named in one line."""
  try:
    return checkpointer.restore(state)
  except CheckpointError:
    try:
      raw, step = checkpointer.restore(None)
    except CheckpointError:
      raise  # unreadable as written, too: corrupt
    for field, what in (("ema_params", "a moving average of the weights (optim.ema.decay)"),
                        ("objective_state", "an objective state (MTARD, PeerAiD)")):
      if field not in raw:
        raise ConfigError(f"the checkpoint of step {step} in {workdir} was written by an "
                          "earlier version, before the train state kept " + what + ": it "
                          "loads as a teacher or in --mode=eval, but training cannot resume "
                          "from it; use another --workdir") from None
      if bool(raw[field]) != bool(getattr(state, field)):
        raise ConfigError(f"the checkpoint of step {step} in {workdir} was written "
                          f"{'with' if raw[field] else 'without'} {what}, this run is "
                          f"{'without' if raw[field] else 'with'} it: resume with the same "
                          "setting, or use another --workdir") from None
    raise


def _check_resumable(restored_step: Optional[int], total_steps: int, workdir: str) -> None:
  if restored_step is not None and restored_step > total_steps:
    raise ConfigError(
        f"{workdir} holds a checkpoint of step {restored_step}, past this run's "
        f"{total_steps} steps: set optim.num_steps >= {restored_step} to continue it, "
        "or use another --workdir")


def _write_summary(workdir: str, summary: Dict[str, Any], trained: bool) -> Dict[str, Any]:
  """Writes summary.json. A run that found its training finished (it only evaluated) keeps
  the cost the training run recorded there, rather than its own zero."""
  path = os.path.join(workdir, "summary.json")
  if not trained and os.path.exists(path):
    with open(path) as f:
      previous = json.load(f)
    if previous.get("steps") == summary["steps"]:
      summary = {**summary, **{k: previous[k] for k in ("train_seconds", "epoch_seconds",
                                                        "resumed_from") if k in previous}}
  if reporting.is_primary():
    with storage.writing("write", path):
      with open(path, "w") as f:
        json.dump(summary, f, indent=2)
  return summary


def train_and_evaluate(config, workdir: str, *, teacher: Optional[teacher_lib.Teacher] = None,
                       objective: Optional[objectives.Objective] = None) -> Dict[str, Any]:
  """Trains `config.model` with `config.objective` in `workdir`, resuming from its latest
  checkpoint; returns the final eval metrics and the training cost. Holds the workdir's lock
  (one run per workdir)."""
  config_checks.validate_training(config)
  config_checks.check_writable(workdir)
  with workdir_lock.hold(workdir):
    return _train_and_evaluate(config, workdir, teacher, objective)


@dataclasses.dataclass
class _Run:
  """What the training loop holds for one run."""
  config: Any
  workdir: str
  objective: objectives.Objective
  total_steps: int
  steps_per_epoch: int
  start_step: int
  checkpointer: ckpt_lib.Checkpointer
  writer: reporting.MetricWriter
  progress: reporting.Progress
  evaluate: Callable  # (names, host state) -> metrics of those `train_evals`
  p_train_step: Callable
  p_teacher_variables: Any


def _train_and_evaluate(config, workdir, teacher, objective) -> Dict[str, Any]:
  run, p_state = _prepare(config, workdir, teacher, objective)
  try:
    p_state, eval_metrics, train_seconds = _loop(run, p_state)
    if run.start_step == run.total_steps:  # finished before: evaluate what was restored
      eval_metrics = run.evaluate(list(config.train_evals), _host(p_state))
  finally:
    run.checkpointer.close()  # commits any save still in flight, even on a crash
    run.writer.close()
  summary = _write_summary(workdir, {
      "model": config.model.name, "objective": config.objective.name,
      "steps": run.total_steps, "resumed_from": run.start_step, "train_seconds": train_seconds,
      # Wall-clock per epoch of this invocation's steps (the first step's compile included).
      "epoch_seconds": train_seconds * run.steps_per_epoch / max(
          run.total_steps - run.start_step, 1),
      **run.objective.training_cost(config.objective, run.total_steps, config.optim.batch_size,
                                    _awp_steps(config.optim, run)),
      **eval_metrics}, trained=run.start_step < run.total_steps)
  return {"state": _host(p_state), **summary}


def _awp_steps(optim_cfg, run) -> int:
  """The steps that ran the objective twice (AWP after its warm-up)."""
  rules = WeightRules.of(optim_cfg, run.steps_per_epoch)
  return max(run.total_steps - rules.awp_start_step, 0) if rules.awp_gamma else 0


def _host(p_state):
  return jax.device_get(parallel.unreplicate(p_state))


def _prepare(config, workdir, teacher, objective):
  """(the run, the replicated state): the model, the teacher, the state restored from the
  latest checkpoint, the compiled step and the evaluations."""
  info = input_pipeline.get_info(config.data)
  _check_evaluations(config, info.num_classes)
  model = models.create_model_from_config(config.model, info.num_classes)
  steps_per_epoch = input_pipeline.steps_per_epoch(config.data, config.optim.batch_size)
  total_steps = config.optim.get("num_steps") or int(config.optim.num_epochs * steps_per_epoch)
  objective = objective or objectives.get_objective(config.objective.name)
  teacher = teacher_lib.resolve_teacher(config.teacher, config.objective, objective, teacher,
                                        model, info)
  state = create_train_state(
      model, info.image_shape, config.optim, seed=config.seed, steps_per_epoch=steps_per_epoch,
      total_steps=total_steps, objective_params=init_objective_params(
          config.objective, objective, model, teacher, info.image_shape, seed=config.seed),
      objective_state=init_objective_state(config.objective, objective, model,
                                           info.image_shape, seed=config.seed))
  checkpointer = ckpt_lib.Checkpointer(
      os.path.join(workdir, "checkpoints"), keep=config.checkpoint.keep,
      best_metric=config.checkpoint.get("best_metric"), async_save=config.checkpoint.async_save)
  state, restored_step = _restore(checkpointer, state, workdir)
  _check_resumable(restored_step, total_steps, workdir)
  start_step = int(state.step)
  if reporting.is_primary():
    if restored_step is not None:
      print(f"Resuming from the checkpoint of step {restored_step} in {workdir}", flush=True)
    print(f"Training {config.model.name} with {config.objective.name} on {info.name}: "
          f"{total_steps} steps of {config.optim.batch_size} examples "
          f"({steps_per_epoch} steps/epoch) on {jax.device_count()} device(s)", flush=True)
  programs: Dict = {}  # compiled once, for every evaluation of the run
  evaluate = lambda names, host_state: evaluate_weights(
      model, host_state, names, data_cfg=config.data, eval_cfg=config.eval,
      train_evals=config.train_evals, seed=config.seed, programs=programs)
  run = _Run(config, workdir, objective, total_steps, steps_per_epoch, start_step, checkpointer,
             reporting.MetricWriter(workdir),
             reporting.Progress(total_steps, config.optim.batch_size, start_step), evaluate,
             *_step_program(config, model, objective, teacher, info, steps_per_epoch,
                            total_steps))
  return run, parallel.replicate(state)


def _step_program(config, model, objective, teacher, info, steps_per_epoch, total_steps):
  """(the compiled train step, the teachers' replicated variables), with the objective's
  further teachers (MTARD's clean one) loaded from their config sections."""
  extras = teacher_lib.extra_teachers(config, objective, info)
  variables = teacher.variables if teacher else {}
  if extras:
    variables = {"teacher": variables, **{r: t.variables for r, t in extras.items()}}
  step = make_p_train_step(
      config.objective, model, objective, teacher and teacher.model, donate=True,
      rules=WeightRules.of(config.optim, steps_per_epoch), total_steps=total_steps,
      extra_teachers={r: t.model for r, t in extras.items()} or None)
  return step, parallel.replicate(variables)


def _loop(run: _Run, p_state):
  """The training steps from the run's start: (the replicated state, the latest metrics of
  the first evaluation, seconds spent training). SIGTERM saves and exits after a step."""
  config = run.config
  batches = input_pipeline.train_batches(config.data, config.optim.batch_size, config.seed,
                                         run.start_step)
  eval_metrics: Dict[str, float] = {}
  train_seconds = 0.0
  with preemption.SigtermFlag() as sigterm:
    for step in range(run.start_step + 1, run.total_steps + 1):
      t0 = time.perf_counter()
      stop = sigterm.raised  # read once, so a signal mid-step is handled at the next one
      p_state, p_metrics = run.p_train_step(p_state, next(batches), run.p_teacher_variables)
      due, save_now, host_state = _observe(run, step, p_state, p_metrics, stop)
      train_seconds += time.perf_counter() - t0
      eval_metrics = _evaluate_and_save(run, step, host_state, due, save_now, eval_metrics)
      if stop:
        raise SystemExit(f"SIGTERM: saved the checkpoint of step {step} in {run.workdir}; "
                         "run the same command to resume")
  return p_state, eval_metrics, train_seconds


def _observe(run: _Run, step: int, p_state, p_metrics, stop: bool):
  """(the evaluations due, whether to save, the host state when either): the step's
  metrics are checked and logged when due; the state is fetched once and checked for both."""
  config = run.config
  is_last = step == run.total_steps
  log_now = step % config.log_every_steps == 0 or is_last
  due = due_evaluations(config.train_evals, step, is_last)
  save_now = step % config.checkpoint.every_steps == 0 or is_last or stop
  host_state = None
  if log_now or due or save_now:
    metrics = {k: float(v) for k, v in jax.device_get(parallel.unreplicate(p_metrics)).items()}
    _check_finite(step, metrics, run.checkpointer)
    if due or save_now:
      host_state = _host(p_state)
      _check_state(step, host_state, run.checkpointer)
    if log_now:
      run.progress.report(step, metrics)
      run.writer.write(step, metrics, prefix="train/")
  return due, save_now, host_state


def _evaluate_and_save(run: _Run, step: int, host_state, due, save_now: bool,
                       eval_metrics: Dict[str, float]) -> Dict[str, float]:
  """The evaluations due and the save of this step; returns the run's latest metrics (those
  of its first evaluation, which the checkpoint's best metric reads)."""
  first_ran = False
  if due:
    step_metrics = run.evaluate(due, host_state)
    first_ran = "clean_accuracy" in step_metrics
    eval_metrics = step_metrics if first_ran else eval_metrics
    run.writer.write(step, step_metrics, prefix="eval/")
    if reporting.is_primary():
      print(f"[eval] step {step} | " + " | ".join(
          f"{k} {v:.4f}" for k, v in step_metrics.items() if "/" in k.removeprefix("ema/")),
          flush=True)
  if save_now:
    run.checkpointer.save(step, host_state, eval_metrics if first_ran else None)
  return eval_metrics
