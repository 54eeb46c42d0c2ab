"""XLA:CPU's convolution backend, chosen before JAX starts.

jaxlib 0.10.2's XLA:CPU hands every convolution, dot and reduction to YNNPACK, which runs a
convolution on one thread, with a slow weight gradient. XLA's own (Eigen) convolution splits
it over the cores and measured faster on every pass of every layer (BENCHMARKS.md). So, at
import, `mixacm_jax` takes convolutions out of YNNPACK's list (dots and reductions stay there)
by adding `EIGEN` to `XLA_FLAGS`, and only where that is safe:

- `MIXACM_CPU_CONV` is unset or `eigen` (`ynnpack` keeps jaxlib's default);
- `XLA_FLAGS` does not already name the flag (a user's own setting wins);
- the installed jaxlib is one known to accept the flag (an unknown flag in `XLA_FLAGS` aborts
  the process when a backend starts);
- the run is on CPU: no accelerator plugin is installed, or `JAX_PLATFORMS` is `cpu`;
- no JAX backend has started yet (XLA reads `XLA_FLAGS` once, then).

The attacks' loop programs (`attacks.loop`, driven from Python on CPU, often on a few points)
also leave reductions out of YNNPACK (`loop_compiler_options`, per program): there YNNPACK's
reduction of a model's global pooling, with the ops it fuses, costs about half of a forward
pass on a few points, while training's large reductions are faster in YNNPACK (BENCHMARKS.md
has the figures).

JAX's compilation cache hashes `XLA_FLAGS` and per-program options into its keys, so programs
compiled with either backend never replace each other there.
"""
import importlib.metadata
import os
import sys

from mixacm_jax.errors import ConfigError

ENV = "MIXACM_CPU_CONV"
CHOICES = ("eigen", "ynnpack")
FLAG = "--xla_cpu_experimental_ynn_fusion_type"
EIGEN = f"{FLAG}=-individual_convolution"
KNOWN_JAXLIB = ("0.10.2",)  # versions whose XLA has the flag and its "-" form (checked)
ACCELERATOR_PLUGINS = ("jax-cuda12-plugin", "jax-cuda13-plugin", "jax-rocm60-plugin",
                       "jax-rocm7-plugin", "libtpu", "libtpu-nightly")


def _installed(dist: str) -> str:
  try:
    return importlib.metadata.version(dist)
  except importlib.metadata.PackageNotFoundError:
    return ""


def _backend_started() -> bool:
  bridge = sys.modules.get("jax._src.xla_bridge")
  return bool(bridge is not None and bridge.backends_are_initialized())


def _only_cpu() -> bool:
  platforms = os.environ.get("JAX_PLATFORMS", "").lower()
  if platforms:
    return platforms.split(",") == ["cpu"]
  return not any(_installed(p) for p in ACCELERATOR_PLUGINS)


def choice() -> str:
  """`MIXACM_CPU_CONV`, checked: 'eigen' (the default) or 'ynnpack'."""
  value = os.environ.get(ENV, "eigen").strip().lower() or "eigen"
  if value not in CHOICES:
    raise ConfigError(f"{ENV}={os.environ[ENV]!r}: expected one of {', '.join(CHOICES)} "
                      f"(XLA:CPU's convolution backend)")
  return value


def configure() -> bool:
  """Adds `EIGEN` to `XLA_FLAGS` where the module doc allows it; True if it did. A bad
  `MIXACM_CPU_CONV` changes nothing here and prints one line (the command refuses it)."""
  try:
    wanted = choice()
  except ConfigError as e:
    print(f"mixacm_jax: {e}; jaxlib's default kept", file=sys.stderr)
    return False
  if (wanted != "eigen" or FLAG in os.environ.get("XLA_FLAGS", "")
      or _installed("jaxlib") not in KNOWN_JAXLIB or not _only_cpu() or _backend_started()):
    return False
  os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {EIGEN}".strip()
  return True


def loop_compiler_options() -> dict:
  """Per-program options for the attacks' loop programs: YNNPACK keeps only dots, where this
  module chose Eigen (`EIGEN` in `XLA_FLAGS`, on a known jaxlib); else none."""
  if EIGEN not in os.environ.get("XLA_FLAGS", "").split() or not _only_cpu() or (
      _installed("jaxlib") not in KNOWN_JAXLIB):
    return {}
  return {FLAG.lstrip("-"): "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}


def convolution_backend() -> str:
  """What XLA:CPU runs convolutions on in this process, for a benchmark's machine line."""
  flags = os.environ.get("XLA_FLAGS", "")
  if FLAG not in flags:
    return "YNNPACK (jaxlib's default)"
  value = flags.partition(FLAG + "=")[2].split(" ")[0].lower()
  conv_off = "-individual_convolution" in value or (
      not value.startswith(("+", "-")) and "individual_convolution" not in value)
  return "Eigen (XLA's own)" if conv_off else "YNNPACK"
