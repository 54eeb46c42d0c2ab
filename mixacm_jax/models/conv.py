"""A convolution whose forward pass and gradients take the forms fastest where they run.

XLA:CPU's own convolution is the fastest form on some CPUs and far from it on others: on a
2-core AVX2-only AMD EPYC, one 32x32 64->64 layer (batch 64) took 88 ms forward where the
same sum as matmuls over small groups of examples took 47-55 ms, and XLA's weight gradient
1.3-2.5 s where grouped matmuls took 88 ms; on an AVX-512 machine XLA's weight gradient was
the fastest (BENCHMARKS.md). So `conv_general_dilated` here (what every model's `nn.Conv`
calls) computes each pass in one of these forms:

  `xla`           XLA's own convolution (and its transposes for the gradients),
  `rows/<n>`      per kernel row, one matmul of the row's taps side by side (K = kw * C),
  `im2col/<n>`    all taps side by side, one matmul (K = kh * kw * C),

where `<n>` is the number of examples per matmul (a `lax.map` / `lax.scan` over groups of
the batch, so that each group's patches stay in cache); `rows` and `im2col` alone take the
whole batch at once. The input gradient of a stride-1 convolution is a stride-1 convolution
of the output's cotangent with the flipped kernel, so it takes the form chosen for that
forward problem; strided convolutions keep XLA's input gradient.

`MIXACM_CONV` picks the forms: `auto` (the default) times the candidates once on the running
machine, the first time a shape is traced, and keeps the fastest in a small cache file
(`~/.cache/mixacm_jax/conv_forms.json`, or `$MIXACM_JAX_CACHE`) keyed by processor, cores,
JAX version, pass and shape; a candidate must beat XLA's by 10 % to be chosen. Convolutions
of under 0.25 GFLOP keep XLA's forms without a measurement: there a few milliseconds are at
stake, and the embedded digits' models (at most 0.04 GFLOP a convolution) stay exactly as they
were. On GPU/TPU `auto` means `xla`.
`MIXACM_CONV=xla` (or any one form) forces it everywhere. Every form computes the same sums
(tests: equal to XLA's within 1e-5).
"""
import concurrent.futures
import functools
import json
import math
import os
import platform
import threading
import time
from typing import Dict, Tuple

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

CHUNKS = (2, 8)
FORMS = ("xla",) + tuple(f"{kind}{suffix}" for kind in ("rows", "im2col")
                         for suffix in [""] + [f"/{n}" for n in CHUNKS])
PASSES = ("forward", "weight_grad")  # the input gradient reuses the forward's choice
ENV = "MIXACM_CONV"
_OLD_ENV = "MIXACM_CONV_BACKWARD"
_NHWC = lax.ConvDimensionNumbers(lhs_spec=(0, 3, 1, 2), rhs_spec=(3, 2, 0, 1),
                                 out_spec=(0, 3, 1, 2))
_MARGIN = 0.9  # a candidate must take < 90 % of XLA's time to replace it
MIN_FLOPS = 2.5e8  # smaller convolutions keep XLA's forms (see the module doc)
_choices: Dict[str, str] = {}
_lock = threading.Lock()

Padding = Tuple[Tuple[int, int], Tuple[int, int]]


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                         batch_group_count=1, precision=None, preferred_element_type=None):
  """`lax.conv_general_dilated` (same arguments), with the forms of `form_for` for the plain
  case (NHWC / HWIO, no dilation, no groups, explicit padding)."""
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


def _chosen_forward(x, w, strides, padding, precision):
  form = form_for("forward", x.shape, w.shape, strides, padding, x.dtype)
  return forward(form, x, w, strides, padding, precision)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv(x, w, strides, padding, precision):
  return _chosen_forward(x, w, strides, padding, precision)


def _conv_fwd(x, w, strides, padding, precision):
  return _chosen_forward(x, w, strides, padding, precision), (x, w)


def _conv_bwd(strides, padding, precision, residuals, g):
  x, w = residuals
  form = form_for("weight_grad", x.shape, w.shape, strides, padding, x.dtype)
  return (input_grad(x.shape, g, w, strides, padding, precision),
          weight_grad(form, x, g, w.shape, strides, padding, precision))


_conv.defvjp(_conv_fwd, _conv_bwd)


def _parse(form: str) -> Tuple[str, int]:
  """'rows/4' -> ('rows', 4); 'im2col' -> ('im2col', 0): 0 is the whole batch at once."""
  if form not in FORMS:
    raise ValueError(f"unknown convolution form {form!r}; known: {', '.join(FORMS)}")
  kind, _, chunk = form.partition("/")
  return kind, int(chunk or 0)


def _group_size(chunk: int, n: int) -> int:
  return math.gcd(chunk, n) if chunk else n


def _mapped(fn, chunk, *batched):
  """fn over groups of `chunk` examples of the batched arrays, outputs concatenated."""
  n = batched[0].shape[0]
  k = _group_size(chunk, n)
  if k == n:
    return fn(*batched)
  out = lax.map(lambda a: fn(*a), [b.reshape((n // k, k) + b.shape[1:]) for b in batched])
  return out.reshape((n,) + out.shape[2:])


def _summed(fn, chunk, *batched):
  """fn over groups of `chunk` examples of the batched arrays, outputs summed."""
  n = batched[0].shape[0]
  k = _group_size(chunk, n)
  if k == n:
    return fn(*batched)
  groups = [b.reshape((n // k, k) + b.shape[1:]) for b in batched]
  init = jax.eval_shape(lambda *a: fn(*a), *[g[0] for g in groups])
  return lax.scan(lambda acc, a: (acc + fn(*a), None), jnp.zeros(init.shape, init.dtype),
                  groups)[0]


def _kernel_rows(x, kernel_hw, out_hw, strides, padding):
  """For each kernel row i, the (N, Ho, Wo, kw * C) taps (i, 0..kw-1) it reads, side by side
  in HWIO order, so that row i's taps times `w[i].reshape(kw * C, D)` is its contribution."""
  xp = jnp.pad(x, ((0, 0), padding[0], padding[1], (0, 0)))
  n, hp, _, c = xp.shape
  (kh, kw), (ho, wo), (sh, sw) = kernel_hw, out_hw, strides
  cols = [lax.slice(xp, (0, 0, j, 0), (n, hp, j + sw * (wo - 1) + 1, c), (1, 1, sw, 1))
          for j in range(kw)]
  cols = jnp.concatenate(cols, axis=-1) if kw > 1 else cols[0]
  return [lax.slice(cols, (0, i, 0, 0), (n, i + sh * (ho - 1) + 1, wo, kw * c), (1, sh, 1, 1))
          for i in range(kh)]


def _matmul(a, b, precision):
  return jnp.matmul(a, b, precision=precision, preferred_element_type=jnp.float32)


def _out_hw(x_shape, w_shape, strides, padding):
  return tuple((x_shape[1 + a] + sum(padding[a]) - w_shape[a]) // strides[a] + 1 for a in (0, 1))


def forward(form: str, x, w, strides, padding, precision=None):
  """The convolution (NHWC input, HWIO kernel) computed in `form`."""
  if form == "xla":
    return _xla_conv(x, w, strides, padding, precision)
  kind, chunk = _parse(form)
  kh, kw, c, d = w.shape
  out_hw = _out_hw(x.shape, w.shape, strides, padding)

  def group(xg):
    rows = _kernel_rows(xg, (kh, kw), out_hw, strides, padding)
    if kind == "im2col":
      patches = jnp.concatenate(rows, axis=-1) if kh > 1 else rows[0]
      out = _matmul(patches.reshape(-1, kh * kw * c), w.reshape(-1, d), precision)
    else:
      out = sum(_matmul(r.reshape(-1, kw * c), w[i].reshape(kw * c, d), precision)
                for i, r in enumerate(rows))
    return out.reshape(xg.shape[:1] + out_hw + (d,)).astype(x.dtype)
  return _mapped(group, chunk, x)


def flops(x_shape, w_shape, strides, padding) -> float:
  """Multiply-adds times two of the convolution (each of its passes costs the same)."""
  ho, wo = _out_hw(x_shape, w_shape, strides, padding)
  return 2.0 * x_shape[0] * ho * wo * float(np.prod(w_shape))


def _transposable(w_shape, strides, padding) -> bool:
  """Whether the input gradient is a stride-1 convolution with non-negative padding."""
  return strides == (1, 1) and all(0 <= p <= k - 1 for k, side in zip(w_shape[:2], padding)
                                   for p in side)


def input_grad(x_shape, g, w, strides, padding, precision=None):
  """d loss / d input: for stride 1, the convolution of `g` with the flipped, transposed
  kernel in the form `form_for` picks for that forward problem; else XLA's transpose."""
  xla_transpose = lambda: jax.vjp(lambda v: _xla_conv(v, w, strides, padding, precision),
                                 jnp.zeros(x_shape, g.dtype))[1](g)[0]
  if not _transposable(w.shape, strides, padding):
    return xla_transpose()
  kh, kw = w.shape[:2]
  w_t = jnp.flip(w, (0, 1)).transpose(0, 1, 3, 2)
  pad_t = tuple((k - 1 - lo, k - 1 - hi) for k, (lo, hi) in zip((kh, kw), padding))
  form = form_for("forward", g.shape, w_t.shape, (1, 1), pad_t, g.dtype)
  if form == "xla":  # XLA's own transpose, as without this module
    return xla_transpose()
  return forward(form, g, w_t, (1, 1), pad_t, precision)


def weight_grad(form: str, x, g, w_shape, strides, padding, precision=None):
  """d loss / d kernel (HWIO) of the convolution, given the output's cotangent `g`."""
  if form == "xla":
    return jax.vjp(lambda k: _xla_conv(x, k, strides, padding, precision),
                   jnp.zeros(w_shape, x.dtype))[1](g)[0]
  kind, chunk = _parse(form)
  kh, kw, c, d = w_shape

  def group(xg, gg):
    rows = _kernel_rows(xg, (kh, kw), gg.shape[1:3], strides, padding)
    gm = gg.reshape(-1, d)
    if kind == "im2col":
      patches = jnp.concatenate(rows, axis=-1) if kh > 1 else rows[0]
      return _matmul(patches.reshape(-1, kh * kw * c).T, gm, precision).reshape(w_shape)
    return jnp.stack([_matmul(r.reshape(-1, kw * c).T, gm, precision)
                      for r in rows]).reshape(w_shape)
  return _summed(group, chunk, x, g).astype(x.dtype)


def _setting() -> str:
  if _OLD_ENV in os.environ:
    raise ValueError(f"{_OLD_ENV} is now {ENV} (it picks the forward's form too): set "
                     f"{ENV}={os.environ[_OLD_ENV]} instead")
  value = os.environ.get(ENV, "auto")
  if value not in FORMS + ("auto",):
    raise ValueError(f"{ENV}={value!r}: expected auto or one of {', '.join(FORMS)}")
  return value


@functools.lru_cache(maxsize=1)
def processor() -> str:
  """The CPU's model and its widest vector ISA, e.g. 'AMD EPYC (AVX2)', with XLA's ISA cap
  if one is set: what XLA:CPU generates code for, and so part of every cached choice's key."""
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
  # XLA generates code for a capped ISA as for a machine that has no more: another machine.
  cap = os.environ.get("XLA_FLAGS", "").partition("--xla_cpu_max_isa=")[2].split(" ")[0]
  return f"{model} ({isa}{f', XLA capped at {cap}' if cap else ''})"


def cache_path() -> str:
  root = os.environ.get("MIXACM_JAX_CACHE") or os.path.join(os.path.expanduser("~"), ".cache",
                                                           "mixacm_jax")
  return os.path.join(root, "conv_forms.json")


def _cores() -> int:
  return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def _key(pass_, x_shape, w_shape, strides, padding, dtype) -> str:
  return (f"{processor()}|{_cores()} cores|{_devices()} devices|jax {jax.__version__}|{pass_}|"
          f"x{tuple(x_shape)} w{tuple(w_shape)} s{strides} p{padding} {jnp.dtype(dtype).name}")


def form_for(pass_: str, x_shape, w_shape, strides, padding, dtype) -> str:
  """The form of `pass_` ('forward' or 'weight_grad') for this shape (see the module doc)."""
  setting = _setting()
  if setting != "auto":
    return setting
  if jax.default_backend() != "cpu" or flops(x_shape, w_shape, strides, padding) < MIN_FLOPS:
    return "xla"
  key = _key(pass_, x_shape, w_shape, strides, padding, dtype)
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
            timings = pool.submit(measure, pass_, x_shape, w_shape, strides, padding,
                                  dtype).result()
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


def candidates(n: int, w_shape) -> Tuple[str, ...]:
  """The forms worth timing for a batch of n: chunk sizes that give the same groups as
  another (e.g. 4 and 8 for n = 4) are timed once, and for a kernel of one row `im2col` is
  `rows`."""
  seen, out = set(), []
  for form in FORMS:
    kind, chunk = _parse(form) if form != "xla" else ("xla", 0)
    if kind == "im2col" and w_shape[0] == 1:
      kind = "rows"
    group = (kind, _group_size(chunk, n))
    if group not in seen:
      seen.add(group)
      out.append(form)
  return tuple(out)


def pass_fn(pass_: str, form: str, w_shape, strides, padding):
  """The pass as a function of arrays, (x, w) -> y for 'forward', (x, g) -> dw else."""
  if pass_ == "forward":
    return lambda x, w: forward(form, x, w, strides, padding)
  if pass_ == "weight_grad":
    return lambda x, g: weight_grad(form, x, g, w_shape, strides, padding)
  raise ValueError(f"unknown pass {pass_!r}; known: {', '.join(PASSES)}")


def _devices() -> int:
  return jax.local_device_count() if jax.default_backend() == "cpu" else 1


def measure(pass_, x_shape, w_shape, strides, padding, dtype, repeats: int = 2,
            forms=None) -> Dict[str, float]:
  """Seconds of each candidate form of `pass_` for this shape (the best of `repeats` calls
  after a compiling one). With several host devices the shape is one device's and every
  device runs it at once, as a pmapped step does: the matmul forms share the cores that one
  XLA convolution per device leaves to the others."""
  rng = np.random.RandomState(0)
  out_shape = x_shape[:1] + _out_hw(x_shape, w_shape, strides, padding) + w_shape[-1:]
  n = _devices()
  stacked = lambda shape: jnp.asarray(rng.rand(*(((n,) if n > 1 else ()) + tuple(shape))),
                                      dtype)
  x = stacked(x_shape)
  second = stacked(w_shape if pass_ == "forward" else out_shape)
  timings = {}
  for form in forms or candidates(x_shape[0], w_shape):
    fn = (jax.pmap if n > 1 else jax.jit)(pass_fn(pass_, form, w_shape, strides, padding))
    jax.block_until_ready(fn(x, second))
    best = float("inf")
    for _ in range(repeats):
      t0 = time.perf_counter()
      jax.block_until_ready(fn(x, second))
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
