"""ACM mapping functions and loss against an independent NumPy implementation."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mixacm_jax.errors import ConfigError
from mixacm_jax.objectives.mixacm import acm


def np_map(a, mapping, p=2.0):
  a = a.astype(np.float64)
  if mapping == "mean_act":
    return np.maximum(a, 0).mean(axis=(1, 2))
  if mapping == "mean_pow":
    return (np.abs(a) ** p).mean(axis=(1, 2))
  if mapping == "max":
    return np.maximum(a, 0).max(axis=(1, 2))
  return (np.abs(a) ** p).mean(axis=3).reshape(a.shape[0], -1)


def np_loss(t, s, kernel=None):
  if kernel is not None:
    s = s @ kernel
  t = t / np.linalg.norm(t, axis=1, keepdims=True)
  s = s / np.linalg.norm(s, axis=1, keepdims=True)
  return np.mean(np.sum((t - s) ** 2, axis=1))


@pytest.mark.parametrize("mapping", ["mean_act", "mean_pow", "max", "attention"])
def test_mapping_and_loss_values(mapping):
  rng = np.random.RandomState(0)
  a_t = rng.randn(4, 5, 5, 6).astype(np.float32)
  a_s = rng.randn(4, 5, 5, 6).astype(np.float32)
  t, s = acm.channel_map(a_t, mapping), acm.channel_map(a_s, mapping)
  np.testing.assert_allclose(t, np_map(a_t, mapping), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(acm.acm_loss(t, s), np_loss(np_map(a_t, mapping),
                                                        np_map(a_s, mapping)), rtol=1e-5)


def test_loss_gradient_against_finite_differences():
  """d loss / d A_s and d loss / d kernel, against central differences in float64 NumPy."""
  rng = np.random.RandomState(1)
  a_t = rng.randn(3, 4, 4, 5)
  a_s = rng.randn(3, 4, 4, 3)
  kernel = rng.randn(3, 5)
  f_np = lambda a, k: np_loss(np_map(a_t, "mean_act"), np_map(a, "mean_act"), k)
  f_jax = lambda a, k: acm.acm_loss(acm.channel_map(jnp.asarray(a_t, jnp.float32)),
                                    acm.transform(acm.channel_map(a), {"kernel": k}))
  g_a, g_k = jax.grad(f_jax, argnums=(0, 1))(jnp.asarray(a_s, jnp.float32),
                                             jnp.asarray(kernel, jnp.float32))
  h = 1e-6
  for idx in [(0, 1, 2, 0), (1, 0, 0, 2), (2, 3, 3, 1)]:
    if a_s[idx] < 0:  # the ReLU kills negative entries: gradient 0 in both
      assert float(g_a[idx]) == 0.0
      continue
    up, down = a_s.copy(), a_s.copy()
    up[idx] += h
    down[idx] -= h
    assert float(g_a[idx]) == pytest.approx((f_np(up, kernel) - f_np(down, kernel)) / (2 * h),
                                            rel=1e-3, abs=1e-6)
  for idx in [(0, 0), (2, 4), (1, 3)]:
    up, down = kernel.copy(), kernel.copy()
    up[idx] += h
    down[idx] -= h
    assert float(g_k[idx]) == pytest.approx((f_np(a_s, up) - f_np(a_s, down)) / (2 * h),
                                            rel=1e-3, abs=1e-6)


def test_loss_is_zero_for_proportional_maps_and_bounded():
  rng = np.random.RandomState(2)
  t = np.abs(rng.randn(8, 16)).astype(np.float32)
  assert float(acm.acm_loss(t, 3.0 * t)) == pytest.approx(0.0, abs=1e-6)
  assert 0.0 <= float(acm.acm_loss(t, -t)) <= 4.0 + 1e-5


def test_transform_initialisation():
  same = acm.init_transform(jax.random.PRNGKey(0), 8, 8, "linear")
  np.testing.assert_array_equal(same["kernel"], np.eye(8))
  wider = acm.init_transform(jax.random.PRNGKey(0), 8, 16, "linear")
  assert wider["kernel"].shape == (8, 16)
  assert acm.init_transform(jax.random.PRNGKey(0), 8, 8, "none") == {}
  with pytest.raises(ConfigError, match="needs equal widths"):
    acm.init_transform(jax.random.PRNGKey(0), 8, 16, "none")
  with pytest.raises(ConfigError, match="unknown ACM mapping 'avg'"):
    acm.channel_map(jnp.ones((1, 2, 2, 3)), "avg")
