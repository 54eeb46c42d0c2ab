"""A convolution whose weight gradient takes the form that is fastest where it runs.

XLA's own weight gradient of a convolution is the fastest form on some CPUs and many times the
slowest on others: on an AVX2-only AMD EPYC, one 32x32 64->64 layer's weight gradient took 2.5 s
against 0.24 s for the same sum written as nine shifted matmuls, while on an AVX-512 machine
XLA's was the fastest (BENCHMARKS.md). So `conv_general_dilated` here (what every model's
`nn.Conv` calls) has a custom VJP: the forward and the input gradient are XLA's, and the weight
gradient is one of

  `xla`      XLA's own (the transpose of the forward),
  `shifted`  one matmul per kernel tap: sum over (n, h, w) of x[shifted view] (x) g,
  `im2col`   the taps' views concatenated into patches, then one matmul,

chosen per shape by `MIXACM_CONV_BACKWARD`: `auto` (the default) times the three once on the
running machine, the first time a shape is traced, and keeps the fastest in a small cache file
(`~/.cache/mixacm_jax/conv_backward.json`, or `$MIXACM_JAX_CACHE`) keyed by processor, JAX
version and shape; a candidate must beat XLA's by 10 % to be chosen. Feature maps below 16x16
keep XLA's form without a measurement: there the forms were within ~20 % of each other on
cheap layers, and the 8x8 digits runs stay exactly as they were. On GPU/TPU `auto` always means
`xla`. `MIXACM_CONV_BACKWARD=xla` (or `shifted`, `im2col`) forces one form everywhere.
All three compute the same sum (tests: equal to XLA's within 1e-5).
"""
import concurrent.futures
import functools
import json
import os
import platform
import threading
import time
from typing import Dict

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

FORMS = ("xla", "shifted", "im2col")
ENV = "MIXACM_CONV_BACKWARD"
_NHWC = lax.ConvDimensionNumbers(lhs_spec=(0, 3, 1, 2), rhs_spec=(3, 2, 0, 1),
                                 out_spec=(0, 3, 1, 2))
_MARGIN = 0.9  # a candidate must take < 90 % of XLA's time to replace it
MIN_SIDE = 16  # smaller feature maps keep XLA's form (see the module doc)
_choices: Dict[str, str] = {}
_lock = threading.Lock()


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                         batch_group_count=1, precision=None, preferred_element_type=None):
  """`lax.conv_general_dilated` (same arguments), with the weight gradient of `backward_form`
  for the plain case (NHWC / HWIO, no dilation, no groups, explicit padding)."""
  plain = (lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers) == _NHWC
           and not any(d != 1 for d in (lhs_dilation or ()) + (rhs_dilation or ()))
           and feature_group_count == 1 and batch_group_count == 1
           and not isinstance(padding, str) and preferred_element_type is None)
  if not plain:
    return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation,
                                    rhs_dilation, dimension_numbers, feature_group_count,
                                    batch_group_count, precision, preferred_element_type)
  return _conv(lhs, rhs, tuple(window_strides), tuple(tuple(p) for p in padding), precision)


def _xla_conv(x, w, strides, padding, precision=None):
  return lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=_NHWC,
                                  precision=precision)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv(x, w, strides, padding, precision):
  return _xla_conv(x, w, strides, padding, precision)


def _conv_fwd(x, w, strides, padding, precision):
  return _xla_conv(x, w, strides, padding, precision), (x, w)


def _conv_bwd(strides, padding, precision, residuals, g):
  x, w = residuals
  _, input_vjp = jax.vjp(lambda v: _xla_conv(v, w, strides, padding, precision), x)
  form = backward_form(x.shape, w.shape, strides, padding, x.dtype)
  return input_vjp(g)[0], weight_grad(form, x, g, w.shape, strides, padding, precision)


_conv.defvjp(_conv_fwd, _conv_bwd)


def _tap_views(x, kernel_shape, out_hw, strides, padding):
  """For each kernel tap (i, j), the (N, Ho, Wo, C) view of the padded input it reads."""
  xp = jnp.pad(x, ((0, 0), padding[0], padding[1], (0, 0)))
  (kh, kw), (ho, wo), (sh, sw) = kernel_shape, out_hw, strides
  return [lax.slice(xp, (0, i, j, 0), (x.shape[0], i + sh * (ho - 1) + 1,
                                        j + sw * (wo - 1) + 1, x.shape[3]), (1, sh, sw, 1))
          for i in range(kh) for j in range(kw)]


def weight_grad(form: str, x, g, w_shape, strides, padding, precision=None):
  """d loss / d kernel (HWIO) of the convolution, given the output's cotangent `g`."""
  if form == "xla":
    return jax.vjp(lambda k: _xla_conv(x, k, strides, padding, precision),
                   jnp.zeros(w_shape, x.dtype))[1](g)[0]
  kh, kw, c, d = w_shape
  views = _tap_views(x, (kh, kw), g.shape[1:3], strides, padding)
  gm = g.reshape(-1, d)
  matmul = lambda a, b: jnp.matmul(a, b, precision=precision,
                                   preferred_element_type=jnp.float32)
  if form == "shifted":
    taps = [matmul(v.reshape(-1, c).T, gm) for v in views]
    return jnp.stack(taps).reshape(w_shape).astype(x.dtype)
  if form == "im2col":
    patches = jnp.concatenate(views, axis=-1).reshape(-1, kh * kw * c)
    return matmul(patches.T, gm).reshape(w_shape).astype(x.dtype)
  raise ValueError(f"unknown convolution backward form {form!r}; known: {', '.join(FORMS)}")


def _setting() -> str:
  value = os.environ.get(ENV, "auto")
  if value not in FORMS + ("auto",):
    raise ValueError(f"{ENV}={value!r}: expected auto or one of {', '.join(FORMS)}")
  return value


@functools.lru_cache(maxsize=1)
def processor() -> str:
  """The CPU's model and its widest vector ISA, e.g. 'AMD EPYC (AVX2)': what XLA:CPU generates
  code for, and so part of every cached choice's key."""
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
  isa = next((name for flag, name in (("avx512f", "AVX-512"), ("avx2", "AVX2"), ("avx", "AVX"))
              if flag in cpu_flags), "no AVX")
  return f"{model} ({isa})"


def cache_path() -> str:
  root = os.environ.get("MIXACM_JAX_CACHE") or os.path.join(os.path.expanduser("~"), ".cache",
                                                           "mixacm_jax")
  return os.path.join(root, "conv_backward.json")


def _cores() -> int:
  return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def _key(x_shape, w_shape, strides, padding, dtype) -> str:
  return (f"{processor()}|{_cores()} cores|jax {jax.__version__}|x{tuple(x_shape)} "
          f"w{tuple(w_shape)} s{strides} p{padding} {jnp.dtype(dtype).name}")


def backward_form(x_shape, w_shape, strides, padding, dtype) -> str:
  """The weight gradient's form for this shape (see the module doc)."""
  setting = _setting()
  if setting != "auto":
    return setting
  if jax.default_backend() != "cpu" or min(x_shape[1:3]) < MIN_SIDE:
    return "xla"
  key = _key(x_shape, w_shape, strides, padding, dtype)
  with _lock:
    if key not in _choices:
      _choices.update(_read_cache())
    if key not in _choices:
      with _file_lock():  # processes started together measure a shape once, not each
        _choices.update(_read_cache())
        if key not in _choices:
          # Measured in a thread of its own: this runs while a step is being traced, and
          # JAX's trace state is per thread, so there the candidates run eagerly.
          with concurrent.futures.ThreadPoolExecutor(1) as pool:
            timings = pool.submit(measure, x_shape, w_shape, strides, padding, dtype).result()
          _choices[key] = pick(timings)
          _write_cache(key, _choices[key], timings)
    return _choices[key]


class _file_lock:  # pylint: disable=invalid-name
  """An exclusive lock beside the cache file (none where it cannot be made)."""

  def __enter__(self):
    self._f = None
    try:
      import fcntl  # pylint: disable=g-import-not-at-top
      os.makedirs(os.path.dirname(cache_path()), exist_ok=True)
      self._f = open(cache_path() + ".lock", "w")
      fcntl.flock(self._f, fcntl.LOCK_EX)
    except (ImportError, OSError):
      self._f = None
    return self

  def __exit__(self, *_):
    if self._f is not None:
      self._f.close()  # releases the lock


def pick(timings: Dict[str, float]) -> str:
  best = min(timings, key=timings.get)
  return best if timings[best] < _MARGIN * timings["xla"] else "xla"


def measure(x_shape, w_shape, strides, padding, dtype, repeats: int = 3) -> Dict[str, float]:
  """Seconds of each form's weight gradient for this shape (the best of `repeats`)."""
  rng = np.random.RandomState(0)
  x = jnp.asarray(rng.rand(*x_shape), dtype)
  out = jax.eval_shape(lambda: _xla_conv(x, jnp.zeros(w_shape, dtype), strides, padding))
  g = jnp.asarray(rng.rand(*out.shape), dtype)
  timings = {}
  for form in FORMS:
    fn = jax.jit(lambda x, g, form=form: weight_grad(form, x, g, w_shape, strides, padding))
    jax.block_until_ready(fn(x, g))
    best = float("inf")
    for _ in range(repeats):
      t0 = time.perf_counter()
      jax.block_until_ready(fn(x, g))
      best = min(best, time.perf_counter() - t0)
    timings[form] = best
  return timings


def _read_cache() -> Dict[str, str]:
  try:
    with open(cache_path()) as f:
      return {k: v["form"] for k, v in json.load(f).items() if v.get("form") in FORMS}
  except (OSError, ValueError, AttributeError):
    return {}


def _write_cache(key: str, form: str, timings: Dict[str, float]) -> None:
  """Adds one entry; a cache that cannot be written only costs a measurement next time."""
  path = cache_path()
  try:
    try:
      with open(path) as f:
        table = json.load(f)
    except (OSError, ValueError):
      table = {}
    table[key] = {"form": form, "seconds": timings}
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
      json.dump(table, f, indent=1)
    os.replace(tmp, path)  # atomic: concurrent writers never leave half a file
  except OSError:
    pass


def chosen_forms() -> Dict[str, str]:
  """The forms chosen so far in this process (key -> form), e.g. for a benchmark's report."""
  return dict(_choices)


def reset_choices() -> None:
  """Forget the in-process choices (tests); the cache file is left as it is."""
  _choices.clear()
