"""Config checks that run before any work, so a bad value fails in one clear line."""
import difflib
import math
import os
import tempfile

from mixacm_jax import models, objectives
from mixacm_jax.attacks import pgd as pgd_lib, registry, targets
from mixacm_jax.errors import ConfigError

NORMS = pgd_lib.NORMS
# TRADES' and RSLAD's inner maximisation takes signed steps, an L-inf / L2 recipe.
TRAINING_NORMS = ("linf", "l2")
AUTOATTACK_MODES = ("worst_case", "individual")
# The sign of a number, by its key's name, wherever it appears in a config (weights,
# temperatures, counts...): one table instead of a check per objective.
POSITIVE = ("temperature", "p", "learning_rate", "batch_size", "decay_factor", "keep",
            "log_every_steps", "restarts", "peer_temperature")
NON_NEGATIVE = ("seed", "beta", "alpha", "mixup_alpha", "weight_decay", "warmup_epochs",
                "crop_padding", "image_size", "eval_resize", "num_threads", "prefetch",
                "num_examples", "num_steps", "num_epochs", "steps", "every_steps",
                "stage_weights", "decay_epochs", "gamma", "gamma1", "gamma2", "lambda1",
                "lambda2", "lambda3")
READ_AHEAD_LIMIT = 1024  # data.num_threads and data.prefetch: more only exhausts memory
ARCHITECTURE_LIMIT = 10_000  # an architecture's integer field (width, depth, block count)
# Keys that were renamed: a config file or override that uses the old name is told the new.
RENAMED = {"evals": "train_evals", "eval.pgd.eps": "eval.threat.eps",
           "eval.pgd.norm": "eval.threat.norm"}


def renamed(path: str) -> str:
  """The one-line message for a dotted `path` under a renamed key, else ''."""
  for old, new in RENAMED.items():
    if path == old or path.startswith(old + "."):
      return f"config key {path!r} is now {new + path[len(old):]!r}"
  return ""


def check_renamed(config) -> None:
  """A config file that still sets a renamed key (which nothing would read) is refused."""
  for path, _ in leaves(config):
    if renamed(path):
      raise ConfigError(renamed(path))


def unknown_key(config, path: str, flag: str = "") -> str:
  """'' when the dotted `path` names a field of `config`; otherwise why not, in one line,
  with the nearest valid key. `flag`: the command-line argument that named it, if one did."""
  source, dashes = (f" in {flag}", "--") if flag else ("", "")
  if renamed(path):
    return renamed(path) + source
  parts = path.split(".")
  node = config
  for depth, key in enumerate(parts):
    keys = list(node.keys()) if hasattr(node, "keys") else []
    if key not in keys:
      where = ".".join(["config"] + parts[:depth])
      close = difflib.get_close_matches(key, keys, n=1)
      hint = (f"; did you mean {dashes}{where}.{close[0]}?" if close else
              f"; {where} has: {', '.join(sorted(keys))}" if keys else
              f"; {where} is a value, not a section")
      return f"unknown config key {path!r}{source}{hint}"
    node = node[key]
  return ""


def leaves(config, prefix: str = ""):
  """(dotted path, value) of every leaf of a config."""
  for key, value in config.items():
    if hasattr(value, "items"):
      yield from leaves(value, f"{prefix}{key}.")
    else:
      yield f"{prefix}{key}", value


def _numbers(value):
  if isinstance(value, bool):
    return []
  if isinstance(value, (int, float)):
    return [value]
  if isinstance(value, (tuple, list)):
    return [v for v in value if isinstance(v, (int, float)) and not isinstance(v, bool)]
  return []


def check_numbers(config) -> None:
  """Every number of the config is finite, and has the sign its name calls for
  (`POSITIVE`, `NON_NEGATIVE`, weights `w_*` >= 0); the architectures' integer fields
  (widths, depths, block counts) are positive."""
  for path, value in leaves(config):
    key = path.rsplit(".", 1)[-1]
    numbers = _numbers(value)
    if any(not math.isfinite(v) for v in numbers):
      raise ConfigError(f"{path} must be finite, got {value}")
    if key in POSITIVE and any(v <= 0 for v in numbers):
      raise ConfigError(f"{path} must be > 0, got {value}")
    if (key in NON_NEGATIVE or key.startswith("w_")) and any(v < 0 for v in numbers):
      raise ConfigError(f"{path} must be >= 0, got {value}")
    if ".kwargs." in f".{path}" and not path.startswith("convert.") and (
        any(not 0 < v <= ARCHITECTURE_LIMIT for v in numbers if isinstance(v, int))
        or (isinstance(value, tuple) and not value)):
      raise ConfigError(f"{path} must be in [1, {ARCHITECTURE_LIMIT}] (a width, depth or "
                        f"block count), got {value}")
    if key in ("num_threads", "prefetch") and any(v > READ_AHEAD_LIMIT for v in numbers):
      raise ConfigError(f"{path} must be at most {READ_AHEAD_LIMIT}, got {value}")


def _check_threat(where: str, cfg, norms=NORMS) -> None:
  if cfg.norm not in norms:
    raise ConfigError(f"{where}.norm must be one of {norms}, got {cfg.norm!r}")
  if not 0.0 < cfg.eps <= (1.0 if cfg.norm == "linf" else 1e6):
    raise ConfigError(f"{where}.eps must be in (0, 1] for inputs in [0, 1] (L2, L1: finite, "
                      f"> 0), got {cfg.eps}")


def _check_steps(where: str, cfg) -> None:
  if cfg.get("steps", 0) < 0 or not 0 < cfg.step_size < float("inf"):
    raise ConfigError(f"{where}: steps must be >= 0 and step_size > 0, "
                      f"got steps={cfg.get('steps')}, step_size={cfg.step_size}")


def _check_attack(where: str, cfg) -> None:
  """A training attack: its own eps, norm (L-inf or L2), steps and step size."""
  _check_threat(where, cfg, TRAINING_NORMS)
  _check_steps(where, cfg)


def validate_eval(eval_cfg) -> None:
  """The evaluation's settings (eval.threat, eval.pgd, eval.attacks...)."""
  _check_threat("eval.threat", eval_cfg.threat)
  _check_steps("eval.pgd", eval_cfg.pgd)
  if "attacks" in eval_cfg:
    registry.validate_attacks(eval_cfg.attacks, eval_cfg.autoattack_version,
                                eval_cfg.threat.norm)
  target = str(eval_cfg.pgd.get("target", "random"))
  if target not in targets.TARGET_MODES and not target.isdigit():
    raise ConfigError(f"eval.pgd.target must be one of {targets.TARGET_MODES} or a class index, "
                      f"got {target!r}")
  registry.parse_min_norm(eval_cfg.get("min_norm", ""))
  if eval_cfg.get("autoattack_mode", "worst_case") not in AUTOATTACK_MODES:
    raise ConfigError(f"eval.autoattack_mode must be one of {AUTOATTACK_MODES}, got "
                      f"{eval_cfg.autoattack_mode!r}")
  if eval_cfg.batch_size <= 0:
    raise ConfigError(f"eval.batch_size must be positive, got {eval_cfg.batch_size}")
  if eval_cfg.get("num_examples", 0) < 0:
    raise ConfigError(f"eval.num_examples must be >= 0 (0: the whole split), got "
                      f"{eval_cfg.num_examples}")
  for eps in eval_cfg.get("eps_sweep", ()) or ():
    if not (isinstance(eps, (int, float)) and 0.0 < eps <= (
        1.0 if eval_cfg.threat.norm == "linf" else float("inf"))):
      raise ConfigError(f"eval.eps_sweep values must be in (0, 1] for inputs in [0, 1], "
                        f"got {eps!r}")


def validate_train_evals(evals, eval_cfg) -> None:
  """config.train_evals: at least one evaluation (the run's accuracy), each with known attacks and
  counts >= 0."""
  if not evals:
    raise ConfigError("config.train_evals is empty: training needs at least one evaluation (its "
                      "first gives the run's clean and robust accuracy), e.g. "
                      "train_evals.pgd.attacks='clean,pgd10'")
  for name, e in evals.items():
    if set(e.keys()) != {"attacks", "every_steps", "num_examples"}:
      raise ConfigError(f"train_evals.{name} must have exactly attacks, every_steps and "
                        f"num_examples; it has {', '.join(sorted(e.keys()))}")
    registry.validate_attacks(e.attacks, eval_cfg.autoattack_version, eval_cfg.threat.norm)
    if e.every_steps < 0 or e.num_examples < 0:
      raise ConfigError(f"train_evals.{name}: every_steps and num_examples must be >= 0, got "
                        f"{e.every_steps}, {e.num_examples}")


def evaluation_metrics(evals, eval_cfg, ema: bool = False):
  """The names of the metrics the training-time evaluations produce (see
  `train.evaluate_weights`): what `checkpoint.best_metric` may name."""
  names = []
  for i, (name, e) in enumerate(evals.items()):
    attacks = [a for a, _ in registry.parse_attacks(e.attacks, eval_cfg.autoattack_version,
                                                   eval_cfg.threat.norm)
               if a != "clean"]
    if i == 0:
      names += ["clean_accuracy"] + (["robust_accuracy"] if attacks else [])
    names += [f"{name}/clean_accuracy"] + [f"{name}/{a}" for a in attacks]
  return names + [f"ema/{n}" for n in names] if ema else names


def validate_best_metric(config) -> None:
  """checkpoint.best_metric must be a metric the evaluations produce (or '' for none)."""
  best = config.checkpoint.get("best_metric")
  if not best:
    return
  known = evaluation_metrics(config.train_evals, config.eval,
                             bool(config.optim.get("ema", {}).get("decay")))
  if best not in known:
    raise ConfigError(
        f"checkpoint.best_metric {best!r} is not produced by config.train_evals (which give "
        f"{', '.join(known)}): set --config.checkpoint.best_metric to one of them, or to '' "
        "to keep only the latest checkpoints")


def validate_training(config) -> None:
  """`validate`, and what only training reads (checkpoint.best_metric)."""
  validate(config)
  validate_best_metric(config)


def validate(config) -> None:
  """Raises ConfigError on the first value that cannot work."""
  check_renamed(config)
  if config.model.name not in models.MODELS:
    raise ConfigError(f"unknown architecture {config.model.name!r}; known: "
                      f"{', '.join(sorted(models.MODELS))}")
  if config.model.get("dtype", "float32") not in models.DTYPES:
    raise ConfigError(f"model.dtype must be one of {list(models.DTYPES)}, "
                      f"got {config.model.dtype!r}")
  chosen = objectives.get_objective(config.objective.name)
  chosen.settings(config.objective)
  for role, section in chosen.extra_teachers:  # before any work, as for the teacher
    given = config.get(section, {})
    if not (given.get("checkpoint") or given.get("robustbench")):
      raise ConfigError(f"objective {chosen.name} needs {role.replace('_', ' ')}: set "
                        f"--config.{section}.checkpoint=<dir> or "
                        f"--config.{section}.robustbench=<RobustBench entry>")
  for objective in objectives.OBJECTIVES.values():  # every group: a pipeline runs several
    if objective.check_settings and objective.name in config.objective:
      objective.check_settings(config.objective[objective.name])
  for key, group in config.objective.items():
    if hasattr(group, "keys") and "attack" in group:
      _check_attack(f"objective.{key}.attack", group.attack)
  validate_eval(config.eval)
  validate_train_evals(config.train_evals, config.eval)
  o = config.optim
  if o.batch_size <= 0 or config.eval.batch_size <= 0:
    raise ConfigError(f"batch sizes must be positive, got optim.batch_size={o.batch_size}, "
                      f"eval.batch_size={config.eval.batch_size}")
  if not (0 < o.learning_rate < float("inf") and 0 <= o.momentum < 1
          and 0 <= o.weight_decay < float("inf")):
    raise ConfigError("optim needs learning_rate > 0, 0 <= momentum < 1, weight_decay >= 0; got "
                      f"{o.learning_rate}, {o.momentum}, {o.weight_decay}")
  if o.get("num_steps", 0) < 0 or o.num_epochs < 0 or not (
      o.get("num_steps") or o.num_epochs > 0):
    raise ConfigError("set optim.num_epochs > 0 or optim.num_steps > 0 (num_steps > 0 "
                      f"overrides num_epochs); got num_epochs={o.num_epochs}, "
                      f"num_steps={o.get('num_steps')}")
  validate_weight_rules(o)
  for where in ("eval", "teacher", "clean_teacher", "transfer"):
    section = config.get(where, {})
    if section.get("weights", "raw") not in models.WEIGHTS:
      raise ConfigError(f"{where}.weights must be one of {models.WEIGHTS}, got "
                        f"{section.weights!r}")
  if config.checkpoint.every_steps <= 0 or config.checkpoint.keep <= 0:
    raise ConfigError("checkpoint.every_steps and checkpoint.keep must be positive")
  if config.log_every_steps <= 0:
    raise ConfigError("log_every_steps must be positive")
  check_numbers(config)
  if config.data.get("eval_interpolation", "bilinear") not in ("bilinear", "bicubic"):
    raise ConfigError("data.eval_interpolation must be bilinear or bicubic, got "
                      f"{config.data.eval_interpolation!r}")
  if not 0 < config.data.get("crop_scale_min", 1) <= 1:
    raise ConfigError(f"data.crop_scale_min must be in (0, 1], got "
                      f"{config.data.crop_scale_min}")


def validate_weight_rules(optim_cfg) -> None:
  """optim.ema.decay in [0, 1) (awp's gamma and warm-up are in NON_NEGATIVE)."""
  decay = optim_cfg.get("ema", {}).get("decay", 0.0)
  if not 0.0 <= decay < 1.0:
    raise ConfigError(f"optim.ema.decay must be in [0, 1) (0: no moving average), got {decay}")


def check_writable(workdir: str) -> None:
  try:
    os.makedirs(workdir, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=workdir):
      pass
  except OSError as e:
    raise ConfigError(f"workdir {workdir!r} is not writable: {e.strerror or e}") from None

