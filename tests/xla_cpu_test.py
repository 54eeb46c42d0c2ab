"""XLA:CPU's convolution backend: `import mixacm_jax` takes convolutions out of YNNPACK (dots
and reductions stay) where that is safe, a user's own setting wins, the switch turns it off,
a bad value is one line, and both backends compute the same convolution."""
import os
import subprocess
import sys

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
import pytest

from mixacm_jax.runtime import xla_cpu

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Run in a fresh process: imports mixacm_jax, compiles a convolution and a matmul, prints
# which of them XLA:CPU gave to YNNPACK, then XLA_FLAGS.
PROBE = """
import mixacm_jax, os, jax, jax.numpy as jnp
from jax import lax
def f(x, w, a):
  y = lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)),
                               dimension_numbers=("NHWC", "HWIO", "NHWC"))
  return y, a @ a
hlo = jax.jit(f).lower(jnp.ones((8, 16, 16, 32)), jnp.ones((3, 3, 32, 32)),
                       jnp.ones((64, 64))).compile().as_text()
ynn = [l for l in hlo.splitlines() if "ynn_fusion" in l and " fusion(" in l]
print("conv in ynnpack:", any("conv" in l for l in ynn))
print("dot in ynnpack:", any("dot" in l for l in ynn))
print("flags:", os.environ.get("XLA_FLAGS", ""))
"""


def _probe(**env):
  full = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="", PYTHONPATH=ROOT)
  full.pop(xla_cpu.ENV, None)
  full.update(env)
  out = subprocess.run([sys.executable, "-c", PROBE], env=full, capture_output=True,
                       text=True, timeout=300)
  assert out.returncode == 0, out.stderr
  return out.stdout, out.stderr


def _known_jaxlib():
  if xla_cpu._installed("jaxlib") not in xla_cpu.KNOWN_JAXLIB:  # pylint: disable=protected-access
    pytest.skip(f"jaxlib {xla_cpu._installed('jaxlib')} is not one the flag is known for")  # pylint: disable=protected-access


def test_import_moves_convolutions_to_eigen_and_keeps_dots_in_ynnpack():
  _known_jaxlib()
  out, _ = _probe()
  assert "conv in ynnpack: False" in out and "dot in ynnpack: True" in out
  assert xla_cpu.EIGEN in out


def test_the_switch_and_a_users_own_setting_keep_ynnpack():
  _known_jaxlib()
  out, _ = _probe(**{xla_cpu.ENV: "ynnpack"})
  assert "conv in ynnpack: True" in out and xla_cpu.FLAG not in out
  own = f"{xla_cpu.FLAG}=+individual_convolution"
  out, _ = _probe(XLA_FLAGS=own)
  assert "conv in ynnpack: True" in out and f"flags: {own}\n" in out


def test_a_bad_switch_is_one_line_and_changes_nothing(tmp_path):
  out, err = _probe(**{xla_cpu.ENV: "fastest"})
  assert xla_cpu.FLAG not in out
  assert err.count("\n") == 1 and "MIXACM_CPU_CONV='fastest'" in err
  cli = subprocess.run([sys.executable, os.path.join(ROOT, "run.py"), f"--workdir={tmp_path}"],
                       env=dict(os.environ, **{xla_cpu.ENV: "fastest"}), capture_output=True,
                       text=True, timeout=300)
  assert cli.returncode == 2 and "Traceback" not in cli.stderr
  assert "error: MIXACM_CPU_CONV='fastest': expected one of eigen, ynnpack" in cli.stderr


def test_no_flag_where_it_is_not_safe(monkeypatch):
  """Unknown jaxlib, an accelerator run, or a backend already started: XLA_FLAGS untouched."""
  monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
  monkeypatch.delenv(xla_cpu.ENV, raising=False)
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  jax.devices()  # this process's backend has started
  assert not xla_cpu.configure()
  monkeypatch.setattr(xla_cpu, "_backend_started", lambda: False)
  for platforms in ("cuda", "cpu,cuda", "tpu"):
    monkeypatch.setenv("JAX_PLATFORMS", platforms)
    assert not xla_cpu.configure()
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  monkeypatch.setattr(xla_cpu, "KNOWN_JAXLIB", ("0.0.1",))
  assert not xla_cpu.configure()
  assert os.environ["XLA_FLAGS"] == "--xla_force_host_platform_device_count=2"
  monkeypatch.setattr(xla_cpu, "KNOWN_JAXLIB", (xla_cpu._installed("jaxlib"),))  # pylint: disable=protected-access
  assert xla_cpu.configure()
  assert os.environ["XLA_FLAGS"].endswith(" " + xla_cpu.EIGEN)
  assert xla_cpu.convolution_backend() == "Eigen (XLA's own)"


@pytest.mark.parametrize("strides,kernel", [((1, 1), 3), ((2, 2), 3), ((2, 2), 1)])
def test_both_backends_compute_the_same_convolution_and_gradients(strides, kernel):
  """Per program, through compiler options: equal within float32 rounding, and equal to a
  NumPy sum over the taps."""
  _known_jaxlib()
  rng = np.random.RandomState(0)
  x = rng.randn(4, 8, 8, 5).astype(np.float32)
  w = rng.randn(kernel, kernel, 5, 6).astype(np.float32)
  pad = ((kernel // 2,) * 2,) * 2

  def f(x, w):
    y = lax.conv_general_dilated(x, w, strides, pad, dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y, jax.grad(lambda x, w: jnp.sum(lax.conv_general_dilated(
        x, w, strides, pad, dimension_numbers=("NHWC", "HWIO", "NHWC")) ** 2), (0, 1))(x, w)
  fusions = {"ynnpack": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE,"
                        "LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION",
             "eigen": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"}
  results = {name: jax.jit(f).lower(x, w).compile(
      compiler_options={"xla_cpu_experimental_ynn_fusion_type": value})(x, w)
             for name, value in fusions.items()}
  for a, b in zip(jax.tree_util.tree_leaves(results["ynnpack"]),
                  jax.tree_util.tree_leaves(results["eigen"])):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
  xp = np.pad(x, ((0, 0), pad[0], pad[1], (0, 0)))
  ho = (8 + 2 * (kernel // 2) - kernel) // strides[0] + 1
  ref = np.zeros((4, ho, ho, 6), np.float64)
  for i in range(kernel):
    for j in range(kernel):
      taps = xp[:, i:i + strides[0] * (ho - 1) + 1:strides[0], j:j + strides[1] * (ho - 1) + 1:
                strides[1]]
      ref += np.einsum("nhwc,cd->nhwd", taps, w[i, j])
  np.testing.assert_allclose(results["eigen"][0], ref, rtol=1e-4, atol=1e-4)


def _step(i, state, consts):
  return state + jnp.mean(jnp.tanh(state * consts), axis=(1, 2), keepdims=True)


def test_the_attack_loops_programs_keep_reductions_out_of_ynnpack():
  """On a small batch YNNPACK's reductions cost an attack's forward half its time; the loop
  programs compile without them, other programs with them."""
  from mixacm_jax.attacks import loop  # pylint: disable=g-import-not-at-top
  _known_jaxlib()
  if xla_cpu.EIGEN not in os.environ.get("XLA_FLAGS", "").split():
    pytest.skip("XLA_FLAGS does not hold the package's convolution setting")
  state = jnp.ones((8, 64, 64, 16))
  consts = jnp.full((8, 64, 64, 16), 0.5)
  ynn = lambda hlo: [l for l in hlo.splitlines() if "ynn_fusion" in l and " fusion(" in l]
  plain = jax.jit(lambda s, c: _step(0, s, c)).lower(state, consts).compile().as_text()
  looped = loop._chunk.lower(jnp.int32(0), state, consts, step=_step,  # pylint: disable=protected-access
                             length=1).compile().as_text()
  assert ynn(plain) and not ynn(looped)
  np.testing.assert_allclose(loop._chunk(jnp.int32(0), state, consts, step=_step, length=1),  # pylint: disable=protected-access
                             _step(0, state, consts), rtol=1e-5, atol=1e-6)
