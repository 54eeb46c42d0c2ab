"""torchvision's model definitions without its compiled operators: the PyTorch references of
the port's proofs, on any torch build.

torchvision's wheels on PyPI are built against the CUDA torch. With the CPU torch this project
pins, `import torchvision` fails: its `_C` extension links the CUDA libraries, so it does not
load, and `torchvision/_meta_registrations.py` then registers kernels for operators that do
not exist ("operator torchvision::nms does not exist"). The model definitions
(`torchvision/models/resnet.py` and the small modules it imports) are pure PyTorch and never
touch those operators. `torchvision_models()` registers the installed `torchvision` and
`torchvision.models` as bare packages (their folders, without running their `__init__`), so
that exactly those files load; `torchvision.models` then offers the model constructors.
Where torchvision imports whole (a CUDA torch, or a CPU wheel of torchvision), the real
package is used as it is.
"""
import importlib
import importlib.machinery
import importlib.util
import os
import sys
import types

from mixacm_jax.errors import ConfigError

# The constructors offered: torchvision's ResNet family (what RobustBench's ImageNet zoo uses).
RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "wide_resnet50_2",
           "wide_resnet101_2", "resnext50_32x4d", "resnext101_32x8d")


def _imports_whole() -> bool:
  try:
    importlib.import_module("torchvision")
    return True
  except (RuntimeError, ImportError, OSError):
    for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
      del sys.modules[name]  # the half-imported package; rebuilt bare below
    return False


def bare_package(name: str, folder: str) -> types.ModuleType:
  """Registers `folder` as the package `name` without running its `__init__`."""
  package = types.ModuleType(name)
  package.__path__ = [folder]
  package.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=True)
  package.__spec__.submodule_search_locations = package.__path__
  sys.modules[name] = package
  return package


def torchvision_models() -> types.ModuleType:
  """`torchvision.models`, whole where torchvision imports, else bare with its ResNets,
  MobileNetV2 and AlexNet."""
  if "torchvision.models" in sys.modules and hasattr(sys.modules["torchvision.models"],
                                                     "resnet50"):
    return sys.modules["torchvision.models"]
  spec = importlib.util.find_spec("torchvision")
  if spec is None or not spec.submodule_search_locations:
    raise ConfigError("torchvision is not installed: pip install --no-deps -r "
                      "requirements-port.txt")
  if _imports_whole():
    return importlib.import_module("torchvision.models")
  root = spec.submodule_search_locations[0]
  package = bare_package("torchvision", root)
  models = bare_package("torchvision.models", os.path.join(root, "models"))
  package.models = models
  resnet = importlib.import_module("torchvision.models.resnet")
  models.resnet = resnet
  for name in RESNETS + ("ResNet", "BasicBlock", "Bottleneck"):
    setattr(models, name, getattr(resnet, name))
  models.mobilenet_v2 = importlib.import_module("torchvision.models.mobilenetv2").mobilenet_v2
  alexnet = importlib.import_module("torchvision.models.alexnet")
  models.alexnet, models.AlexNet = alexnet.alexnet, alexnet.AlexNet
  return models
