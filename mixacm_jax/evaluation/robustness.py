"""Robustness report: clean accuracy and each attack's robust accuracy over an eval split,
with AutoAttack's per-stage accuracy, timings and sanity flags (written out by
`robustness_output`).

Attacks are named as in `attacks.registry` (`config.eval.attacks`, comma-separated); eps,
norm and the PGD step size come from `config.eval.pgd`. Each stage runs only on the points
every earlier stage left correct, in compacted batches.
"""
import concurrent.futures
import time
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from mixacm_jax.attacks import autoattack, loop, pgd as pgd_lib, registry
from mixacm_jax.data import input_pipeline
from mixacm_jax.errors import AttackConstraintError
from mixacm_jax.runtime import parallel, reporting


def _still_robust(logits_fn, x, y, robust, x_adv):
  """(robust after the attack, x_adv): entries that were not robust keep x."""
  x_adv = jnp.where(parallel.per_example(robust, x), x_adv, x)
  return robust & (jnp.argmax(logits_fn(x_adv), -1) == y), x_adv


def _stage_program(model, stage: Callable, host: bool):
  """(variables, x, y, robust, key, rank, eps, step) -> (still robust, x_adv), each with a
  leading device axis. `pmap`ped, or with `host` each device's shard from Python in its own
  thread, so that the attack's loop runs from Python too (fast on CPU, see `attacks.loop`)
  and the shards still run at once; both give shard d the key `fold_in(key, d)`."""
  # `rng` feeds a randomized model's "noise" stream (EOT attacks); others ignore it.
  apply = lambda variables, v, rng=None: model.apply(variables, v, rngs=None if rng is None
                                                     else {"noise": rng})

  def run(variables, x, y, robust, key, rank, eps, step, device_index):
    logits_fn = jax.tree_util.Partial(apply, variables)
    x_adv = stage(logits_fn, x, y, jax.random.fold_in(key, device_index), rank, eps, step)
    return loop.call(_still_robust, logits_fn, x, y, robust, x_adv)

  if not host:
    return jax.pmap(lambda *a: run(*a, jax.lax.axis_index(parallel.AXIS)),
                    axis_name=parallel.AXIS)

  def run_shards(*args):
    first, devices = jax.process_index() * jax.local_device_count(), jax.local_devices()

    def shard(d):  # on its own device, so that shards (host devices on CPU) run at once
      return run(*jax.device_put(jax.tree_util.tree_map(lambda a: a[d], args), devices[d]),
                 first + d)
    with concurrent.futures.ThreadPoolExecutor(len(args[1])) as pool:
      outs = list(pool.map(shard, range(len(args[1]))))
    return tuple(np.stack([np.asarray(o[k]) for o in outs]) for k in range(2))
  return run_shards


def host_loops() -> bool:
  """Whether the report runs AutoAttack's stages from Python (CPU) or pmapped."""
  return loop.host_driven()


def _pmapped_clean(model):
  def run(variables, x, y):
    logits = model.apply(variables, x)
    grad = jax.grad(lambda v: jnp.sum(pgd_lib.ce_loss(model.apply(variables, v), y)))(x)
    g = grad.reshape(grad.shape[0], -1)
    bad_grad = jnp.all(g == 0, axis=1) | ~jnp.all(jnp.isfinite(g), axis=1)
    return jnp.argmax(logits, -1) == y, bad_grad
  return jax.pmap(run, axis_name=parallel.AXIS)


def _violations(x_adv, x, eps, norm, tol=1e-5):
  d = (x_adv - x).reshape(x.shape[0], -1)
  size = np.abs(d).max(1) if norm == "linf" else np.linalg.norm(d, axis=1)
  return int(np.sum((size > eps + tol) | (x_adv.reshape(x.shape[0], -1).min(1) < -tol)
                    | (x_adv.reshape(x.shape[0], -1).max(1) > 1 + tol)))


def _agreed_count(n: int) -> int:
  """The largest `n` over all hosts: every host must make the same number of pmap calls."""
  if jax.process_count() == 1:
    return n
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return int(np.max(multihost_utils.process_allgather(np.asarray(n))))


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
                    seed: int = 0, verbose: bool = True,
                    programs: Optional[Dict] = None) -> Dict[str, Any]:
  """Clean and robust accuracy for each attack in `eval_cfg.attacks` over the eval split."""
  batches = list(input_pipeline.eval_batches(data_cfg, eval_cfg.batch_size,
                                             eval_cfg.get("num_examples")))
  flat = lambda v: v.reshape((-1,) + v.shape[2:])
  return report_on_arrays(model, variables, np.concatenate([flat(b["image"]) for b in batches]),
                          np.concatenate([flat(b["label"]) for b in batches]), eval_cfg,
                          real=np.concatenate([flat(b["mask"]) for b in batches]) > 0,
                          eps=eps, seed=seed, verbose=verbose, programs=programs)


def report_on_arrays(model, variables, images: np.ndarray, labels: np.ndarray, eval_cfg, *,
                     real: np.ndarray = None, eps: float = None, seed: int = 0,
                     verbose: bool = True, programs: Optional[Dict] = None) -> Dict[str, Any]:
  """The report over in-memory examples (NHWC in [0, 1]); `real` masks padding entries."""
  eps = eval_cfg.pgd.eps if eps is None else eps
  attacks = registry.parse_attacks(eval_cfg.attacks, eval_cfg.autoattack_version)
  batch = input_pipeline.local_batch_size(eval_cfg.batch_size)
  real = np.ones(len(labels), bool) if real is None else np.asarray(real, bool)
  pad = -len(labels) % batch
  data = _Split(np.concatenate([np.asarray(images, np.float32),
                                np.zeros((pad,) + np.shape(images)[1:], np.float32)]),
                np.concatenate([np.asarray(labels, np.int32), np.zeros((pad,), np.int32)]),
                np.concatenate([real, np.zeros((pad,), bool)]), batch)
  p_vars = parallel.replicate(variables)
  report, clean_correct = _clean_pass(model, p_vars, data, programs)
  report.update(eps=eps, norm=eval_cfg.pgd.norm)
  if any(st.endswith("-eot") for _, stages in attacks for st in stages):
    draw = lambda k: model.apply(variables, images[:16], rngs={"noise": jax.random.PRNGKey(k)})
    if np.array_equal(np.asarray(draw(0)), np.asarray(draw(1))):
      report["warnings"].append("the model is deterministic: the EOT attacks of AutoAttack's "
                                "`rand` version only cost more here; use `standard`")
  num_classes = int(jax.eval_shape(lambda v: model.apply(variables, v), images[:1]).shape[-1])
  for name, stages in attacks:
    if name == "clean":
      continue
    t0 = time.perf_counter()
    robust = clean_correct.copy()
    per_stage = {}
    for j, stage_name in enumerate(stages):
      _attack_pass(model, p_vars, data, robust, stage_name, eval_cfg.pgd, eps, num_classes,
                   jax.random.fold_in(jax.random.PRNGKey(seed), j), programs,
                   label=name if len(stages) == 1 else f"{name}:{stage_name}", verbose=verbose,
                   as_original=bool(eval_cfg.get("apgd_as_original", False)))
      per_stage[stage_name] = float(robust.sum()) / data.count
    acc = float(robust.sum()) / data.count
    report["attacks"][name] = {"robust_accuracy": acc}
    if len(stages) > 1:
      report["attacks"][name]["after_each_stage"] = per_stage
    report["seconds"][name] = time.perf_counter() - t0
    if acc > report["clean_accuracy"] + 1e-9:
      report["warnings"].append(f"{name}: robust accuracy {acc:.4f} above clean "
                                f"{report['clean_accuracy']:.4f}: the attack or the model is broken")
  return report


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


def _clean_pass(model, p_vars, data: _Split, programs) -> Tuple[Dict[str, Any], np.ndarray]:
  """The report's first entries (clean accuracy, the gradient-masking check) and which
  examples are classified correctly."""
  clean_fn = _compiled(programs, "clean", lambda: _pmapped_clean(model))
  t0 = time.perf_counter()
  clean_correct, bad_grads = [], 0
  for i in range(0, len(data.labels), data.batch):
    part = slice(i, i + data.batch)
    correct, bad = clean_fn(p_vars, data.to_devices(data.images[part]),
                            data.to_devices(data.labels[part]))
    clean_correct.append(data.flat(correct) & data.real[part])
    bad_grads += int(np.sum(data.flat(bad) & data.real[part]))
  clean_correct = np.concatenate(clean_correct)
  warnings = []
  if bad_grads > 0.1 * data.count:
    warnings.append(f"{bad_grads} of {int(data.count)} inputs have an all-zero or "
                    "non-finite input gradient: gradient masking is likely, so "
                    "gradient attacks may overestimate robustness (check Square)")
  return {"num_examples": int(data.count),
          "clean_accuracy": float(clean_correct.sum()) / data.count, "attacks": {},
          "warnings": warnings, "seconds": {"clean": time.perf_counter() - t0}}, clean_correct


def _attack_pass(model, p_vars, data: _Split, robust: np.ndarray, stage_name: str, pgd_cfg,
                 eps: float, num_classes: int, stage_key, programs, *, label: str,
                 verbose: bool, as_original: bool = False) -> None:
  """One stage over the points still `robust` (updated in place); a targeted stage goes
  target by target, each on what is left."""
  restarts = pgd_cfg.get("restarts", 1)
  host = stage_name in autoattack.STAGES and host_loops()
  stage = _compiled(programs, (stage_name, pgd_cfg.norm, restarts),
                    lambda: _stage_program(model, registry.stage_fn(
                        stage_name, pgd_cfg.norm, restarts, as_original), host))
  step_size = pgd_cfg.step_size * eps / pgd_cfg.eps  # the step scales with eps
  p_eps, p_step = parallel.replicate(np.float32(eps)), parallel.replicate(np.float32(step_size))
  ranks = (autoattack.stage_ranks(stage_name, num_classes)
           if stage_name in autoattack.STAGES else [None])
  for rank in ranks:
    work = list(_compact_batches(robust, data.batch, data.n_dev))
    progress = reporting.Progress(len(work), data.batch, label=label if rank is None
                                  else f"{label} target {rank}")
    p_rank = parallel.replicate(np.int32(rank or 0))
    for i, (sel, padded, valid) in enumerate(work):
      key = parallel.replicate(jax.random.fold_in(stage_key, i))
      x, y = data.images[padded], data.labels[padded]
      still, x_adv = stage(p_vars, data.to_devices(x), data.to_devices(y),
                           data.to_devices(valid), key, p_rank, p_eps, p_step)
      bad = _violations(data.flat(x_adv)[valid], x[valid], eps, pgd_cfg.norm)
      if bad:
        raise AttackConstraintError(f"{stage_name} returned {bad} points outside the "
                                    f"{pgd_cfg.norm} ball of eps={eps} or [0, 1]")
      robust[sel] &= data.flat(still)[:len(sel)]
      if verbose and (i + 1 == len(work) or (i + 1) % max(1, len(work) // 10) == 0):
        progress.report(i + 1, {"robust_acc": robust.sum() / data.count})


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
