"""Configs as plain Python: the defaults every config builds on (`default`, `cifar10`), their
checks (`checks`), and loading a config file by path as the command line does."""
import importlib.util
import os


def load_config_file(path: str):
  """`get_config()` of the config file at `path` (e.g. configs/default_mixacm.py)."""
  spec = importlib.util.spec_from_file_location(
      "_config_" + os.path.splitext(os.path.basename(path))[0], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()
