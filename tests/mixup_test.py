"""Mixup: the lambda distribution, label mixing, determinism and device-split invariance."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mixacm_jax.objectives import mixup
from mixacm_jax.runtime import parallel


def _mix(batch, key, alpha, per_example=False, devices=1):
  """Runs mix_batch under vmap with a named axis, the batch split over `devices` shards."""
  n = batch["label"].shape[0] // devices
  shards = {k: v.reshape((devices, n) + v.shape[1:]) for k, v in batch.items()}
  fn = lambda b, offset: mixup.mix_batch(b, key, alpha, per_example=per_example,
                                         example_offset=offset)
  x, y, lam = jax.vmap(fn, axis_name=parallel.AXIS)(shards, jnp.arange(devices) * n)
  return x.reshape((-1,) + x.shape[2:]), y.reshape(-1), lam.reshape(-1)


def _batch(n=16):
  x = jax.random.uniform(jax.random.PRNGKey(0), (n, 4, 4, 1))
  return {"image": x, "label": jnp.arange(n) % 10}


def test_lambda_follows_beta():
  lam = mixup.sample_lambda(jax.random.PRNGKey(0), 0.5, (20000,))
  assert float(lam.min()) >= 0 and float(lam.max()) <= 1
  # Beta(a, a): mean 1/2, variance 1 / (4 (2a + 1)).
  assert float(lam.mean()) == pytest.approx(0.5, abs=0.01)
  assert float(lam.var()) == pytest.approx(1 / (4 * 2.0), abs=0.005)
  np.testing.assert_array_equal(mixup.sample_lambda(jax.random.PRNGKey(0), 0.0, (3,)), 1.0)


@pytest.mark.parametrize("per_example", [False, True])
def test_mixed_images_and_partners(per_example):
  batch = _batch()
  x, y_b, lam = _mix(batch, jax.random.PRNGKey(1), 1.0, per_example)
  if not per_example:
    assert len(set(np.asarray(lam).tolist())) == 1
  else:
    assert len(set(np.asarray(lam).tolist())) > 1
  # Each mixed image is lam * x_i + (1 - lam) * x_j with y_j the label of that partner j.
  xs = np.asarray(batch["image"])
  for i in range(16):
    partners = [j for j in range(16) if np.allclose(
        x[i], lam[i] * xs[i] + (1 - lam[i]) * xs[j], atol=1e-6)]
    assert partners and int(y_b[i]) in {int(batch["label"][j]) for j in partners}
  again = _mix(batch, jax.random.PRNGKey(1), 1.0, per_example)
  np.testing.assert_array_equal(x, again[0])


def test_same_mix_on_one_or_two_shards():
  batch = _batch()
  one = _mix(batch, jax.random.PRNGKey(2), 1.0, True, devices=1)
  two = _mix(batch, jax.random.PRNGKey(2), 1.0, True, devices=2)
  for a, b in zip(one, two):
    np.testing.assert_allclose(a, b, atol=1e-7)


def test_mixup_cross_entropy_against_numpy():
  rng = np.random.RandomState(0)
  logits = rng.randn(5, 4).astype(np.float32)
  ya, yb, lam = rng.randint(0, 4, 5), rng.randint(0, 4, 5), rng.rand(5).astype(np.float32)
  logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
  ref = np.mean(-lam * logp[np.arange(5), ya] - (1 - lam) * logp[np.arange(5), yb])
  np.testing.assert_allclose(mixup.mixup_cross_entropy(logits, ya, yb, lam), ref, rtol=1e-5)
