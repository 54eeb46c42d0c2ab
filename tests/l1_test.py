"""The L1 threat model: the projection onto the L1 ball inside the box (against an
independent NumPy bisection and the original AutoAttack's `L1_projection`), PGD, APGD and
Square under L1 (every point inside the ball and the box; APGD's large-radius phases;
Square's L1 bump against NumPy), and AutoAttack's L1 recipe (FAB's L1 form is checked
point by point against the original code in attacks_crosscheck_test)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mixacm_jax
from mixacm_jax.attacks import apgd, autoattack, pgd, square


def _numpy_l1_projection(x_adv, x, eps):
  """Reference: per example, bisection on the threshold lam of the KKT solution
  delta_i = sign(d_i) clip(|d_i| - lam, 0, room_i), room_i the box's room along d_i."""
  out = []
  for xa, x0, eps in zip(x_adv.reshape(len(x), -1).astype(np.float64),
                         x.reshape(len(x), -1).astype(np.float64), np.broadcast_to(eps, len(x))):
    d = xa - x0
    room = np.where(d >= 0, 1 - x0, x0)
    shrink = lambda lam: np.sign(d) * np.clip(np.abs(d) - lam, 0, room)
    lo, hi = 0.0, np.abs(d).max()
    if np.abs(shrink(0.0)).sum() > eps:
      for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if np.abs(shrink(mid)).sum() > eps else (lo, mid)
    out.append(x0 + shrink(hi if np.abs(shrink(0.0)).sum() > eps else 0.0))
  return np.stack(out).reshape(x.shape)


@pytest.mark.parametrize("scale", [0.01, 0.3, 3.0])
def test_l1_projection_matches_a_numpy_bisection(scale):
  rng = np.random.RandomState(1)
  x = rng.rand(8, 5, 5, 2).astype(np.float32)
  x[0], x[1] = 0.0, 1.0  # the box binds on one side everywhere
  x_adv = x + (scale * rng.randn(*x.shape)).astype(np.float32)
  eps = np.linspace(0.5, 4.0, 8).astype(np.float32)  # one radius per example
  ours = np.asarray(pgd.l1_project(jnp.asarray(x_adv), jnp.asarray(x), jnp.asarray(eps)))
  np.testing.assert_allclose(ours, _numpy_l1_projection(x_adv, x, eps), atol=2e-5)
  assert ours.min() >= 0 and ours.max() <= 1
  assert np.all(np.abs(ours - x).reshape(8, -1).sum(1) <= eps + 1e-4)


def test_l1_projection_matches_the_original_autoattack_code():
  torch = pytest.importorskip("torch", reason="torch is in requirements-torch.txt")
  original = pytest.importorskip("pyautoattack.autopgd_base",
                                 reason="pip install --no-deps -r requirements-port.txt")
  rng = np.random.RandomState(2)
  x = rng.rand(16, 4, 4, 3).astype(np.float32)
  t = (rng.randn(*x.shape) * rng.choice([0.05, 0.5, 3.0], (16, 1, 1, 1))).astype(np.float32)
  theirs = (torch.from_numpy(x + t) + original.L1_projection(
      torch.from_numpy(x), torch.from_numpy(t), 2.0)).numpy()
  ours = np.asarray(pgd.l1_project(jnp.asarray(x + t), jnp.asarray(x), 2.0))
  np.testing.assert_allclose(ours, theirs, atol=1e-4)


def _linear_problem(n=48, seed=0):
  rng = np.random.RandomState(seed)
  w = jnp.asarray(rng.randn(48, 6).astype(np.float32))
  f = lambda v: v.reshape(v.shape[0], -1) @ w
  x = jnp.asarray(rng.rand(n, 4, 4, 3).astype(np.float32))
  return f, x, jnp.argmax(f(x), -1)


@pytest.mark.parametrize("largereps", [False, True])
def test_apgd_l1_stays_in_the_ball_and_box_and_bites(largereps):
  f, x, y = _linear_problem()
  eps = 1.5
  x_adv, fooled = apgd.apgd(f, x, y, jax.random.PRNGKey(0), eps=eps, n_iter=20, norm="l1",
                            use_largereps=largereps)
  size = np.abs(np.asarray(x_adv - x)).reshape(len(y), -1).sum(1)
  assert size.max() <= eps * (1 + 1e-5) and x_adv.min() >= 0 and x_adv.max() <= 1
  np.testing.assert_array_equal(np.asarray(jnp.argmax(f(x_adv), -1) != y), np.asarray(fooled))
  # The same budget at L-inf radius eps / 48 (the L1 ball holds that L-inf ball) fools fewer.
  _, fooled_inf = apgd.apgd(f, x, y, jax.random.PRNGKey(0), eps=eps / 48, n_iter=20)
  assert 0 < int(fooled_inf.sum()) < int(fooled.sum())


def test_largereps_phases_split_the_iterations_as_the_original():
  assert apgd.largereps_iterations(100) == (30, 30, 40)
  assert apgd.largereps_iterations(7) == (3, 3, 1)
  f, x, y = _linear_problem(4)
  with pytest.raises(ValueError, match="use_largereps is for the L1 norm"):
    apgd.apgd(f, x, y, jax.random.PRNGKey(0), eps=0.1, n_iter=5, use_largereps=True)


def test_pgd_l1_reaches_the_ball_boundary_and_respects_the_box():
  f, x, y = _linear_problem()
  x_adv, _ = pgd.pgd(f, x, y, jax.random.PRNGKey(0), eps=1.0, step_size=0.25, steps=10,
                     norm="l1")
  size = np.abs(np.asarray(x_adv - x)).reshape(len(y), -1).sum(1)
  np.testing.assert_allclose(size, 1.0, rtol=1e-4)  # the loss keeps rising along the ray
  assert x_adv.min() >= 0 and x_adv.max() <= 1


def test_the_l1_recipe_is_the_originals():
  assert autoattack.get_version("standard", "l1") == ["apgd-ce", "apgd-t", "fab-t", "square"]
  assert autoattack.version_settings("standard", "l1") == {
      "apgd-ce": {"n_restarts": 5, "use_largereps": True},
      "apgd-t": {"n_target_classes": 5, "use_largereps": True}}
  assert autoattack.version_settings("apgd", "l1") == {}  # large radii: `standard` only
  f, x, y = _linear_problem(8)
  report = mixacm_jax.evaluate(f, None, np.asarray(x), labels=np.asarray(y),
                               attacks="autoattack", eps=1.0, norm="l1")
  aa = report["attacks"]["autoattack"]
  assert list(aa["after_each_stage"]) == ["apgd-ce", "apgd-t", "fab-t", "square"]
  assert 0 < aa["max_perturbation"] <= 1.0 + 1e-5
  assert aa["robust_accuracy"] < report["clean_accuracy"]


def _numpy_l1_bump(s):
  """The original's L1 `eta(s)`, written from its description: concentric squares weighted
  1 / k^4 on each half (top positive, bottom negative), each half and then the whole of unit
  L1 norm."""
  def rect(a, b):
    out, (ci, cj) = np.zeros((a, b)), (a // 2, b // 2)
    for k in range(max(ci, cj) + 1):
      out[max(ci - k, 0):ci + k + 1, max(cj - k, 0):cj + k + 1] += 1.0 / (k + 1) ** 4
    return out / np.abs(out).sum()
  v = np.concatenate([rect(s // 2, s), -rect(s - s // 2, s)])
  return v / np.abs(v).sum()


@pytest.mark.parametrize("side", [3, 5, 8])
def test_square_l1_bump_matches_a_numpy_reference(side):
  v = square.bump(side, side, 0, 0, side, jnp.zeros((1, 1, 1), bool), "l1")
  np.testing.assert_allclose(np.asarray(v)[0, :, :, 0], _numpy_l1_bump(side), atol=1e-6)


def test_square_l1_stays_in_the_ball_and_box_and_bites():
  f, x, y = _linear_problem()
  x_adv, fooled = square.square(f, x, y, jax.random.PRNGKey(0), eps=1.5, n_queries=300,
                                norm="l1")
  size = np.abs(np.asarray(x_adv - x)).reshape(len(y), -1).sum(1)
  assert size.max() <= 1.5 * (1 + 1e-5) and x_adv.min() >= 0 and x_adv.max() <= 1
  np.testing.assert_array_equal(np.asarray(jnp.argmax(f(x_adv), -1) != y), np.asarray(fooled))
  assert int(fooled.sum()) > 0
