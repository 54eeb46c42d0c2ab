"""Configs as plain Python: the defaults every config builds on (`default`, `cifar10`), their
checks (`checks`), and loading a config file by path as the command line does."""
import importlib.util
import os


def split_argument(path: str):
  """(file, argument or None) of `file.py:argument`, ml_collections' form for a config file
  whose get_config takes one (e.g. configs/cifar10_distillation.py:adaad)."""
  file, sep, argument = path.rpartition(":")
  if sep and file.endswith(".py"):
    return file, argument
  return path, None


def load_config_file(path: str):
  """`get_config()` of the config file at `path` (e.g. configs/default_mixacm.py), or
  `get_config(argument)` for `file.py:argument`."""
  file, argument = split_argument(path)
  spec = importlib.util.spec_from_file_location(
      "_config_" + os.path.splitext(os.path.basename(file))[0], file)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config() if argument is None else module.get_config(argument)
