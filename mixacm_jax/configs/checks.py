"""Config checks that run before any work, so a bad value fails in one clear line."""
import os
import tempfile

from mixacm_jax import models
from mixacm_jax.errors import ConfigError

NORMS = ("linf", "l2")


def unknown_key(config, path: str, flag: str = "") -> str:
  """'' when the dotted `path` names a field of `config`; otherwise why not, in one line,
  with the nearest valid key. `flag`: the command-line argument that named it, if one did."""
  import difflib  # pylint: disable=g-import-not-at-top
  source, dashes = (f" in {flag}", "--") if flag else ("", "")
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


def _check_attack(where: str, cfg) -> None:
  if cfg.norm not in NORMS:
    raise ConfigError(f"{where}.norm must be one of {NORMS}, got {cfg.norm!r}")
  if not 0.0 < cfg.eps <= (1.0 if cfg.norm == "linf" else float("inf")):
    raise ConfigError(f"{where}.eps must be in (0, 1] for inputs in [0, 1], got {cfg.eps}")
  if cfg.get("steps", 0) < 0 or cfg.step_size <= 0:
    raise ConfigError(f"{where}: steps must be >= 0 and step_size > 0, "
                      f"got steps={cfg.get('steps')}, step_size={cfg.step_size}")


def validate_eval(eval_cfg) -> None:
  """The evaluation's attack settings (eval.pgd, eval.attacks)."""
  _check_attack("eval.pgd", eval_cfg.pgd)
  if "attacks" in eval_cfg:
    from mixacm_jax.attacks import registry  # pylint: disable=g-import-not-at-top
    registry.validate_attacks(eval_cfg.attacks, eval_cfg.autoattack_version,
                                eval_cfg.pgd.norm)
  if eval_cfg.batch_size <= 0:
    raise ConfigError(f"eval.batch_size must be positive, got {eval_cfg.batch_size}")


def validate_evals(evals, eval_cfg) -> None:
  """config.evals: at least one evaluation (the run's accuracy), each with known attacks and
  counts >= 0."""
  from mixacm_jax.attacks import registry  # pylint: disable=g-import-not-at-top
  if not evals:
    raise ConfigError("config.evals is empty: training needs at least one evaluation (its "
                      "first gives the run's clean and robust accuracy), e.g. "
                      "evals.pgd.attacks='clean,pgd10'")
  for name, e in evals.items():
    if set(e.keys()) != {"attacks", "every_steps", "num_examples"}:
      raise ConfigError(f"evals.{name} must have exactly attacks, every_steps and "
                        f"num_examples; it has {', '.join(sorted(e.keys()))}")
    registry.validate_attacks(e.attacks, eval_cfg.autoattack_version, eval_cfg.pgd.norm)
    if e.every_steps < 0 or e.num_examples < 0:
      raise ConfigError(f"evals.{name}: every_steps and num_examples must be >= 0, got "
                        f"{e.every_steps}, {e.num_examples}")


def validate(config) -> None:
  """Raises ConfigError on the first value that cannot work."""
  if config.model.name not in models.MODELS:
    raise ConfigError(f"unknown architecture {config.model.name!r}; known: "
                      f"{', '.join(sorted(models.MODELS))}")
  if config.model.get("dtype", "float32") not in models.DTYPES:
    raise ConfigError(f"model.dtype must be one of {list(models.DTYPES)}, "
                      f"got {config.model.dtype!r}")
  from mixacm_jax import objectives  # pylint: disable=g-import-not-at-top
  objectives.get_objective(config.objective.name).settings(config.objective)
  for key, group in config.objective.items():
    if hasattr(group, "keys") and "attack" in group:
      _check_attack(f"objective.{key}.attack", group.attack)
  validate_eval(config.eval)
  validate_evals(config.evals, config.eval)
  o = config.optim
  if o.batch_size <= 0 or config.eval.batch_size <= 0:
    raise ConfigError(f"batch sizes must be positive, got optim.batch_size={o.batch_size}, "
                      f"eval.batch_size={config.eval.batch_size}")
  if o.learning_rate <= 0 or not 0 <= o.momentum < 1 or o.weight_decay < 0:
    raise ConfigError("optim needs learning_rate > 0, 0 <= momentum < 1, weight_decay >= 0; got "
                      f"{o.learning_rate}, {o.momentum}, {o.weight_decay}")
  if not (o.get("num_steps") or o.num_epochs > 0):
    raise ConfigError("set optim.num_epochs > 0 or optim.num_steps > 0")
  if config.checkpoint.every_steps <= 0 or config.checkpoint.keep <= 0:
    raise ConfigError("checkpoint.every_steps and checkpoint.keep must be positive")
  if config.log_every_steps <= 0:
    raise ConfigError("log_every_steps must be positive")


def check_writable(workdir: str) -> None:
  try:
    os.makedirs(workdir, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=workdir):
      pass
  except OSError as e:
    raise ConfigError(f"workdir {workdir!r} is not writable: {e.strerror or e}") from None

