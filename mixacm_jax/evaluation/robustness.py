"""Robustness report: clean accuracy and each attack's robust accuracy over an eval split,
with AutoAttack's per-stage accuracy, timings and sanity flags (written out by
`robustness_output`).

Attacks are named as in `attacks.registry` (`config.eval.attacks`, comma-separated); eps
and norm come from `config.eval.threat`, the PGD step from `config.eval.pgd`. Each stage
runs only on the points every earlier stage left correct, in compacted batches (`split`).
Per example, the report keeps the clean prediction and, for each attack, the stage that
broke the point, the margin at the returned point and its perturbation; every returned point
is evaluated again and must agree with the attack's flags (`outcome`). With a `journal`
(`--mode=eval`), each chunk of points is committed as it finishes, so a killed run continues
where it stopped.

The flow: `report_on_arrays` checks the inputs, builds a `_Run` (what every pass shares),
runs `_clean_pass`, then `_attack` for each attack: `_stage_pass` per stage, target by
target, `_chunk` per compacted batch.
"""
import dataclasses
import inspect
import sys
import time
from typing import Any, Callable, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from mixacm_jax.attacks import autoattack, registry
from mixacm_jax.configs import checks as config_checks
from mixacm_jax.data import input_pipeline
from mixacm_jax.errors import AttackConstraintError, ConfigError
from mixacm_jax.evaluation import (defaults, hosts, inputs, programs as programs_lib,
                                   provenance, sanity, split)
from mixacm_jax.evaluation.outcome import CLEAN_MISCLASSIFIED, ROBUST, Outcome, violations
from mixacm_jax.runtime import parallel, reporting


class Threat(NamedTuple):
  """The perturbation every attack of a report is bounded by (eps, norm), and PGD's settings
  at this eps: its step (it scales with eps: `eval.pgd.step_size` is for
  `eval.threat.eps`), restarts and the target of its targeted forms."""
  eps: float
  norm: str
  step_size: float
  restarts: int
  target: str = "random"

  @classmethod
  def of(cls, eval_cfg, eps: Optional[float] = None) -> "Threat":
    """`eval_cfg`'s threat, at `eps` in place of its own if given."""
    eps = eval_cfg.threat.eps if eps is None else eps
    return cls(eps, eval_cfg.threat.norm, eval_cfg.pgd.step_size * eps / eval_cfg.threat.eps,
               eval_cfg.pgd.get("restarts", 1), str(eval_cfg.pgd.get("target", "random")))


@dataclasses.dataclass(frozen=True)
class _Run:
  """What every pass of one report shares. `programs`: the compiled programs' cache (see
  `programs.cached`); `stage_settings`: AutoAttack stages' overrides; `version_settings`:
  those the AutoAttack version gives its stages (e.g. `plus`'s restarts); `individual`:
  AutoAttack's stages each on every point (else each on what the earlier left robust)."""
  model: Any
  p_vars: Any
  data: split.Split
  threat: Threat
  num_classes: int
  key: jax.Array
  programs: Optional[Dict] = None
  journal: Any = None
  verbose: bool = True
  as_original: bool = False
  stage_settings: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
  version_settings: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
  individual: bool = False


class _Stage(NamedTuple):
  """One stage of an attack: its name, index among the attack's stages, key, the journal's
  prefix for its chunks, its label on progress lines and its settings (sorted pairs)."""
  name: str
  index: int
  key: jax.Array
  journal_key: str
  label: str
  settings: Tuple[Tuple[str, Any], ...] = ()


class _Pass(NamedTuple):
  """One call of a stage on the points still robust (see `autoattack.stage_passes`): the
  stage's name, compiled program, key, target rank, and its chunks' journal prefix."""
  name: str
  program: Any
  key: jax.Array
  rank: Optional[int]
  journal_prefix: str


def report_on_split(model, variables, data_cfg, eval_cfg, *, eps: float = None,
                    seed: int = 0, verbose: bool = True, programs: Optional[Dict] = None,
                    journal=None) -> Dict[str, Any]:
  """Clean and robust accuracy for each attack in `eval_cfg.attacks` over the eval split."""
  images, labels, real = split_arrays(data_cfg, eval_cfg)
  return report_on_arrays(model, variables, images, labels, eval_cfg, real=real, eps=eps,
                          seed=seed, verbose=verbose, programs=programs, journal=journal)


def split_arrays(data_cfg, eval_cfg) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(images, labels, mask of real entries) of this host's share of the eval split (its
  first `eval_cfg.num_examples`), as the report reads them."""
  batches = list(input_pipeline.eval_batches(data_cfg, eval_cfg.batch_size,
                                             eval_cfg.get("num_examples")))
  flat = lambda v: v.reshape((-1,) + v.shape[2:])
  return (np.concatenate([flat(b["image"]) for b in batches]),
          np.concatenate([flat(b["label"]) for b in batches]),
          np.concatenate([flat(b["mask"]) for b in batches]) > 0)


def report_on_arrays(model, variables, images: np.ndarray, labels: np.ndarray, eval_cfg, *,
                     real: np.ndarray = None, eps: float = None, seed: int = 0,
                     verbose: bool = True, programs: Optional[Dict] = None,
                     journal=None, key: Optional[jax.Array] = None,
                     stage_settings: Optional[Mapping[str, Mapping[str, Any]]] = None,
                     return_points: bool = False) -> Dict[str, Any]:
  """The report over in-memory examples (NHWC in [0, 1]); `real` masks padding entries.
  `model` is a Flax model or any logits function (see `programs.FunctionModel`); `journal`
  (see `evaluation.journal`) commits each chunk of points and replays what an earlier run
  did. `key` replaces `PRNGKey(seed)`; `stage_settings` overrides AutoAttack stages'
  settings (`{"square": {"n_queries": 1000}}`); with `return_points`, each attack's
  per-example entry has the returned points (`x_adv`); `programs` keeps the compiled
  programs for later reports (keyed by the model: any models may share it). Bad images,
  labels or a model that cannot take them are one ConfigError (see `inputs`), before any
  work."""
  model, variables = programs_lib.as_model(model, variables)
  programs = {} if programs is None else programs  # one compilation per stage and settings
  images, labels, real, num_classes = _checked_inputs(model, variables, images, labels, real)
  attacks = registry.parse_attacks(eval_cfg.attacks, eval_cfg.autoattack_version,
                                   eval_cfg.threat.norm)
  all_stages = [st for _, stages in attacks for st in stages if st != "clean"]
  notes = sanity.check_classes(all_stages, num_classes)  # before any work
  sanity.check_target(all_stages, str(eval_cfg.pgd.get("target", "random")), num_classes)
  key = jax.random.PRNGKey(seed) if key is None else key
  stage_settings = {k: dict(v) for k, v in (stage_settings or {}).items()}
  run = _Run(model, parallel.replicate(variables),
             split.Split(images, labels, real, split.local_batch(eval_cfg.batch_size,
                                                                 len(labels))),
             Threat.of(eval_cfg, eps), num_classes, key, programs, journal, verbose,
             bool(eval_cfg.get("apgd_as_original", False)), stage_settings,
             registry.autoattack_settings(attacks, eval_cfg.autoattack_version,
                                          eval_cfg.threat.norm),
             eval_cfg.get("autoattack_mode", "worst_case") == "individual")
  report, clean = _clean_pass(run)
  report.update(eps=run.threat.eps, norm=run.threat.norm,
                settings=provenance.attack_settings(eval_cfg, attacks, run.threat.eps, seed,
                                                    key, stage_settings))
  randomized_attacks = any(st.endswith("-eot") for st in all_stages)
  flags, randomized = _model_flags(model, variables, images, randomized_attacks)
  report["warnings"] += notes + flags
  real = run.data.real
  examples = {"index": np.flatnonzero(real), "label": run.data.labels[real],
              "clean_prediction": clean["prediction"][real],
              "clean_margin": clean["margin"][real], "attacks": {}}
  for name, stages in attacks:
    if name != "clean":
      _attack(run, name, stages, clean["correct"], report, examples,
              strict=not (randomized or randomized_attacks), return_points=return_points)
  report["examples"] = examples
  return report


def _checked_inputs(model, variables, images, labels, real):
  """(images, labels, real, number of classes), each checked (see `inputs`)."""
  images = inputs.images(images)
  labels = inputs.labels(labels, len(images))
  real = np.ones(len(labels), bool) if real is None else np.asarray(real, bool)
  num_classes = inputs.output_classes(lambda v: model.apply(variables, v), images)
  inputs.within_classes(labels[real], num_classes)
  return images, labels, real, num_classes


def _model_flags(model, variables, images, randomized_attacks: bool
                 ) -> Tuple[List[str], bool]:
  """The flags read off the model's outputs on a few inputs (probabilities instead of
  logits, outputs that change between passes or, for the `rand` stages, that do not), and
  whether the model is randomised."""
  x = np.asarray(images[:16], np.float32)
  draws = [np.asarray(model.apply(variables, x, rngs={"noise": jax.random.PRNGKey(k)}))
           for k in range(3)]
  randomized = sanity.randomized(draws, deterministic_attacks=not randomized_attacks)
  flags = [sanity.probabilities(draws[0]), randomized, _dynamic_flag(model, variables, x)]
  if randomized_attacks and np.array_equal(draws[0], draws[1]):
    flags.append("the model is deterministic: the EOT attacks of AutoAttack's `rand` version "
                 "only cost more here; use `standard`")
  return [f for f in flags if f], randomized is not None


# The JAX transformations whose call inside a forward pass marks test-time optimisation (their
# own code: the decorator's wrapper is shared by many functions).
_GRADIENT_CODES = frozenset(inspect.unwrap(fn).__code__ for fn in (
    jax.grad, jax.value_and_grad, jax.vjp, jax.jvp, jax.jacrev, jax.jacfwd))


def _dynamic_flag(model, variables, x: np.ndarray) -> Optional[str]:
  """The original's `check_dynamic` on one forward pass: for a logits function, gradient
  calls inside it (run eagerly, traced); for a Flax model, the collections it changes when
  allowed to."""
  if isinstance(model, programs_lib.FunctionModel):
    return sanity.dynamic(_gradient_calls(lambda: model.apply(variables, x)) > 0, [])
  try:
    _, after = model.apply(variables, x, mutable=True)
  except TypeError:  # an `apply` that is not Flax's
    after = {}
  return sanity.dynamic(False, sanity.changed_collections(variables, after))


def _gradient_calls(forward: Callable[[], Any]) -> int:
  """How many JAX gradient transformations `forward()` calls (without jit, so that a
  jitted function's body runs too); another tracer (a debugger, coverage) is restored."""
  calls = [0]

  def count(frame, event, arg):
    del arg
    if event == "call" and frame.f_code in _GRADIENT_CODES:
      calls[0] += 1
  previous = sys.gettrace()
  with jax.disable_jit():
    sys.settrace(count)
    try:
      forward()
    finally:
      sys.settrace(previous)
  return calls[0]


def _replayed(journal, key: str) -> Optional[Dict[str, np.ndarray]]:
  """What an earlier run committed under `key`, where every host has it; else None."""
  saved = journal.load(key) if journal else None
  if journal and not hosts.all_have(saved is not None):
    return None
  return saved


def _clean_pass(run: _Run) -> Tuple[Dict[str, Any], Dict[str, np.ndarray]]:
  """The report's first entries (clean accuracy, the gradient-masking check) and, per
  example, the clean prediction, margin and whether it is correct."""
  data = run.data
  t0 = time.perf_counter()
  saved = _replayed(run.journal, "clean")
  if saved is None:
    clean_fn = programs_lib.cached(run.programs, ("clean", programs_lib.model_key(run.model)),
                                   lambda: programs_lib.clean(run.model))
    pred, margin, bad = data.map_batches(clean_fn, run.p_vars, data.images)
    saved = {"prediction": pred, "margin": margin, "bad_gradient": bad}
    if run.journal:
      run.journal.save("clean", **saved)
  clean = dict(saved, correct=(saved["prediction"] == data.labels) & data.real)
  flag = sanity.zero_gradients(int(np.sum(saved["bad_gradient"] & data.real)), int(data.count))
  return {"num_examples": int(data.count),
          "clean_accuracy": float(clean["correct"].sum()) / data.count, "attacks": {},
          "warnings": [flag] if flag else [],
          "seconds": {"clean": time.perf_counter() - t0}}, clean


def _attack(run: _Run, name: str, stages: Sequence[str], clean_correct: np.ndarray,
            report: Dict[str, Any], examples: Dict[str, Any], *, strict: bool,
            return_points: bool) -> None:
  """One named attack: its stages one after the other on the points still robust, then
  every returned point evaluated again; its entries go into `report` and `examples`."""
  t0 = time.perf_counter()
  robust, outcome, per_stage, alone = _run_stages(run, name, stages, clean_correct)
  acc = float(robust.sum()) / run.data.count
  margins = programs_lib.cached(run.programs, ("margins", programs_lib.model_key(run.model)),
                                lambda: programs_lib.margins(run.model))
  checked = outcome.verify(margins, run.p_vars, robust, run.threat.norm, name, strict=strict)
  result = {"robust_accuracy": acc}
  if len(stages) > 1:
    result["after_each_stage"] = per_stage
  if alone:
    result["individual"] = alone
  result.update(max_perturbation=float(checked.perturbation.max(initial=0.0)),
                ties=checked.ties)
  examples["attacks"][name] = {
      "broken_by": [("clean" if c == CLEAN_MISCLASSIFIED else "" if c == ROBUST
                     else stages[c]) for c in checked.code],
      "margin": checked.margin, "perturbation": checked.perturbation}
  if return_points:
    examples["attacks"][name]["x_adv"] = outcome.x_adv[run.data.real]
  report["attacks"][name] = result
  report["seconds"][name] = time.perf_counter() - t0
  report["warnings"] += _attack_warnings(name, acc, report["clean_accuracy"], per_stage,
                                         checked.disagree)


def _stage(run: _Run, name: str, stages: Sequence[str], j: int) -> _Stage:
  """Stage `j` of attack `name`, with its settings: the AutoAttack version's (for the
  `autoattack` attack) under the report's overrides."""
  stage_name = stages[j]
  settings = dict(run.version_settings.get(stage_name, {})) if name == "autoattack" else {}
  settings.update(run.stage_settings.get(stage_name, {}))
  return _Stage(stage_name, j, jax.random.fold_in(run.key, j), f"{name}.{j}",
                name if len(stages) == 1 else f"{name}:{stage_name}",
                tuple(sorted(settings.items())))


def _run_stages(run: _Run, name: str, stages: Sequence[str], clean_correct: np.ndarray):
  """(robust, outcome, robust accuracy after each stage, each stage's own accuracy or None):
  each stage on the points every earlier one left robust or, in individual mode (an
  AutoAttack of several stages), each on every point, a point's outcome then the first
  stage in order that broke it."""
  robust = clean_correct.copy()
  outcome = Outcome(run.data, robust)
  per_stage, alone = {}, {}
  individual = run.individual and len(stages) > 1
  for j in range(len(stages)):
    stage = _stage(run, name, stages, j)
    if individual:
      own = clean_correct.copy()
      own_outcome = Outcome(run.data, own)
      _stage_pass(run, stage, own, own_outcome)
      alone[stage.name] = float(own.sum()) / run.data.count
      first = robust & ~own  # broken here and by no earlier stage
      outcome.broken(np.flatnonzero(first), own_outcome.x_adv[first], j)
      robust &= own
    else:
      _stage_pass(run, stage, robust, outcome)
    per_stage[stage.name] = float(robust.sum()) / run.data.count
  return robust, outcome, per_stage, alone or None


def _attack_warnings(name: str, acc: float, clean_acc: float, per_stage: Dict[str, float],
                     disagree: int) -> List[str]:
  warnings = []
  if disagree:
    warnings.append(f"{name}: evaluated again, {disagree} returned points disagree with "
                    "the attack's flags, as expected of a randomised model")
  if acc > clean_acc + 1e-9:
    warnings.append(f"{name}: robust accuracy {acc:.4f} above clean {clean_acc:.4f}: the "
                    "attack or the model is broken")
  flag = sanity.square_succeeds(per_stage)
  return warnings + ([f"{name}: {flag}"] if flag else [])


def _stage_program(run: _Run, stage_name: str, settings: Tuple[Tuple[str, Any], ...]):
  """The compiled program of one stage with these settings (see `programs.stage`)."""
  t = run.threat
  host = stage_name in autoattack.STAGES and programs_lib.host_loops()
  return programs_lib.cached(
      run.programs, (programs_lib.model_key(run.model), stage_name, t.norm, t.restarts,
                     t.target, run.as_original, settings),
      lambda: programs_lib.stage(run.model, registry.stage_fn(
          stage_name, t.norm, t.restarts, run.as_original, settings, t.target), host))


def _stage_pass(run: _Run, stage: _Stage, robust: np.ndarray, outcome: Outcome) -> None:
  """One stage over the points still `robust` (updated in place): an AutoAttack stage pass
  by pass (target class by target class, restart by restart), each on what is left."""
  passes = (autoattack.stage_passes(stage.name, run.num_classes, dict(stage.settings))
            if stage.name in autoattack.STAGES else [autoattack.StagePass(None, 0)])
  for p in passes:
    again = f" restart {p.restart + 1}" if p.restart else ""
    one = _Pass(stage.name, _stage_program(run, stage.name, tuple(sorted(
                    stage.settings + p.settings))),
                jax.random.fold_in(stage.key, p.restart) if p.restart else stage.key, p.rank,
                f"{stage.journal_key}.{p.rank}" + (f".r{p.restart}" if p.restart else ""))
    label = stage.label + ("" if p.rank is None else f" target {p.rank}") + again
    _pass_over_robust(run, one, label, robust, (outcome, stage.index))


def _pass_over_robust(run: _Run, one: _Pass, label: str, robust: np.ndarray,
                      outcome: Tuple[Outcome, int]) -> None:
  """One pass in compacted batches over the points still `robust` (updated in place); the
  points it breaks go into `outcome` as broken by the stage of that index."""
  work = list(split.compact_batches(robust, run.data.batch, run.data.n_dev))
  progress = reporting.Progress(len(work), run.data.batch, label=label)
  for i, (sel, padded, valid) in enumerate(work):
    saved = _chunk(run, one, i, (sel, padded, valid))
    robust[sel] &= saved["still"]
    outcome[0].broken(sel[~saved["still"]], saved["x_adv"], outcome[1])
    if run.verbose and (i + 1 == len(work) or (i + 1) % max(1, len(work) // 10) == 0):
      progress.report(i + 1, {"robust_acc": robust.sum() / run.data.count})
    if run.journal and run.journal.should_stop():
      raise SystemExit(f"SIGTERM: evaluation progress saved in {run.journal.directory}; "
                       "run the same command to continue")


def _chunk(run: _Run, one: _Pass, i: int,
           work: Tuple[np.ndarray, np.ndarray, np.ndarray]) -> Dict[str, np.ndarray]:
  """Chunk `i` of a pass, the compacted batch `work` = (selected, padded indices, mask of
  real entries): {"sel", "still" (robust after it), "x_adv" (the points it broke)},
  committed to the journal, or replayed from it when an earlier run did it."""
  sel, padded, valid = work
  journal_key = f"{one.journal_prefix}.{i}"
  saved = _replayed(run.journal, journal_key)
  if saved is not None and not np.array_equal(saved["sel"], sel):
    raise AttackConstraintError(f"evaluation progress {journal_key} was made on other points; "
                                f"delete {run.journal.directory} to start again")
  if saved is not None:
    return saved
  d, t = run.data, run.threat
  x, y = d.images[padded], d.labels[padded]
  still, x_adv = one.program(
      run.p_vars, d.to_devices(x), d.to_devices(y), d.to_devices(valid),
      d.to_devices(hosts.point_keys(one.key, padded)),
      parallel.replicate(np.int32(one.rank or 0)), parallel.replicate(np.float32(t.eps)),
      parallel.replicate(np.float32(t.step_size)))
  x_adv = d.flat(x_adv)[:len(sel)]
  bad = violations(x_adv, x[:len(sel)], t.eps, t.norm)
  if bad:
    raise AttackConstraintError(f"{one.name} returned {bad} points outside the {t.norm} "
                                f"ball of eps={t.eps} or [0, 1], or not finite")
  still = d.flat(still)[:len(sel)]
  saved = {"sel": sel, "still": still, "x_adv": x_adv[~still]}
  if run.journal:
    run.journal.save(journal_key, **saved)
  return saved


def run_autoattack(logits_fn: Callable, x, y, key: jax.Array, *, eps: float,
                   norm: str = "linf", version: str = "standard",
                   overrides: Optional[Mapping[str, Mapping[str, Any]]] = None,
                   per_example: bool = False, batch_size: Optional[int] = None,
                   return_flags: bool = False):
  """The whole AutoAttack on arrays, by the report's engine: each stage of `version`
  (`standard`, `plus`, `rand`, `apgd`, or stages joined by `+`) runs only on the points every
  earlier stage left correctly classified (a targeted stage target class by target class, a
  stage with restarts restart by restart, each on the points still robust), each point with
  the key of its index,
  every returned point checked and evaluated again. `logits_fn(x)` (or `logits_fn(x, rng=k)`
  for a randomised model) takes NHWC inputs in [0, 1].

  Returns (x_adv, robust_after): the adversarial inputs (the first found for each point; the
  clean input where none was), and for each stage a boolean array, True where the point is
  still correctly classified after it. `overrides` changes a stage's settings, e.g.
  `{"square": {"n_queries": 1000}}`; `batch_size` (default: all points at once) bounds the
  memory and changes no result. With `per_example`, a third element holds what the report's
  per-example table does: `clean_prediction`, `broken_by` (the stage that broke each point,
  '' if robust, 'clean' if misclassified already), `margin` (true logit minus the largest
  other at the returned point) and `perturbation` (its norm). With `return_flags`, a last
  element holds the sanity warnings `evaluate`'s report carries (gradient masking, a
  randomised model, probabilities for logits...). The inputs are checked as `evaluate`
  checks them: each problem is one ConfigError.
  """
  x = inputs.images(x)
  y = inputs.labels(y, len(x))
  if batch_size is not None and (not isinstance(batch_size, (int, np.integer))
                                 or batch_size <= 0):
    raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
  _check_key(key)
  devices = jax.local_device_count()
  batch = -(-(batch_size or len(x)) // devices) * devices
  eval_cfg = defaults.eval_config(attacks="autoattack", eps=eps, norm=norm, version=version,
                                 batch_size=batch * jax.process_count())
  config_checks.validate_eval(eval_cfg)
  report = report_on_arrays(logits_fn, None, x, y, eval_cfg, key=key, verbose=False,
                            stage_settings=overrides, return_points=True)
  ex = report["examples"]
  table = ex["attacks"]["autoattack"]
  broken_by = np.asarray(table["broken_by"], object)
  stages = autoattack.get_version(version, norm)
  robust_after = {name: (broken_by == "") | np.isin(broken_by, stages[j + 1:])
                  for j, name in enumerate(stages)}
  out = (table["x_adv"], robust_after)
  if per_example:
    out += ({"clean_prediction": ex["clean_prediction"], "broken_by": table["broken_by"],
             "margin": table["margin"], "perturbation": table["perturbation"]},)
  return out + (report["warnings"],) if return_flags else out


def _check_key(key) -> None:
  """A JAX PRNG key: a typed key, or the raw uint32 pair `jax.random.PRNGKey` returns."""
  if isinstance(key, jax.Array) and jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
    if key.shape == ():
      return
  elif np.shape(key) == (2,) and np.asarray(key).dtype == np.uint32:
    return
  raise ConfigError(f"key must be one JAX PRNG key (jax.random.key(0) or "
                    f"jax.random.PRNGKey(0)), got {type(key).__name__} of shape "
                    f"{np.shape(key)}")


def eps_sweep(model, variables, data_cfg, eval_cfg, epsilons: Sequence[float],
              seed: int = 0) -> Dict[str, Any]:
  """Robust accuracy of each attack at each eps; flags accuracy that rises with eps. The PGD
  step scales with eps (`eval_cfg.pgd.step_size` is for `eval_cfg.threat.eps`); eps is a
  traced argument, so every attack compiles once for the whole sweep."""
  programs = {}
  rows = [report_on_split(model, variables, data_cfg, eval_cfg, eps=e, seed=seed,
                          verbose=False, programs=programs) for e in epsilons]
  warnings = []
  for name in rows[0]["attacks"] if rows else []:
    accs = [r["attacks"][name]["robust_accuracy"] for r in rows]
    for (e0, a0), (e1, a1) in zip(zip(epsilons, accs), zip(epsilons[1:], accs[1:])):
      if a1 > a0 + 1e-9:
        warnings.append(f"{name}: robust accuracy rises from {a0:.4f} at eps={e0:.4g} to "
                        f"{a1:.4f} at eps={e1:.4g}: the attack is failing at the larger eps")
  return {"epsilons": list(epsilons), "reports": rows, "warnings": warnings}
