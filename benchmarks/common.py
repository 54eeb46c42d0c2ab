"""The benchmarks' shared harness: device choice, timing, train steps of any objective,
FLOP counts from XLA's cost analysis of the lowered HLO and the measured matmul peak.

Every benchmark prints its command line, machine and the figures; nothing here asserts a
speed (a benchmark is not a test)."""
import contextlib
import os
import platform
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from mixacm_jax import models, objectives  # noqa: E402
from mixacm_jax.configs import cifar, default  # noqa: E402
from mixacm_jax.runtime import parallel, xla_cpu  # noqa: E402
from mixacm_jax.training import train  # noqa: E402
from mixacm_jax.training.teacher import Teacher  # noqa: E402


def add_device_flags(parser):
  parser.add_argument("--device", default="cpu", choices=["cpu", "gpu"],
                      help="gpu: run our side on the GPU with --dtype compute")
  parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16"],
                      help="compute dtype (default: float32 on CPU, bfloat16 on GPU)")
  parser.add_argument("--host_devices", type=int, default=1,
                      help="CPU only: split the batch over this many host devices (XLA:CPU "
                           "runs one convolution on one core; devices run at once)")


def setup_device(args):
  """Picks the backend before any computation; returns the compute dtype name."""
  jax.config.update("jax_platforms", "cuda" if args.device == "gpu" else "cpu")
  if args.device == "cpu" and getattr(args, "host_devices", 1) > 1:
    jax.config.update("jax_num_cpu_devices", args.host_devices)
  try:
    jax.devices()
  except (RuntimeError, AssertionError) as e:
    raise SystemExit(f"--device={args.device}: no such device is visible to JAX here ({e})")
  return args.dtype or ("bfloat16" if args.device == "gpu" else "float32")


def processor() -> str:
  """The CPU's model and its widest vector ISA, e.g. 'AMD EPYC (AVX2)', with XLA's ISA cap if
  one is set (XLA then generates code as for a machine that has no more)."""
  model, cpu_flags = platform.processor() or platform.machine(), set()
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          model = line.split(":", 1)[1].strip()
        elif line.startswith("flags"):
          cpu_flags = set(line.split(":", 1)[1].split())
  except OSError:
    pass
  isa = next((name for flag, name in (("amx_tile", "AVX-512 + AMX"), ("avx512f", "AVX-512"),
                                      ("avx2", "AVX2"), ("avx", "AVX")) if flag in cpu_flags),
             "no AVX")
  cap = os.environ.get("XLA_FLAGS", "").partition("--xla_cpu_max_isa=")[2].split(" ")[0]
  return f"{model} ({isa}{f', XLA capped at {cap}' if cap else ''})"


def isa_caps() -> str:
  """PyTorch's ISA caps set in the environment (oneDNN's ONEDNN_MAX_CPU_ISA, ATen's
  ATEN_CPU_CAPABILITY); XLA's --xla_cpu_max_isa is part of `processor()`."""
  caps = [f"{name} capped at {os.environ[var]}" for name, var in
          (("oneDNN", "ONEDNN_MAX_CPU_ISA"), ("ATen", "ATEN_CPU_CAPABILITY"))
          if os.environ.get(var)]
  return "".join(f", {c}" for c in caps)


def describe_machine() -> str:
  d = jax.devices()[0]
  backend = (f", convolutions in {xla_cpu.convolution_backend()}"
             if jax.default_backend() == "cpu" else "")
  return (f"{platform.node() or 'host'}: {d.device_kind} x{jax.device_count()} "
          f"({jax.default_backend()}), {processor()}{isa_caps()}, {os.cpu_count()} CPU "
          f"cores, jax {jax.__version__}{backend}")


def timed(fn, repeats: int):
  """(median, min, max) seconds of `repeats` calls to `fn` (which must block)."""
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return statistics.median(times), min(times), max(times)


def step_config(student: str, student_kwargs, teacher: str, teacher_kwargs, objective: str,
                dtype: str, attack_steps: int = 10):
  """A CIFAR-10 MixACM config with the given models and objective (training attack for
  PGD-AT / TRADES: `attack_steps` steps of 2/255 at eps 8/255, as in the papers)."""
  stages = (cifar.WRN_TO_RESNET_STAGES if teacher.startswith("wrn") else
            ("stem", "stage1", "stage2", "stage3", "stage4"))
  config = cifar.mixacm_config(student, teacher, stages)
  config.model.kwargs = dict(student_kwargs)
  config.model.dtype = dtype
  config.teacher.model.kwargs = dict(teacher_kwargs)
  config.teacher.model.dtype = dtype
  config.objective.name = objective
  for method in default.ADVERSARIAL_METHODS:  # cifar10_common: 2/255 steps, eps 8/255
    config.objective[method].attack.steps = attack_steps
  return config


def build_train_step(config, batch: int, n_devices: int = None, image_shape=(32, 32, 3),
                     num_classes: int = 10, seed: int = 0):
  """The project's pmapped train step of `config.objective` on `n_devices`, with random
  weights and a random global batch; returns (run_step() -> blocks, p_step, args)."""
  devices = jax.devices()[:n_devices] if n_devices else jax.devices()
  objective = objectives.get_objective(config.objective.name)
  model = models.create_model_from_config(config.model, num_classes)
  teacher = None
  if objective.needs_teacher:
    t_model = models.create_model_from_config(config.teacher.model, num_classes)
    teacher = Teacher(t_model, models.init_variables(t_model, jax.random.PRNGKey(seed + 1),
                                                     image_shape), "random")
  state = train.create_train_state(
      model, image_shape, config.optim, seed=config.seed, steps_per_epoch=100,
      total_steps=10_000, objective_params=train.init_objective_params(
          config.objective, objective, model, teacher, image_shape, seed=config.seed),
      objective_state=train.init_objective_state(config.objective, objective, model,
                                                 image_shape, seed=config.seed))
  extras = {role: teacher.variables for role, _ in objective.extra_teachers}  # MTARD's
  p_step = train.make_p_train_step(
      config.objective, model, objective, teacher and teacher.model, devices=devices,
      total_steps=10_000, extra_teachers={r: teacher.model for r in extras} or None)
  rng = np.random.RandomState(seed)
  n = len(devices)
  if batch % n:
    raise SystemExit(f"batch {batch} does not split over {n} devices")
  images = rng.rand(n, batch // n, *image_shape).astype(np.float32)
  labels = rng.randint(0, num_classes, (n, batch // n)).astype(np.int32)
  p_state = parallel.replicate(state, devices=devices)
  variables = teacher.variables if teacher else {}
  p_teacher = parallel.replicate({"teacher": variables, **extras} if extras else variables,
                                 devices=devices)
  p_batch = jax.pmap(lambda b: b, devices=devices)({"image": images, "label": labels})
  holder = {"state": p_state}

  def run_step():
    # Not donated: the same state is reused, so every timed step does the same work.
    _, metrics = p_step(holder["state"], p_batch, p_teacher)
    jax.block_until_ready(metrics)
  return run_step, p_step, (p_state, p_batch, p_teacher), objective


def hlo_flops(jitted, *args) -> float:
  """FLOPs of one call (per device for pmap) as XLA's cost analysis counts them on the lowered
  HLO, before the backend's passes: after them the GPU's convolutions are cuDNN custom calls,
  which the analysis counts as zero."""
  analysis = jitted.lower(*args).cost_analysis()
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0]
  return float(analysis.get("flops", float("nan"))) if analysis else float("nan")


@contextlib.contextmanager
def exact_float32(torch=None):
  """Full float32 matmuls and convolutions in JAX and (given its module) PyTorch, for the
  benchmarks' correctness checks: on NVIDIA GPUs both frameworks' float32 defaults use
  TensorFloat-32 (10-bit mantissas), which moves logits by ~1e-3. Timing keeps the defaults."""
  saved = None
  if torch is not None:
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
  try:
    with jax.default_matmul_precision("highest"):
      yield
  finally:
    if saved is not None:
      torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def matmul_peak(dtype: str = "float32", n: int = None, repeats: int = 5) -> float:
  """Measured FLOP/s of a large square matmul through JAX on the first device: the
  practical peak the step is compared against."""
  n = n or (8192 if jax.default_backend() != "cpu" else 2048)
  dt = jnp.dtype(dtype)
  a = jax.random.normal(jax.random.PRNGKey(0), (n, n), dt)
  b = jax.random.normal(jax.random.PRNGKey(1), (n, n), dt)
  f = jax.jit(lambda a, b: a @ b)
  jax.block_until_ready(f(a, b))
  med, _, _ = timed(lambda: jax.block_until_ready(f(a, b)), repeats)
  return 2.0 * n ** 3 / med
