"""RobustBench's PyTorch architecture definitions, loaded by path from the installed package.

The package's own `__init__` imports torchvision and timm (not needed here, and without CPU
builds on some machines), while `model_zoo/architectures/*.py` import only torch, so
`pip install --no-deps robustbench` and this loader are enough.
"""
import importlib.util
import os

from mixacm_jax.errors import ConfigError


def architecture_module(name: str):
  """e.g. `architecture_module("wide_resnet").WideResNet`."""
  spec = importlib.util.find_spec("robustbench")
  if spec is None:
    raise ConfigError("robustbench is not installed: pip install --no-deps -r "
                      "requirements-port.txt")
  path = os.path.join(spec.submodule_search_locations[0], "model_zoo", "architectures",
                      f"{name}.py")
  if not os.path.isfile(path):
    raise ConfigError(f"robustbench has no architecture file {name}.py")
  module_spec = importlib.util.spec_from_file_location(f"robustbench_arch_{name}", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module
