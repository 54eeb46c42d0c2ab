"""A bad config file or `--config.*` override as one line on stderr, exit code 2."""
import os
import sys

from mixacm_jax import configs
from mixacm_jax.configs import checks
from mixacm_jax.errors import ConfigError


def fail(message: str):
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.exit(2)


def config_path(argv, default: str) -> str:
  for i, arg in enumerate(argv):
    if arg.startswith("--config="):
      return arg.split("=", 1)[1]
    if arg == "--config" and i + 1 < len(argv):
      return argv[i + 1]
  return default


def check_config_file(argv, default: str) -> None:
  path = config_path(argv, default)
  if not os.path.isfile(configs.split_argument(path)[0]):
    fail(f"config file {path!r} not found")


def _unknown_override(argv, path: str) -> str:
  """Why the first `--config.a.b=` override that names no field of the config is wrong."""
  config = configs.load_config_file(path)
  for arg in argv:
    if arg.startswith("--config."):
      message = checks.unknown_key(config, arg[len("--config."):].split("=", 1)[0], arg)
      if message:
        return message
  return ""


def explain(argv, error: Exception, default: str) -> str:
  path = config_path(argv, default)
  if not os.path.isfile(configs.split_argument(path)[0]):
    return f"config file {path!r} not found"
  try:
    return _unknown_override(argv, path) or f"bad config {path!r}: {error}"
  except ConfigError as inner:  # the file's get_config refused its argument
    return str(inner)
  except Exception as inner:  # pylint: disable=broad-except
    return f"config file {path!r} cannot be loaded: {type(inner).__name__}: {inner}"
