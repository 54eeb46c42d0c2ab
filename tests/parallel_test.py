"""replicate / unreplicate: a pmapped step fed its own outputs compiles once; host devices."""
import logging

import jax
import numpy as np
import pytest

from mixacm_jax.errors import ConfigError
from mixacm_jax.runtime import parallel


def _tiny_step(state, x):
  return {"w": state["w"] + jax.lax.pmean(x, parallel.AXIS), "n": state["n"] + 1}


def test_a_step_fed_its_own_outputs_compiles_once(caplog):
  step = jax.pmap(_tiny_step, axis_name=parallel.AXIS)
  state = parallel.replicate({"w": np.zeros((3,), np.float32), "n": np.int32(0)})
  x = np.ones((jax.local_device_count(), 3), np.float32)
  jax.config.update("jax_log_compiles", True)
  try:
    with caplog.at_level(logging.WARNING):
      for _ in range(3):
        state = step(state, x)
  finally:
    jax.config.update("jax_log_compiles", False)
  # (pmap compiles under an internal name; only the step runs inside the loop.)
  compiles = [r for r in caplog.records if r.getMessage().startswith("Compiling")]
  assert len(compiles) == 1, [r.getMessage()[:120] for r in compiles]
  host = parallel.unreplicate(state)
  np.testing.assert_allclose(host["w"], 3.0)
  assert int(host["n"]) == 3


def test_replicate_copies_every_leaf_to_every_device():
  tree = {"a": np.arange(6.0).reshape(2, 3), "b": {"c": np.int32(7)}, "empty": {}}
  rep = parallel.replicate(tree)
  n = jax.local_device_count()
  assert rep["a"].shape == (n, 2, 3) and rep["b"]["c"].shape == (n,)
  for i in range(n):
    np.testing.assert_array_equal(np.asarray(rep["a"])[i], tree["a"])
  assert parallel.replicate({}) == {}


def test_host_devices_after_jax_started_is_a_clear_error():
  jax.numpy.zeros(1).block_until_ready()  # the backend runs (as in every test process)
  with pytest.raises(ConfigError, match="host devices must be set before JAX computes anything"):
    parallel.use_host_devices(3)
  assert jax.device_count() == 2  # unchanged (conftest's two devices)


def test_host_devices_is_a_positive_integer():
  from mixacm_jax.cli import modes  # pylint: disable=g-import-not-at-top
  assert modes._host_devices("3") == 3  # pylint: disable=protected-access
  for bad in ("0", "two", "-1", "auto"):
    with pytest.raises(ConfigError, match="--host_devices must be a positive integer"):
      modes._host_devices(bad)  # pylint: disable=protected-access


def test_the_compilation_cache_is_on_by_default_and_leaves_a_set_directory(tmp_path,
                                                                          monkeypatch):
  from mixacm_jax.runtime import compilation_cache  # pylint: disable=g-import-not-at-top
  before = jax.config.jax_compilation_cache_dir
  size_before = jax.config.jax_compilation_cache_max_size
  monkeypatch.setenv("MIXACM_JAX_CACHE", str(tmp_path))
  try:
    jax.config.update("jax_compilation_cache_max_size", -1)
    assert compilation_cache.enable() == before  # set by conftest: left as it is
    # ... but bounded, which is what makes JAX lock its reads and writes.
    assert jax.config.jax_compilation_cache_max_size == compilation_cache.MAX_BYTES
    jax.config.update("jax_compilation_cache_max_size", 123 << 20)
    compilation_cache.enable()
    assert jax.config.jax_compilation_cache_max_size == 123 << 20  # a set bound is kept
    jax.config.update("jax_compilation_cache_dir", None)
    monkeypatch.setenv(compilation_cache.ENV, "0")
    assert compilation_cache.enable() == "" and not jax.config.jax_compilation_cache_dir
    monkeypatch.delenv(compilation_cache.ENV)
    assert compilation_cache.enable() == str(tmp_path / "xla")
    assert jax.config.jax_compilation_cache_dir == str(tmp_path / "xla")
  finally:
    jax.config.update("jax_compilation_cache_dir", before)
    jax.config.update("jax_compilation_cache_max_size", size_before)
