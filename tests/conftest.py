"""Test set-up: two simulated CPU devices (so pmapped code really runs data-parallel) and
quiet TensorFlow. Must run before JAX is imported anywhere."""
import os
import subprocess
import sys
from typing import Any, Dict, NamedTuple

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=2").strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tempfile  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position

import jax  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position
# Before any backend starts: the package's choice of XLA:CPU's convolution backend.
import mixacm_jax  # noqa: E402,F401  pylint: disable=g-import-not-at-top,wrong-import-position
import pytest  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position

# Many tests compile the same tiny programs; XLA's persistent cache compiles each once, for
# the commands the tests start too (through JAX's own variables, which the command respects).
# Bounded, so that JAX locks it: the two test processes and the threads of one share it, and
# unlocked a reader can find an entry half written. Compiles under 0.1 s (eager operations,
# many of them at once from the attack's threads) are not written. The project's caches stay
# out of the user's home.
_XLA_CACHE = os.path.join(tempfile.gettempdir(), "mixacm_jax_test_xla_cache")
_XLA_CACHE_SETTINGS = {"jax_compilation_cache_dir": _XLA_CACHE,
                       "jax_compilation_cache_max_size": 8 << 30,
                       "jax_persistent_cache_min_compile_time_secs": 0.1,
                       "jax_persistent_cache_min_entry_size_bytes": 0}
for _name, _value in _XLA_CACHE_SETTINGS.items():
  os.environ[_name.upper()] = str(_value)
  jax.config.update(_name, _value)
os.environ.setdefault("MIXACM_JAX_CACHE", os.path.join(tempfile.gettempdir(),
                                                       "mixacm_jax_test_cache"))

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The command's flags for a tiny ResNet (width 4, one block in each of two stages).
TINY_MODEL = ["--config.model.kwargs.base_width=4", "--config.model.kwargs.stage_sizes=(1, 1)"]
# The command's flags for a run of seconds: the tiny ResNet, 4 steps, PGD-2.
TINY = TINY_MODEL + [
    "--config.optim.batch_size=32", "--config.optim.num_steps=4",
    "--config.objective.pgd_at.attack.steps=1", "--config.train_evals.pgd.attacks=clean,pgd2",
    "--config.checkpoint.every_steps=2", "--config.log_every_steps=2"]


def run_command(*args, env_devices=1, extra_env=None, prefix=(), **kwargs):
  """`python run.py *args` in a fresh process on `env_devices` CPU devices (`prefix`: a
  command that runs it, e.g. prlimit)."""
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={env_devices}",
             TF_CPP_MIN_LOG_LEVEL="3", JAX_PLATFORMS="cpu", **(extra_env or {}))
  return subprocess.run([*prefix, sys.executable, os.path.join(ROOT, "run.py"), *args], cwd=ROOT,
                        env=env, capture_output=True, text=True, timeout=600, **kwargs)


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
  """A test process runs many files: without this its compiled programs pile up (one worker
  reached 7 GB, and XLA:CPU's JIT code memory runs out); the persistent cache keeps
  recompiling cheap."""
  yield
  jax.clear_caches()


def repo_config(name: str):
  """`get_config()` of the repository's `configs/<name>.py`, loaded by path as the CLI does."""
  from mixacm_jax import configs  # pylint: disable=g-import-not-at-top
  return configs.load_config_file(os.path.join(ROOT, "configs", f"{name}.py"))


def tiny_model():
  """The tiny ResNet of the tests (4 channels wide, a block per stage, two stages) for the
  embedded 8x8 digits."""
  from mixacm_jax import models  # pylint: disable=g-import-not-at-top
  return models.create_model("resnet18", num_classes=10, base_width=4, stage_sizes=(1, 1))


@pytest.fixture
def tiny_resnet():
  """(model, variables): `tiny_model()` initialised from PRNGKey(0) for 8x8x1 images."""
  from mixacm_jax import models  # pylint: disable=g-import-not-at-top
  model = tiny_model()
  return model, models.init_variables(model, jax.random.PRNGKey(0), (8, 8, 1))


@pytest.fixture
def tiny_config():
  """The default config shrunk to a few seconds of work: tiny ResNet, few steps."""
  from mixacm_jax.configs import default  # pylint: disable=g-import-not-at-top
  config = default.get_config()
  config.model.kwargs.base_width = 4
  config.model.kwargs.stage_sizes = (1, 1)
  config.model.name = "resnet18"
  config.optim.batch_size = 32
  config.optim.num_steps = 6
  config.objective.name = "natural"
  config.eval.batch_size = 64
  config.eval.num_examples = 128
  config.train_evals.pgd.num_examples = 128
  config.train_evals.pgd.attacks = "clean,pgd2"
  config.checkpoint.every_steps = 3
  config.checkpoint.async_save = False
  config.log_every_steps = 3
  return config


def robustbench_architecture(name: str):
  """RobustBench's `model_zoo/architectures/<name>.py` (see tools.robustbench_zoo), or a skip
  that says how to install it."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  from tools import robustbench_zoo  # pylint: disable=g-import-not-at-top
  if importlib.util.find_spec("robustbench") is None:
    pytest.skip("robustbench is not installed (pip install --no-deps -r requirements-port.txt)")
  return robustbench_zoo.architecture_module(name)


class Ported(NamedTuple):
  """A PyTorch network and its Flax port run on the same images (see `port_and_run`)."""
  model: Any
  variables: Any
  ref: Any  # PyTorch's logits
  acts: Dict[str, Any]  # PyTorch's hooked outputs, NHWC, under the Flax model's names
  logits: Any
  sown: Dict[str, Any]


def port_and_run(net, arch: str, kwargs: dict, x, hooks: Dict[str, str],
                 num_classes: int = 10) -> Ported:
  """Runs `net` (eval mode) on `x` (NCHW) recording the outputs of its submodules `hooks`
  (Flax name -> PyTorch module path), ports its state_dict to the registered `arch` with
  `kwargs`, and runs that on the same images, asking for the sown `hooks` names."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  from mixacm_jax import models  # pylint: disable=g-import-not-at-top
  from mixacm_jax.port import convert, state_dict  # pylint: disable=g-import-not-at-top
  acts = {}
  handles = [net.get_submodule(theirs).register_forward_hook(
      lambda m, i, o, ours=ours: acts.__setitem__(ours, o.detach().numpy().transpose(0, 2, 3, 1)
                                                  .copy()))  # before any in-place op on it
             for ours, theirs in hooks.items()]
  with torch.no_grad():
    ref = net(x).numpy()
  for h in handles:
    h.remove()
  state, _ = state_dict.clean_state_dict({k: v.numpy() for k, v in net.state_dict().items()})
  model = models.create_model(arch, num_classes=num_classes, **kwargs)
  variables = convert.torch_to_flax(state, model, tuple(x.shape[2:]) + (3,))
  logits, sown, _ = models.apply_model(model, variables, x.numpy().transpose(0, 2, 3, 1),
                                       train=False, names=list(hooks))
  return Ported(model, variables, ref, acts, np.asarray(logits),
                {k: np.asarray(v) for k, v in sown.items()})


def assert_exports_back(variables, model, net, factory, x, ref) -> None:
  """The Flax `variables` exported to PyTorch give `net`'s state_dict, every tensor under its
  own name and equal, and a fresh `factory()` module that loads it strictly gives `ref` on
  `x` (NCHW)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  from mixacm_jax.port import convert  # pylint: disable=g-import-not-at-top
  exported = convert.flax_to_torch(variables, model)
  theirs = net.state_dict()
  assert set(exported) == set(theirs)
  for key, value in exported.items():
    np.testing.assert_array_equal(value, theirs[key].numpy(), err_msg=key)
  fresh = factory()
  fresh.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in exported.items()})
  with torch.no_grad():
    np.testing.assert_array_equal(fresh.eval()(x).numpy(), ref)


def logits_against_torch(net, arch: str, side: int, num_classes: int = 10, **kwargs):
  """(model, variables, x, ours, reference): the PyTorch module `net` (eval mode) ported to
  the registered `arch` (with `kwargs`, and the mean/std buffers the state_dict holds), both
  run on two random side x side images, `net`'s classifier scaled so that its largest |logit|
  is 20 (a fixed tolerance means something at that scale). x is NHWC."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top

  from mixacm_jax import models  # pylint: disable=g-import-not-at-top
  from mixacm_jax.port import convert, state_dict  # pylint: disable=g-import-not-at-top
  from tools import robustbench_parity  # pylint: disable=g-import-not-at-top
  x = torch.rand(2, 3, side, side, generator=torch.Generator().manual_seed(1))
  robustbench_parity.logits_at_scale(net, x)
  with torch.no_grad():
    reference = net(x).numpy()
  state, norm = state_dict.clean_state_dict({k: v.numpy() for k, v in net.state_dict().items()})
  model = models.create_model(arch, num_classes=num_classes, **norm, **kwargs)
  variables = convert.torch_to_flax(state, model, (side, side, 3))
  x = x.numpy().transpose(0, 2, 3, 1)
  return model, variables, x, np.asarray(model.apply(variables, x)), reference


def distil_from_zoo(config, name: str, model_dir: str, stages, workdir: str):
  """Two MixACM steps on mock CIFAR-10 of a tiny ResNet from RobustBench's `name` by name
  (ACM on `stages`); the run's result."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from mixacm_jax.training import train  # pylint: disable=g-import-not-at-top
  config.data.name = "cifar10"
  config.objective.name = "mixacm"
  config.objective.mixacm.acm.stages = tuple(stages)
  config.model.kwargs.stage_sizes = (1, 1, 1, 1)
  config.teacher.robustbench, config.teacher.model_dir = name, model_dir
  config.optim.batch_size, config.optim.num_steps = 4, 2
  config.train_evals.pgd.attacks, config.train_evals.pgd.num_examples = "clean", 8
  config.checkpoint.best_metric = "clean_accuracy"
  with tfds.testing.mock_data(num_examples=16):
    return train.train_and_evaluate(config, workdir)


@pytest.fixture
def mixacm_config(tiny_config, tmp_path):
  """`tiny_config` with MixACM from a tiny teacher (random, with non-trivial running
  statistics) saved as a checkpoint in tmp_path/teacher."""
  from mixacm_jax import models  # pylint: disable=g-import-not-at-top
  from mixacm_jax.runtime.checkpoint import Checkpointer  # pylint: disable=g-import-not-at-top
  config = tiny_config
  config.objective.name = "mixacm"
  config.objective.mixacm.acm.stages = ("stem", "stage1", "stage2")
  config.teacher.model.kwargs.base_width = 8
  config.teacher.model.kwargs.stage_sizes = (1, 1)
  config.teacher.checkpoint = str(tmp_path / "teacher")
  teacher_model = models.create_model_from_config(config.teacher.model, 10)
  variables = models.init_variables(teacher_model, jax.random.PRNGKey(7), (8, 8, 1))
  # Non-trivial running statistics, so eval mode differs from a fresh BatchNorm.
  variables["batch_stats"] = jax.tree_util.tree_map(
      lambda v: v + 0.1 * jax.random.uniform(jax.random.PRNGKey(8), v.shape),
      variables["batch_stats"])
  ckpt = Checkpointer(config.teacher.checkpoint, async_save=False)
  ckpt.save(1, variables)
  ckpt.close()
  return config
