"""RobustBench's PyTorch architecture definitions, loaded by path from the installed package.

The package's own `__init__` imports torchvision and timm (not needed here, and without CPU
builds on some machines), while `model_zoo/architectures/*.py` import only torch, so
`pip install --no-deps robustbench` and this loader are enough.
"""
import importlib.util
import os
import sys

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
  # Loaded from its file (robustbench's package __init__ pulls in heavy optional deps) and
  # registered, so tools that re-import a class's module (torch.compile) find it.
  module_name = f"robustbench_arch_{name}"
  if module_name in sys.modules:
    return sys.modules[module_name]
  module_spec = importlib.util.spec_from_file_location(module_name, path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  sys.modules[module_name] = module
  return module


def randomise_batchnorm(net, seed: int = 0):
  """Gives every BatchNorm2d of a PyTorch `net` random, non-trivial running statistics and
  affine parameters (fresh ones are mean 0, var 1, scale 1, shift 0, which would hide a
  mis-ported BatchNorm), and puts it in eval mode. For the port's proofs and benchmarks."""
  import torch  # pylint: disable=g-import-not-at-top
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for m in net.modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        m.running_mean.copy_(0.2 * torch.randn(m.num_features, generator=g))
        m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=g))
        m.weight.copy_(1 + 0.2 * torch.randn(m.num_features, generator=g))
        m.bias.copy_(0.1 * torch.randn(m.num_features, generator=g))
  return net.eval()
