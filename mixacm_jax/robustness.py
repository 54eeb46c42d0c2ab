"""Robustness report: clean accuracy and each attack's robust accuracy over an eval split,
with AutoAttack's per-stage accuracy, timings, sanity flags, a JSON report and a plot.

Attack names (`config.eval.attacks`, comma-separated): `clean`, `fgsm`, `pgd<k>` (PGD-k on
cross-entropy), `cw<k>` (PGD-k on the CW margin), `apgd-ce`, `apgd-t`, `square`,
`autoattack` (the stages of `config.eval.autoattack_version`, each on the points the earlier
ones left correct). eps, norm and the PGD step size come from `config.eval.pgd`.
"""
import json
import os
import re
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from mixacm_jax import input_pipeline, parallel, reporting
from mixacm_jax.attacks import autoattack, loop, pgd as pgd_lib
from mixacm_jax.errors import ConfigError, MixACMError


class AttackConstraintError(MixACMError):
  """An attack returned points outside the eps-ball or the [0, 1] box."""


def stage_fn(name: str, norm: str, restarts: int = 1) -> Callable:
  """attack(logits_fn, x, y, key, rank, eps, step_size) -> x_adv for one named attack. eps
  and the PGD step are arguments (traced), so an eps sweep compiles each attack once; `rank`
  (a target class rank, see `autoattack.stage_ranks`) is read by targeted stages only."""
  m = re.fullmatch(r"(pgd|cw)(\d+)", name)
  if m:
    loss = "ce" if m.group(1) == "pgd" else "margin"
    steps = int(m.group(2))
    return lambda f, x, y, k, rank, eps, step: pgd_lib.pgd(
        f, x, y, k, eps=eps, step_size=step, steps=steps, norm=norm, loss=loss,
        restarts=restarts)
  if name == "fgsm":
    return lambda f, x, y, k, rank, eps, step: pgd_lib.fgsm(f, x, y, eps=eps, norm=norm)
  if name in autoattack.STAGES:
    if norm not in ("linf", "l2"):
      raise ConfigError(f"unknown norm {norm!r}; known: linf, l2")
    targeted = autoattack.is_targeted(name)
    return lambda f, x, y, k, rank, eps, step: autoattack.call_stage(
        name, f, x, y, k, rank if targeted else None, eps=eps, norm=norm)[0]
  raise ConfigError(f"unknown attack {name!r}; known: clean, fgsm, pgd<k>, cw<k>, "
                    f"{', '.join(autoattack.STAGES)}, autoattack")


def parse_attacks(spec: str, version: str) -> List[Tuple[str, List[str]]]:
  """[(report name, [stage names])]: `autoattack` expands into its stages."""
  out = []
  for name in [s.strip() for s in spec.split(",") if s.strip()]:
    if name == "autoattack":
      try:
        out.append((name, autoattack.get_version(version)))
      except ValueError as e:
        raise ConfigError(str(e)) from None
    else:
      out.append((name, [name]))
  return out


def validate_attacks(spec: str, version: str, norm: str) -> None:
  """Raises ConfigError for an unknown attack or AutoAttack version (before any work)."""
  parse_attacks("autoattack", version)
  for _, stages in parse_attacks(spec, version):
    for stage in stages:
      if stage != "clean":
        stage_fn(stage, norm)


def _still_robust(logits_fn, x, y, robust, x_adv):
  """(robust after the attack, x_adv): entries that were not robust keep x."""
  x_adv = jnp.where(robust.reshape((-1,) + (1,) * (x.ndim - 1)), x_adv, x)
  return robust & (jnp.argmax(logits_fn(x_adv), -1) == y), x_adv


def _stage_program(model, stage: Callable, host: bool):
  """(variables, x, y, robust, key, rank, eps, step) -> (still robust, x_adv), each with a
  leading device axis. `pmap`ped, or with `host` each device's shard in turn from Python,
  so that the attack's loop runs from Python too (fast on CPU, see `attacks.loop`); both
  give shard d the key `fold_in(key, d)`."""
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
    first = jax.process_index() * jax.local_device_count()
    outs = [run(*jax.tree_util.tree_map(lambda a: a[d], args), first + d)  # pylint: disable=cell-var-from-loop
            for d in range(len(args[1]))]
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


def evaluate_robustness(model, variables, data_cfg, eval_cfg, *, eps: float = None,
                        seed: int = 0, verbose: bool = True,
                        programs: Optional[Dict] = None) -> Dict[str, Any]:
  """Clean and robust accuracy for each attack in `eval_cfg.attacks` over the eval split."""
  batches = list(input_pipeline.eval_batches(data_cfg, eval_cfg.batch_size,
                                             eval_cfg.get("num_examples")))
  flat = lambda v: v.reshape((-1,) + v.shape[2:])
  return evaluate_arrays(model, variables, np.concatenate([flat(b["image"]) for b in batches]),
                         np.concatenate([flat(b["label"]) for b in batches]), eval_cfg,
                         real=np.concatenate([flat(b["mask"]) for b in batches]) > 0,
                         eps=eps, seed=seed, verbose=verbose, programs=programs)


def evaluate_arrays(model, variables, images: np.ndarray, labels: np.ndarray, eval_cfg, *,
                    real: np.ndarray = None, eps: float = None, seed: int = 0,
                    verbose: bool = True, programs: Optional[Dict] = None) -> Dict[str, Any]:
  """The report over in-memory examples (NHWC in [0, 1]); `real` masks padding entries."""
  pgd_cfg = eval_cfg.pgd
  eps = pgd_cfg.eps if eps is None else eps
  attacks = parse_attacks(eval_cfg.attacks, eval_cfg.autoattack_version)
  n_dev, batch = jax.local_device_count(), input_pipeline.local_batch_size(eval_cfg.batch_size)
  real = np.ones(len(labels), bool) if real is None else np.asarray(real, bool)
  pad = -len(labels) % batch
  images = np.concatenate([np.asarray(images, np.float32),
                           np.zeros((pad,) + np.shape(images)[1:], np.float32)])
  labels = np.concatenate([np.asarray(labels, np.int32), np.zeros((pad,), np.int32)])
  real = np.concatenate([real, np.zeros((pad,), bool)])
  flat = lambda v: v.reshape((-1,) + v.shape[2:])
  to_devices = lambda v: v.reshape((n_dev, -1) + v.shape[1:])
  p_vars = parallel.replicate(variables)
  n_total = float(real.sum())
  clean_fn = _compiled(programs, "clean", lambda: _pmapped_clean(model))
  step_size = pgd_cfg.step_size * eps / pgd_cfg.eps  # the step scales with eps
  p_eps, p_step = parallel.replicate(np.float32(eps)), parallel.replicate(np.float32(step_size))
  num_classes = int(jax.eval_shape(lambda v: model.apply(variables, v), images[:1]).shape[-1])
  t0 = time.perf_counter()
  clean_correct, bad_grads = [], 0
  for i in range(0, len(labels), batch):
    correct, bad = clean_fn(p_vars, to_devices(images[i:i + batch]),
                            to_devices(labels[i:i + batch]))
    clean_correct.append(flat(np.asarray(correct)) & real[i:i + batch])
    bad_grads += int(np.sum(flat(np.asarray(bad)) & real[i:i + batch]))
  clean_correct = np.concatenate(clean_correct)
  report = {"num_examples": int(n_total), "eps": eps, "norm": pgd_cfg.norm,
            "clean_accuracy": float(clean_correct.sum()) / n_total,
            "attacks": {}, "warnings": []}
  report["seconds"] = {"clean": time.perf_counter() - t0}
  if any(st.endswith("-eot") for _, stages in attacks for st in stages):
    draw = lambda k: model.apply(variables, images[:16], rngs={"noise": jax.random.PRNGKey(k)})
    if np.array_equal(np.asarray(draw(0)), np.asarray(draw(1))):
      report["warnings"].append("the model is deterministic: the EOT attacks of AutoAttack's "
                                "`rand` version only cost more here; use `standard`")
  for name, stages in attacks:
    if name == "clean":
      continue
    t0 = time.perf_counter()
    robust = clean_correct.copy()
    per_stage = {}
    for j, stage_name in enumerate(stages):
      restarts = pgd_cfg.get("restarts", 1)
      host = stage_name in autoattack.STAGES and host_loops()
      stage = _compiled(programs, (stage_name, pgd_cfg.norm, restarts),
                        lambda: _stage_program(model, stage_fn(stage_name, pgd_cfg.norm,
                                                               restarts), host))
      ranks = (autoattack.stage_ranks(stage_name, num_classes)
               if stage_name in autoattack.STAGES else [None])
      stage_key = jax.random.fold_in(jax.random.PRNGKey(seed), j)
      for rank in ranks:  # a targeted stage: target by target, each on what is left
        work = list(_compact_batches(robust, batch, n_dev))
        label = name if len(stages) == 1 else f"{name}:{stage_name}"
        progress = reporting.Progress(len(work), batch, label=label if rank is None
                                      else f"{label} target {rank}")
        p_rank = parallel.replicate(np.int32(rank or 0))
        for i, (sel, padded, valid) in enumerate(work):
          key = parallel.replicate(jax.random.fold_in(stage_key, i))
          x, y = images[padded], labels[padded]
          still, x_adv = stage(p_vars, to_devices(x), to_devices(y), to_devices(valid), key,
                               p_rank, p_eps, p_step)
          x_adv = flat(np.asarray(x_adv))
          bad = _violations(x_adv[valid], x[valid], eps, pgd_cfg.norm)
          if bad:
            raise AttackConstraintError(f"{stage_name} returned {bad} points outside the "
                                        f"{pgd_cfg.norm} ball of eps={eps} or [0, 1]")
          robust[sel] &= flat(np.asarray(still))[:len(sel)]
          if verbose and (i + 1 == len(work) or (i + 1) % max(1, len(work) // 10) == 0):
            progress.report(i + 1, {"robust_acc": robust.sum() / n_total})
      per_stage[stage_name] = float(robust.sum()) / n_total
    acc = float(robust.sum()) / n_total
    report["attacks"][name] = {"robust_accuracy": acc}
    if len(stages) > 1:
      report["attacks"][name]["after_each_stage"] = per_stage
    report["seconds"][name] = time.perf_counter() - t0
    if acc > report["clean_accuracy"] + 1e-9:
      report["warnings"].append(f"{name}: robust accuracy {acc:.4f} above clean "
                                f"{report['clean_accuracy']:.4f}: the attack or the model is broken")
  if bad_grads > 0.1 * n_total:
    report["warnings"].append(f"{bad_grads} of {int(n_total)} inputs have an all-zero or "
                              "non-finite input gradient: gradient masking is likely, so "
                              "gradient attacks may overestimate robustness (check Square)")
  return report


def eps_sweep(model, variables, data_cfg, eval_cfg, epsilons: Sequence[float],
              seed: int = 0) -> Dict[str, Any]:
  """Robust accuracy of each attack at each eps; flags accuracy that rises with eps. The PGD
  step size scales with eps (step / eps as in `eval_cfg.pgd`); eps is a traced argument, so
  every attack compiles once for the whole sweep."""
  programs = {}
  rows = [evaluate_robustness(model, variables, data_cfg, eval_cfg, eps=e, seed=seed,
                              verbose=False, programs=programs) for e in epsilons]
  warnings = []
  for name in rows[0]["attacks"] if rows else []:
    accs = [r["attacks"][name]["robust_accuracy"] for r in rows]
    for (e0, a0), (e1, a1) in zip(zip(epsilons, accs), zip(epsilons[1:], accs[1:])):
      if a1 > a0 + 1e-9:
        warnings.append(f"{name}: robust accuracy rises from {a0:.4f} at eps={e0:.4g} to "
                        f"{a1:.4f} at eps={e1:.4g}: the attack is failing at the larger eps")
  return {"epsilons": list(epsilons), "reports": rows, "warnings": warnings}


def plot_sweep(sweep: Dict[str, Any], path: str) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(5, 3.5))
  eps = sweep["epsilons"]
  ax.plot(eps, [100 * r["clean_accuracy"] for r in sweep["reports"]], "k--", label="clean")
  for name in sweep["reports"][0]["attacks"]:
    ax.plot(eps, [100 * r["attacks"][name]["robust_accuracy"] for r in sweep["reports"]],
            marker="o", label=name)
  ax.set_xlabel("eps")
  ax.set_ylabel("accuracy (%)")
  ax.legend()
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def report_table(report: Dict[str, Any]) -> str:
  rows = [{"attack": "clean", "accuracy": report["clean_accuracy"],
           "seconds": report["seconds"]["clean"]}]
  for name, r in report["attacks"].items():
    rows.append({"attack": name, "accuracy": r["robust_accuracy"],
                 "seconds": report["seconds"][name]})
    for stage, acc in r.get("after_each_stage", {}).items():
      rows.append({"attack": f"  after {stage}", "accuracy": acc, "seconds": ""})
  return reporting.table(rows, ["attack", "accuracy", "seconds"])


def write_report(report: Dict[str, Any], workdir: str, name: str = "robustness.json") -> str:
  path = os.path.join(workdir, name)
  with open(path, "w") as f:
    json.dump(report, f, indent=2)
  return path


