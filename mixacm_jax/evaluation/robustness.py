"""Robustness report: clean accuracy and each attack's robust accuracy over an eval split,
with AutoAttack's per-stage accuracy, timings and sanity flags (written out by
`robustness_output`).

Attacks are named as in `attacks.registry` (`config.eval.attacks`, comma-separated); eps,
norm and the PGD step size come from `config.eval.pgd`. Each stage runs only on the points
every earlier stage left correct, in compacted batches. Per example, the report keeps the
clean prediction and, for each attack, the stage that broke the point, the margin at the
returned point and its perturbation; every returned point is evaluated again and must agree
with the attack's flags. With a `journal` (`--mode=eval`), each chunk of points is committed
as it finishes, so a killed run continues where it stopped.
"""
import inspect
from importlib import metadata
import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import numpy as np

from mixacm_jax.attacks import autoattack, keys as attack_keys, loop, pgd as pgd_lib, registry
from mixacm_jax.configs import checks as config_checks, cifar10
from mixacm_jax.data import input_pipeline
from mixacm_jax.errors import AttackConstraintError, ConfigError
from mixacm_jax.evaluation import inputs, sanity
from mixacm_jax.runtime import parallel, reporting

# A returned point whose margin is within this of 0 may flip between two evaluations (float
# reductions in batches of other sizes): counted, not an error.
TIE_MARGIN = 1e-4
CLEAN_MISCLASSIFIED, ROBUST = -2, -1  # per-example codes beside the stage index


class FunctionModel:
  """A logits function `fn(x)` (or a randomised `fn(x, rng=key)`) where the report expects
  a Flax model: `apply(variables, x)` ignores `variables`."""

  def __init__(self, fn: Callable):
    self.fn = fn
    try:
      self.takes_rng = "rng" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
      self.takes_rng = False

  def apply(self, variables, x, rngs=None, **_):
    del variables
    if self.takes_rng and rngs is not None:
      return self.fn(x, rng=rngs["noise"])
    return self.fn(x)


def _still_robust(logits_fn, x, y, robust, x_adv):
  """(robust after the attack, x_adv): entries that were not robust keep x."""
  x_adv = jnp.where(parallel.per_example(robust, x), x_adv, x)
  return robust & (jnp.argmax(logits_fn(x_adv), -1) == y), x_adv


def _stage_program(model, stage: Callable, host: bool):
  """(variables, x, y, robust, keys, rank, eps, step) -> (still robust, x_adv), each with a
  leading device axis (`keys`: one per point, see `point_keys`). `pmap`ped, or with `host`
  each device's shard from Python, one after the other, so that the attack's loop runs from
  Python too (fast on CPU, see `attacks.loop`). Not in threads: two threads driving JAX at
  once here aborted the process now and then (XLA:CPU, jax 0.10.2)."""
  # `rng` feeds a randomized model's "noise" stream (EOT attacks); others ignore it.
  apply = lambda variables, v, rng=None: model.apply(variables, v, rngs=None if rng is None
                                                     else {"noise": rng})

  def run(variables, x, y, robust, keys, rank, eps, step):
    logits_fn = jax.tree_util.Partial(apply, variables)
    x_adv = stage(logits_fn, x, y, keys, rank, eps, step)
    return loop.call(_still_robust, logits_fn, x, y, robust, x_adv)

  if not host:
    return jax.pmap(run, axis_name=parallel.AXIS)

  def run_shards(*args):
    devices = jax.local_devices()
    args = jax.tree_util.tree_map(np.asarray, args)

    def shard(d):  # on its own device, as the pmapped program would
      return run(*jax.device_put(jax.tree_util.tree_map(lambda a: a[d], args), devices[d]))
    outs = [shard(d) for d in range(len(args[1]))]
    return tuple(np.stack([np.asarray(o[k]) for o in outs]) for k in range(2))
  return run_shards


def point_keys(key: jax.Array, index: np.ndarray) -> np.ndarray:
  """(N, 2): the key of each point, from its index among this host's evaluated points (on
  several hosts, and the host's index): a point is attacked the same in any chunk, batch
  size or company, and as `run_autoattack` attacks it."""
  if jax.process_count() > 1:
    key = jax.random.fold_in(key, jax.process_index())
  return np.asarray(attack_keys.of_points(key, index))


def host_loops() -> bool:
  """Whether the report runs AutoAttack's stages from Python (CPU) or pmapped."""
  return loop.host_driven()


def _prediction_and_margin(logits, y):
  """argmax, and the true class's logit minus the largest other (< 0: misclassified)."""
  return jnp.argmax(logits, -1), -pgd_lib.margin_loss(logits, y)


def _pmapped_clean(model):
  def run(variables, x, y):
    logits = model.apply(variables, x)
    grad = jax.grad(lambda v: jnp.sum(pgd_lib.ce_loss(model.apply(variables, v), y)))(x)
    g = grad.reshape(grad.shape[0], -1)
    bad_grad = jnp.all(g == 0, axis=1) | ~jnp.all(jnp.isfinite(g), axis=1)
    return (*_prediction_and_margin(logits, y), bad_grad)
  return jax.pmap(run, axis_name=parallel.AXIS)


def _pmapped_margins(model):
  return jax.pmap(lambda variables, x, y: _prediction_and_margin(model.apply(variables, x), y),
                  axis_name=parallel.AXIS)


def _perturbation(x_adv, x, norm):
  d = (x_adv - x).reshape(x.shape[0], -1)
  return np.abs(d).max(1) if norm == "linf" else np.linalg.norm(d, axis=1)


def _violations(x_adv, x, eps, norm, tol=1e-5):
  flat = x_adv.reshape(x.shape[0], -1)
  return int(np.sum((_perturbation(x_adv, x, norm) > eps + tol) | (flat.min(1) < -tol)
                    | (flat.max(1) > 1 + tol) | ~np.all(np.isfinite(flat), axis=1)))


def _agreed_count(n: int) -> int:
  """The largest `n` over all hosts: every host must make the same number of pmap calls."""
  if jax.process_count() == 1:
    return n
  return int(np.max(multihost_utils.process_allgather(np.asarray(n))))


def _all_hosts_have(found: bool) -> bool:
  """Whether every host found its part of a chunk in its journal: a chunk is replayed only
  where all have it (every host must make the same pmap calls)."""
  if jax.process_count() == 1:
    return found
  return bool(np.all(multihost_utils.process_allgather(np.asarray(found))))


def _padded_size(n: int, batch: int, multiple: int) -> int:
  """`batch`, or for a smaller remainder the next power of two (a multiple of `multiple`):
  few shapes to compile, little padding to attack."""
  size = multiple
  while size < n:
    size *= 2
  return min(size, batch)


def _compact_batches(robust: np.ndarray, batch: int, multiple: int = 1):
  """Index batches over the still-robust points only, as AutoAttack runs each stage: a
  stage costs what is left to attack, not the whole split. Each batch is padded (see
  `_padded_size`) and comes with the mask of its real entries."""
  idx = np.flatnonzero(robust)
  for i in range(_agreed_count(-(-len(idx) // batch))):
    sel = idx[i * batch:(i + 1) * batch]
    size = _padded_size(_agreed_count(len(sel)), batch, multiple)
    valid = np.zeros((size,), bool)
    valid[:len(sel)] = True
    yield sel, np.concatenate([sel, np.zeros((size - len(sel),), sel.dtype)]), valid


def _compiled(programs: Optional[Dict], key, build: Callable):
  """The pmapped program for `key`, built once per `programs` dict (an eps sweep shares one:
  the same program, and so the same compilation, serves every eps)."""
  if programs is None:
    return build()
  if key not in programs:
    programs[key] = build()
  return programs[key]


def report_on_split(model, variables, data_cfg, eval_cfg, *, eps: float = None,
                    seed: int = 0, verbose: bool = True, programs: Optional[Dict] = None,
                    journal=None) -> Dict[str, Any]:
  """Clean and robust accuracy for each attack in `eval_cfg.attacks` over the eval split."""
  batches = list(input_pipeline.eval_batches(data_cfg, eval_cfg.batch_size,
                                             eval_cfg.get("num_examples")))
  flat = lambda v: v.reshape((-1,) + v.shape[2:])
  return report_on_arrays(model, variables, np.concatenate([flat(b["image"]) for b in batches]),
                          np.concatenate([flat(b["label"]) for b in batches]), eval_cfg,
                          real=np.concatenate([flat(b["mask"]) for b in batches]) > 0,
                          eps=eps, seed=seed, verbose=verbose, programs=programs,
                          journal=journal)


def report_on_arrays(model, variables, images: np.ndarray, labels: np.ndarray, eval_cfg, *,
                     real: np.ndarray = None, eps: float = None, seed: int = 0,
                     verbose: bool = True, programs: Optional[Dict] = None,
                     journal=None, key: Optional[jax.Array] = None,
                     stage_settings: Optional[Mapping[str, Mapping[str, Any]]] = None,
                     return_points: bool = False) -> Dict[str, Any]:
  """The report over in-memory examples (NHWC in [0, 1]); `real` masks padding entries.
  `model` is a Flax model or any logits function (see `FunctionModel`); `journal` (see
  `evaluation.journal`) commits each chunk of points and replays what an earlier run did.
  `key` replaces `PRNGKey(seed)`; `stage_settings` overrides AutoAttack stages' settings
  (`{"square": {"n_queries": 1000}}`); with `return_points`, each attack's per-example
  entry has the returned points (`x_adv`). Bad images, labels or a model that cannot take
  them are one ConfigError (see `inputs`), before any work."""
  if not hasattr(model, "apply"):
    model, variables = FunctionModel(model), variables or {}
  images = inputs.images(images)
  labels = inputs.labels(labels, len(images))
  real = np.ones(len(labels), bool) if real is None else np.asarray(real, bool)
  num_classes = inputs.output_classes(lambda v: model.apply(variables, v), images)
  inputs.within_classes(labels[real], num_classes)
  eps = eval_cfg.pgd.eps if eps is None else eps
  attacks = registry.parse_attacks(eval_cfg.attacks, eval_cfg.autoattack_version)
  batch = input_pipeline.local_batch_size(eval_cfg.batch_size)
  n_dev = jax.local_device_count()  # a batch beyond the examples would be only padding
  batch = min(batch, -(-_agreed_count(len(labels)) // n_dev) * n_dev)
  pad = -len(labels) % batch
  data = _Split(np.concatenate([np.asarray(images, np.float32),
                                np.zeros((pad,) + np.shape(images)[1:], np.float32)]),
                np.concatenate([np.asarray(labels, np.int32), np.zeros((pad,), np.int32)]),
                np.concatenate([real, np.zeros((pad,), bool)]), batch)
  all_stages = [st for _, stages in attacks for st in stages if st != "clean"]
  notes = sanity.check_classes(all_stages, num_classes)  # before any work
  key = jax.random.PRNGKey(seed) if key is None else key
  stage_settings = {k: tuple(sorted(dict(v).items())) for k, v in (stage_settings or {}).items()}
  p_vars = parallel.replicate(variables)
  report, clean = _clean_pass(model, p_vars, data, programs, journal)
  report.update(eps=eps, norm=eval_cfg.pgd.norm,
                settings=attack_settings(eval_cfg, attacks, eps, seed, key, stage_settings))
  randomized_attacks = any(st.endswith("-eot") for st in all_stages)
  flags, randomized = _model_flags(model, variables, images, randomized_attacks)
  report["warnings"] += notes + flags
  examples = {"index": np.flatnonzero(real), "label": np.asarray(labels)[real],
              "clean_prediction": clean["prediction"][data.real],
              "clean_margin": clean["margin"][data.real], "attacks": {}}
  margins = _compiled(programs, "margins", lambda: _pmapped_margins(model))
  for name, stages in attacks:
    if name == "clean":
      continue
    t0 = time.perf_counter()
    robust = clean["correct"].copy()
    outcome = _Outcome(data, robust)
    per_stage = {}
    for j, stage_name in enumerate(stages):
      _attack_pass(model, p_vars, data, robust, stage_name, eval_cfg.pgd, eps, num_classes,
                   jax.random.fold_in(key, j), programs,
                   settings=stage_settings.get(stage_name, ()),
                   label=name if len(stages) == 1 else f"{name}:{stage_name}", verbose=verbose,
                   as_original=bool(eval_cfg.get("apgd_as_original", False)),
                   outcome=outcome, stage_index=j, journal=journal, journal_key=f"{name}.{j}")
      per_stage[stage_name] = float(robust.sum()) / data.count
    acc = float(robust.sum()) / data.count
    result = {"robust_accuracy": acc}
    if len(stages) > 1:
      result["after_each_stage"] = per_stage
    per_example = outcome.verify(margins, p_vars, robust, eval_cfg.pgd.norm, name,
                                 strict=not (randomized or randomized_attacks))
    if per_example["disagree"]:
      report["warnings"].append(
          f"{name}: evaluated again, {per_example['disagree']} returned points disagree with "
          "the attack's flags, as expected of a randomised model")
    result["max_perturbation"] = float(per_example["perturbation"].max(initial=0.0))
    result["ties"] = int(per_example.pop("ties"))
    per_example.pop("disagree")
    examples["attacks"][name] = {
        "broken_by": [("clean" if c == CLEAN_MISCLASSIFIED else "" if c == ROBUST
                       else stages[c]) for c in per_example["code"]],
        "margin": per_example["margin"], "perturbation": per_example["perturbation"]}
    if return_points:
      examples["attacks"][name]["x_adv"] = outcome.x_adv[data.real]
    report["attacks"][name] = result
    report["seconds"][name] = time.perf_counter() - t0
    if acc > report["clean_accuracy"] + 1e-9:
      report["warnings"].append(f"{name}: robust accuracy {acc:.4f} above clean "
                                f"{report['clean_accuracy']:.4f}: the attack or the model is broken")
    flag = sanity.square_succeeds(per_stage)
    if flag:
      report["warnings"].append(f"{name}: {flag}")
  report["examples"] = examples
  return report


def _model_flags(model, variables, images, randomized_attacks: bool
                 ) -> Tuple[List[str], bool]:
  """The flags read off the model's outputs on a few inputs (probabilities instead of
  logits, outputs that change between passes or, for the `rand` stages, that do not), and
  whether the model is randomised."""
  x = np.asarray(images[:16], np.float32)
  draws = [np.asarray(model.apply(variables, x, rngs={"noise": jax.random.PRNGKey(k)}))
           for k in range(3)]
  randomized = sanity.randomized(draws, deterministic_attacks=not randomized_attacks)
  flags = [sanity.probabilities(draws[0]), randomized]
  if randomized_attacks and np.array_equal(draws[0], draws[1]):
    flags.append("the model is deterministic: the EOT attacks of AutoAttack's `rand` version "
                 "only cost more here; use `standard`")
  return [f for f in flags if f], randomized is not None


def attack_settings(eval_cfg, attacks, eps: float, seed: int, key: Optional[jax.Array] = None,
                    stage_settings: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
  """What decides the numbers, as the report records it: the seed and its PRNG key, eps,
  norm, every attack's stages with their settings, and the package versions."""
  key = jax.random.PRNGKey(seed) if key is None else key
  stages = {}
  for _, names in attacks:
    for stage in names:
      if stage in autoattack.STAGES:
        keywords = dict(getattr(autoattack.STAGES[stage], "keywords", {}))
        if stage.endswith("-eot"):
          keywords["eot_iter"] = autoattack.EOT_ITER
        keywords.update(dict((stage_settings or {}).get(stage, ())))
        stages[stage] = {k: v for k, v in keywords.items()
                         if isinstance(v, (int, float, str, bool))}
      elif stage != "clean":
        stages[stage] = {"step_size": float(eval_cfg.pgd.step_size * eps / eval_cfg.pgd.eps),
                         "restarts": int(eval_cfg.pgd.get("restarts", 1))}

  def version(package):
    try:
      return metadata.version(package)
    except metadata.PackageNotFoundError:
      return None
  return {"seed": seed, "prng_key": [int(v) for v in np.asarray(key)],
          "eps": float(eps), "norm": eval_cfg.pgd.norm, "attacks": eval_cfg.attacks,
          "autoattack_version": eval_cfg.autoattack_version,
          "apgd_as_original": bool(eval_cfg.get("apgd_as_original", False)),
          "batch_size": int(eval_cfg.batch_size), "stages": stages,
          "versions": {p: version(p) for p in ("mixacm_jax", "jax", "jaxlib", "flax", "numpy")}}


class _Split:
  """Padded examples (a multiple of the local batch), the mask of real ones, and the
  reshapes between flat batches and the device axis."""

  def __init__(self, images, labels, real, batch):
    self.images, self.labels, self.real, self.batch = images, labels, real, batch
    self.count = float(real.sum())
    self.n_dev = jax.local_device_count()

  def to_devices(self, v):
    return v.reshape((self.n_dev, -1) + v.shape[1:])

  @staticmethod
  def flat(v):
    return np.asarray(v).reshape((-1,) + v.shape[2:])

  def batches(self):
    for i in range(0, len(self.labels), self.batch):
      yield slice(i, i + self.batch)


class _Outcome:
  """Per example, for one attack: the returned point (the first adversarial point found, the
  clean input where none was) and the stage that broke it."""

  def __init__(self, data: _Split, clean_correct: np.ndarray):
    self.data = data
    self.x_adv = data.images.copy()
    self.code = np.where(clean_correct, ROBUST, CLEAN_MISCLASSIFIED)

  def broken(self, idx: np.ndarray, x_adv: np.ndarray, stage_index: int) -> None:
    self.x_adv[idx] = x_adv
    self.code[idx] = stage_index

  def verify(self, margins, p_vars, robust, norm: str, name: str, strict: bool = True
             ) -> Dict[str, Any]:
    """The model's prediction at every returned point must agree with the attack's flags
    (robust <=> still correctly classified); ties (|margin| < TIE_MARGIN) are counted, and
    so are all disagreements when not `strict` (a randomised model)."""
    d = self.data
    pred, margin = [], []
    for part in d.batches():
      p, m = margins(p_vars, d.to_devices(self.x_adv[part]), d.to_devices(d.labels[part]))
      pred.append(d.flat(p))
      margin.append(d.flat(m))
    pred, margin = np.concatenate(pred), np.concatenate(margin)
    disagree = d.real & ((pred == d.labels) != robust)
    ties = disagree & (np.abs(margin) < TIE_MARGIN)
    wrong = np.flatnonzero(disagree & ~ties)
    if len(wrong) and strict:
      raise AttackConstraintError(
          f"{name}: evaluated again, {len(wrong)} returned points disagree with the attack's "
          f"robust/broken flags (first indices {wrong[:5].tolist()}): the model is not "
          "deterministic, or the attack's bookkeeping is wrong")
    return {"code": self.code[d.real], "margin": margin[d.real],
            "perturbation": _perturbation(self.x_adv, d.images, norm)[d.real],
            "ties": int(ties.sum()), "disagree": 0 if strict else len(wrong)}


def _clean_pass(model, p_vars, data: _Split, programs, journal=None
                ) -> Tuple[Dict[str, Any], Dict[str, np.ndarray]]:
  """The report's first entries (clean accuracy, the gradient-masking check) and, per
  example, the clean prediction, margin and whether it is correct."""
  clean_fn = _compiled(programs, "clean", lambda: _pmapped_clean(model))
  t0 = time.perf_counter()
  saved = journal.load("clean") if journal else None
  if journal and not _all_hosts_have(saved is not None):
    saved = None
  if saved is None:
    pred, margin, bad = [], [], []
    for part in data.batches():
      p, m, b = clean_fn(p_vars, data.to_devices(data.images[part]),
                         data.to_devices(data.labels[part]))
      pred.append(data.flat(p))
      margin.append(data.flat(m))
      bad.append(data.flat(b))
    saved = {"prediction": np.concatenate(pred), "margin": np.concatenate(margin),
             "bad_gradient": np.concatenate(bad)}
    if journal:
      journal.save("clean", **saved)
  clean = dict(saved, correct=(saved["prediction"] == data.labels) & data.real)
  flag = sanity.zero_gradients(int(np.sum(saved["bad_gradient"] & data.real)), int(data.count))
  return {"num_examples": int(data.count),
          "clean_accuracy": float(clean["correct"].sum()) / data.count, "attacks": {},
          "warnings": [flag] if flag else [],
          "seconds": {"clean": time.perf_counter() - t0}}, clean


def _attack_pass(model, p_vars, data: _Split, robust: np.ndarray, stage_name: str, pgd_cfg,
                 eps: float, num_classes: int, stage_key, programs, *, label: str,
                 verbose: bool, as_original: bool = False, outcome: Optional[_Outcome] = None,
                 stage_index: int = 0, journal=None, journal_key: str = "",
                 settings: Tuple[Tuple[str, Any], ...] = ()) -> None:
  """One stage over the points still `robust` (updated in place); a targeted stage goes
  target by target, each on what is left. Each chunk's result is committed to (or, done
  before, replayed from) the journal."""
  restarts = pgd_cfg.get("restarts", 1)
  host = stage_name in autoattack.STAGES and host_loops()
  stage = _compiled(programs, (stage_name, pgd_cfg.norm, restarts, settings),
                    lambda: _stage_program(model, registry.stage_fn(
                        stage_name, pgd_cfg.norm, restarts, as_original, settings), host))
  step_size = pgd_cfg.step_size * eps / pgd_cfg.eps  # the step scales with eps
  p_eps, p_step = parallel.replicate(np.float32(eps)), parallel.replicate(np.float32(step_size))
  ranks = (autoattack.stage_ranks(stage_name, num_classes, dict(settings))
           if stage_name in autoattack.STAGES else [None])
  for rank in ranks:
    work = list(_compact_batches(robust, data.batch, data.n_dev))
    progress = reporting.Progress(len(work), data.batch, label=label if rank is None
                                  else f"{label} target {rank}")
    p_rank = parallel.replicate(np.int32(rank or 0))
    for i, (sel, padded, valid) in enumerate(work):
      key = f"{journal_key}.{rank}.{i}"
      saved = journal.load(key) if journal else None
      if journal and not _all_hosts_have(saved is not None):
        saved = None
      if saved is not None and not np.array_equal(saved["sel"], sel):
        raise AttackConstraintError(f"evaluation progress {key} was made on other points; "
                                    f"delete {journal.directory} to start again")
      if saved is None:
        x, y = data.images[padded], data.labels[padded]
        still, x_adv = stage(p_vars, data.to_devices(x), data.to_devices(y),
                             data.to_devices(valid),
                             data.to_devices(point_keys(stage_key, padded)), p_rank, p_eps,
                             p_step)
        x_adv = data.flat(x_adv)[:len(sel)]
        bad = _violations(x_adv, x[:len(sel)], eps, pgd_cfg.norm)
        if bad:
          raise AttackConstraintError(f"{stage_name} returned {bad} points outside the "
                                      f"{pgd_cfg.norm} ball of eps={eps} or [0, 1], or not "
                                      "finite")
        still = data.flat(still)[:len(sel)]
        saved = {"sel": sel, "still": still, "x_adv": x_adv[~still]}
        if journal:
          journal.save(key, **saved)
      robust[sel] &= saved["still"]
      if outcome is not None:
        outcome.broken(sel[~saved["still"]], saved["x_adv"], stage_index)
      if verbose and (i + 1 == len(work) or (i + 1) % max(1, len(work) // 10) == 0):
        progress.report(i + 1, {"robust_acc": robust.sum() / data.count})
      if journal and journal.should_stop():
        raise SystemExit(f"SIGTERM: evaluation progress saved in {journal.directory}; run "
                         "the same command to continue")


def run_autoattack(logits_fn: Callable, x, y, key: jax.Array, *, eps: float,
                   norm: str = "linf", version: str = "standard",
                   overrides: Optional[Mapping[str, Mapping[str, Any]]] = None,
                   per_example: bool = False, batch_size: Optional[int] = None,
                   return_flags: bool = False):
  """The whole AutoAttack on arrays, by the report's engine: each stage of `version` runs only
  on the points every earlier stage left correctly classified (a targeted stage target class
  by target class, each on the points still robust), each point with the key of its index,
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
  eval_cfg = cifar10.eval_config(attacks="autoattack", eps=eps, norm=norm, version=version,
                                 batch_size=batch * jax.process_count())
  config_checks.validate_eval(eval_cfg)
  report = report_on_arrays(logits_fn, None, x, y, eval_cfg, key=key, verbose=False,
                            stage_settings=overrides, return_points=True)
  ex = report["examples"]
  table = ex["attacks"]["autoattack"]
  broken_by = np.asarray(table["broken_by"], object)
  stages = autoattack.get_version(version)
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
  step size scales with eps (step / eps as in `eval_cfg.pgd`); eps is a traced argument, so
  every attack compiles once for the whole sweep."""
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
