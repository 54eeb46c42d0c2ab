"""PGD/FGSM: ball and box constraints (property-based), losses against NumPy, attack strength."""
import functools

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mixacm_jax.attacks import pgd as pgd_lib


def _linear_model(key, dim, classes=5):
  w = jax.random.normal(key, (dim, classes))
  return lambda x: x.reshape(x.shape[0], -1) @ w


@functools.lru_cache(maxsize=None)
def _jitted(norm, loss, steps, random_start=True):
  def attack(x, y, key, eps, wkey):
    logits_fn = _linear_model(wkey, x[0].size)
    x_adv, _ = pgd_lib.pgd(logits_fn, x, y, key, eps=eps, step_size=eps / 4, steps=steps,
                        norm=norm, loss=loss, random_start=random_start)
    return x_adv, logits_fn(x), logits_fn(x_adv)
  return jax.jit(attack)


@pytest.mark.slow
@hypothesis.settings(max_examples=25, deadline=None)
@hypothesis.given(n=st.integers(1, 6), side=st.integers(1, 5), eps=st.floats(1e-3, 1.0),
                  seed=st.integers(0, 2**16), norm=st.sampled_from(["linf", "l2"]),
                  loss=st.sampled_from(["ce", "margin"]))
def test_pgd_stays_in_ball_and_box_and_never_helps(n, side, eps, seed, norm, loss):
  key = jax.random.PRNGKey(seed)
  kx, ky, ka, kw = jax.random.split(key, 4)
  x = jax.random.uniform(kx, (n, side, side, 3))
  y = jax.random.randint(ky, (n,), 0, 5)
  x_adv, clean, adv = _jitted(norm, loss, 3)(x, y, ka, eps, kw)
  delta = np.asarray(x_adv - x).reshape(n, -1)
  if norm == "linf":
    assert np.abs(delta).max() <= eps + 1e-6
  else:
    assert np.linalg.norm(delta, axis=1).max() <= eps * (1 + 1e-5) + 1e-6
  assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
  # On a linear model, projected sign-gradient ascent of the margin never turns a wrong
  # prediction right: each step raises the active margin term. (From a random start it can:
  # the start may land on the right side, and three steps need not come back.)
  if loss == "margin":
    _, clean, adv = _jitted(norm, loss, 3, random_start=False)(x, y, ka, eps, kw)
    wrong_before = np.asarray(jnp.argmax(clean, -1) != y)
    wrong_after = np.asarray(jnp.argmax(adv, -1) != y)
    assert np.all(wrong_after[wrong_before])


def test_margin_and_ce_against_numpy():
  rng = np.random.RandomState(0)
  logits, labels = rng.randn(6, 4).astype(np.float32), rng.randint(0, 4, 6)
  ref_margin = [max(np.delete(l, y)) - l[y] for l, y in zip(logits, labels)]
  np.testing.assert_allclose(pgd_lib.margin_loss(logits, labels), ref_margin, rtol=1e-6)
  shifted = logits - logits.max(1, keepdims=True)
  ref_ce = -(shifted[np.arange(6), labels] - np.log(np.exp(shifted).sum(1)))
  np.testing.assert_allclose(pgd_lib.ce_loss(logits, labels), ref_ce, rtol=1e-5)


def test_pgd_breaks_a_linear_classifier_and_more_steps_do_not_hurt():
  """On a linear model the worst case within the L-inf ball is known in closed form:
  an example is breakable iff its margin can be flipped by eps * ||w_j - w_y||_1."""
  key = jax.random.PRNGKey(0)
  x = jax.random.uniform(key, (64, 4, 4, 1)) * 0.5 + 0.25  # away from the box edges
  w = jax.random.normal(jax.random.PRNGKey(1), (16, 3))
  logits_fn = lambda v: v.reshape(v.shape[0], -1) @ w
  y = jnp.argmax(logits_fn(x), -1)  # all correctly classified
  eps = 0.05
  z = np.asarray(logits_fn(x))
  wn = np.asarray(w)
  breakable = [any(z[i, j] - z[i, y[i]] + eps * np.abs(wn[:, j] - wn[:, y[i]]).sum() > 0
                   for j in range(3) if j != y[i]) for i in range(64)]
  adv_acc = []
  for steps in (1, 10):
    x_adv, _ = pgd_lib.pgd(logits_fn, x, y, key, eps=eps, step_size=eps / 2, steps=steps,
                        loss="margin")
    adv_acc.append(float(jnp.mean(jnp.argmax(logits_fn(x_adv), -1) == y)))
  exact = 1.0 - np.mean(breakable)
  assert adv_acc[1] <= adv_acc[0] + 1e-9
  assert adv_acc[1] == pytest.approx(exact, abs=1.5 / 64)


def test_fgsm_is_one_signed_step():
  w = jnp.arange(12.0).reshape(4, 3) - 5
  logits_fn = lambda v: v.reshape(v.shape[0], -1) @ w
  x = jnp.full((2, 2, 2, 1), 0.5)
  y = jnp.array([0, 2])
  x_adv, _ = pgd_lib.fgsm(logits_fn, x, y, eps=0.1)
  g = jax.grad(lambda v: jnp.sum(pgd_lib.ce_loss(logits_fn(v), y)))(x)
  np.testing.assert_allclose(x_adv, jnp.clip(x + 0.1 * jnp.sign(g), 0, 1), atol=1e-7)


@functools.lru_cache(maxsize=None)
def _jitted_stage(name, norm):
  from mixacm_jax.attacks import apgd, fab, square  # pylint: disable=g-import-not-at-top
  stages = {
      "fab-t": lambda f, x, y, k, eps: fab.fab_targeted(f, x, y, k, eps=eps, n_iter=6,
                                                       n_target_classes=3, norm=norm),
      "apgd-ce": lambda f, x, y, k, eps: apgd.apgd(f, x, y, k, eps=eps, n_iter=8, norm=norm),
      "apgd-dlr": lambda f, x, y, k, eps: apgd.apgd(f, x, y, k, eps=eps, n_iter=8, loss="dlr",
                                                    norm=norm),
      "apgd-t": lambda f, x, y, k, eps: apgd.apgd_targeted(f, x, y, k, eps=eps, n_iter=5,
                                                          n_target_classes=3, norm=norm),
      "square": lambda f, x, y, k, eps: square.square(f, x, y, k, eps=eps, n_queries=30,
                                                      norm=norm),
  }
  def run(x, y, key, eps, wkey):
    f = _linear_model(wkey, x[0].size)
    x_adv, fooled = stages[name](f, x, y, key, eps)
    return x_adv, fooled, f(x), f(x_adv)
  return jax.jit(run)


@pytest.mark.slow
@hypothesis.settings(max_examples=20, deadline=None)
@hypothesis.given(n=st.integers(1, 5), side=st.integers(2, 6), eps=st.floats(1e-3, 0.5),
                  seed=st.integers(0, 2**16),
                  name=st.sampled_from(["apgd-ce", "apgd-dlr", "apgd-t", "fab-t", "square"]),
                  norm=st.sampled_from(["linf", "l2"]))
def test_autoattack_stages_respect_constraints_and_report_honestly(n, side, eps, seed, name,
                                                                    norm):
  kx, ky, ka, kw = jax.random.split(jax.random.PRNGKey(seed), 4)
  x = jax.random.uniform(kx, (n, side, side, 3))
  y = jax.random.randint(ky, (n,), 0, 5)
  if norm == "l2":
    eps *= 4  # a comparable ball: L2 radii are larger than L-inf ones
  x_adv, fooled, clean, adv = _jitted_stage(name, norm)(x, y, ka, eps, kw)
  d = np.asarray(x_adv - x).reshape(n, -1)
  size = np.abs(d).max(1) if norm == "linf" else np.linalg.norm(d, axis=1)
  assert size.max() <= eps * (1 + 1e-5) + 1e-6
  assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
  # `fooled` is exactly "the returned point is misclassified", and the clean mistakes count.
  np.testing.assert_array_equal(np.asarray(fooled), np.asarray(jnp.argmax(adv, -1) != y))
  robust_acc = 1 - float(jnp.mean(fooled))
  assert robust_acc <= float(jnp.mean(jnp.argmax(clean, -1) == y)) + 1e-9


def test_dlr_losses_against_numpy():
  from mixacm_jax.attacks import apgd  # pylint: disable=g-import-not-at-top
  rng = np.random.RandomState(3)
  z, y, t = rng.randn(7, 10).astype(np.float32), rng.randint(0, 10, 7), rng.randint(0, 10, 7)
  s = -np.sort(-z, axis=1)
  other = np.array([max(np.delete(z[i], y[i])) for i in range(7)])
  ref = -(z[np.arange(7), y] - other) / (s[:, 0] - s[:, 2] + 1e-12)
  np.testing.assert_allclose(apgd.dlr_loss(z, y), ref, rtol=1e-5)
  ref_t = -(z[np.arange(7), y] - z[np.arange(7), t]) / (s[:, 0] - 0.5 * (s[:, 2] + s[:, 3]) + 1e-12)
  np.testing.assert_allclose(apgd.dlr_loss_targeted(z, y, t), ref_t, rtol=1e-5)
  # Checkpoints for 100 iterations: 22, then each 3 shorter down to 6 (as in the paper).
  ends = [i for i, _ in apgd.checkpoints(100)]
  assert ends[:4] == [21, 40, 56, 69] and all(b - a >= 6 for a, b in zip(ends, ends[1:]))


def test_fab_projection_is_the_linear_programme_optimum():
  """The smallest L-inf step onto a hyperplane within the box, against scipy's LP solver."""
  from scipy.optimize import linprog  # pylint: disable=g-import-not-at-top

  from mixacm_jax.attacks.fab import project_hyperplane  # pylint: disable=g-import-not-at-top
  rng = np.random.RandomState(0)
  dim = 6
  for trial in range(12):
    w, x = rng.randn(1, dim), rng.rand(1, dim)
    c = rng.randn(1) * (0.3 if trial < 9 else 8.0)  # the last ones often beyond the box
    d = np.asarray(project_hyperplane(jnp.asarray(w), jnp.asarray(c), jnp.asarray(-x),
                                      jnp.asarray(1 - x), "linf"))
    assert np.all(x + d >= -1e-6) and np.all(x + d <= 1 + 1e-6)
    res = linprog(np.r_[np.zeros(dim), 1.0],
                  A_ub=np.r_[np.c_[np.eye(dim), -np.ones(dim)], np.c_[-np.eye(dim), -np.ones(dim)]],
                  b_ub=np.zeros(2 * dim), A_eq=np.r_[w[0], 0.0][None], b_eq=c,
                  bounds=[(-x[0, i], 1 - x[0, i]) for i in range(dim)] + [(0, None)])
    if res.status == 0:
      assert float(w[0] @ d[0]) == pytest.approx(float(c[0]), abs=1e-5)
      assert float(np.abs(d).max()) == pytest.approx(res.x[-1], abs=1e-5)
    else:  # unreachable: the box corner in the direction of c
      assert abs(float(w[0] @ d[0])) < abs(float(c[0]))
      np.testing.assert_allclose(np.abs(d[0]), np.where(np.sign(c[0] * w[0]) > 0, 1 - x[0], x[0]),
                                 atol=1e-6)


def test_fab_l2_projection_is_the_quadratic_programme_optimum():
  """The smallest L2 step onto a hyperplane within the box, against scipy's SLSQP."""
  from scipy.optimize import minimize  # pylint: disable=g-import-not-at-top

  from mixacm_jax.attacks.fab import project_hyperplane  # pylint: disable=g-import-not-at-top
  rng = np.random.RandomState(1)
  dim = 6
  for trial in range(12):
    w, x = rng.randn(1, dim), rng.rand(1, dim)
    w[0, trial % dim] = 0.0  # a coordinate the hyperplane does not depend on
    c = rng.randn(1) * (0.5 if trial < 9 else 8.0)
    d = np.asarray(project_hyperplane(jnp.asarray(w), jnp.asarray(c), jnp.asarray(-x),
                                      jnp.asarray(1 - x), "l2"), np.float64)
    assert np.all(np.isfinite(d))
    assert np.all(x + d >= -1e-6) and np.all(x + d <= 1 + 1e-6)
    reachable = float(np.sum(np.abs(w[0]) * np.where(np.sign(c[0] * w[0]) > 0, 1 - x[0], x[0])))
    if reachable > abs(c[0]) + 1e-6:
      res = minimize(lambda v: v @ v, np.zeros(dim), jac=lambda v: 2 * v, method="SLSQP",
                     constraints=[{"type": "eq", "fun": lambda v: w[0] @ v - c[0]}],
                     bounds=[(-x[0, i], 1 - x[0, i]) for i in range(dim)],
                     options={"ftol": 1e-12, "maxiter": 500})
      assert float(w[0] @ d[0]) == pytest.approx(float(c[0]), abs=1e-5)
      if abs(w[0] @ res.x - c[0]) < 1e-6:  # SLSQP found a feasible point: ours is no worse
        assert float(d[0] @ d[0]) <= float(res.fun) * (1 + 1e-4) + 1e-9
      # KKT, sufficient for this convex QP: d = clip(lam * w, lo, hi) for one lam.
      free = (np.abs(w[0]) > 0) & (x[0] + d[0] > 1e-6) & (x[0] + d[0] < 1 - 1e-6)
      lam = np.median(d[0][free] / w[0][free])
      np.testing.assert_allclose(d[0], np.clip(lam * w[0], -x[0], 1 - x[0]), atol=1e-5)
    else:  # unreachable: the box corner in the direction of c
      np.testing.assert_allclose(np.abs(d[0]), np.where(np.sign(c[0] * w[0]) > 0, 1 - x[0], x[0])
                                 * (w[0] != 0), atol=1e-6)


@pytest.mark.parametrize("norm,eps", [("linf", 0.05), ("l2", 0.2)])
def test_fab_finds_the_exact_minimal_attack_on_a_linear_classifier(norm, eps):
  """On a linear model, an example is breakable within eps (away from the box edges) iff
  some class j has z_j - z_y + eps * ||w_j - w_y||_dual > 0 (L1 for L-inf, L2 for L2);
  FAB-T must break exactly those."""
  from mixacm_jax.attacks import fab  # pylint: disable=g-import-not-at-top
  x = jax.random.uniform(jax.random.PRNGKey(0), (64, 4, 4, 1)) * 0.5 + 0.25
  w = jax.random.normal(jax.random.PRNGKey(1), (16, 3))
  logits_fn = lambda v: v.reshape(v.shape[0], -1) @ w
  y = jnp.argmax(logits_fn(x), -1)
  z, wn = np.asarray(logits_fn(x)), np.asarray(w)
  dual = (lambda v: np.abs(v).sum()) if norm == "linf" else np.linalg.norm
  breakable = np.array([any(z[i, j] - z[i, y[i]] + eps * dual(wn[:, j] - wn[:, y[i]]) > 0
                            for j in range(3) if j != y[i]) for i in range(64)])
  assert 0 < breakable.sum() < 64
  x_adv, fooled = jax.jit(lambda x, y: fab.fab_targeted(logits_fn, x, y, None, eps=eps,
                                                        n_iter=20, norm=norm))(x, y)
  d = np.asarray(x_adv - x).reshape(64, -1)
  assert (np.abs(d).max(1) if norm == "linf" else np.linalg.norm(d, axis=1)).max() <= eps + 1e-6
  assert abs(int(np.sum(fooled)) - int(breakable.sum())) <= 1


def test_pgd_restarts_never_weaker_than_one_run():
  x = jax.random.uniform(jax.random.PRNGKey(0), (64, 4, 4, 1)) * 0.5 + 0.25
  w = jax.random.normal(jax.random.PRNGKey(1), (16, 3))
  logits_fn = lambda v: v.reshape(v.shape[0], -1) @ w
  y = jnp.argmax(logits_fn(x), -1)
  acc = {}
  for r in (1, 4):
    x_adv, _ = pgd_lib.pgd(logits_fn, x, y, jax.random.PRNGKey(5), eps=0.03, step_size=0.003,
                        steps=2, restarts=r)
    assert float(jnp.max(jnp.abs(x_adv - x))) <= 0.03 + 1e-6
    acc[r] = float(jnp.mean(jnp.argmax(logits_fn(x_adv), -1) == y))
  # Restart 0 of the 4 is exactly the single run, so 4 restarts can only break more.
  assert acc[4] <= acc[1]


def test_square_l2_bump_matches_the_papers_construction():
  """The L2 Square attack's window perturbation: concentric squares weighted 1/k^2, the top
  half positive and the bottom half negative, each half and the whole of unit norm; built
  here by explicit loops over the rings, against the closed form used in the attack."""
  from mixacm_jax.attacks import square  # pylint: disable=g-import-not-at-top
  def rings(a, b):
    v = np.zeros((a, b))
    for k in range(max(a // 2, b // 2) + 1):  # ring k: the square of radius k about the centre
      v[max(a // 2 - k, 0):a // 2 + k + 1, max(b // 2 - k, 0):b // 2 + k + 1] += 1.0 / (k + 1) ** 2
    return v / np.sqrt((v ** 2).sum()) if v.size else v
  for side in (1, 3, 4, 7, 12, 29):
    ref = np.concatenate([rings(side // 2, side), -rings(side - side // 2, side)])
    ref /= np.sqrt((ref ** 2).sum())
    got = np.asarray(square.bump(32, 32, jnp.full((1, 1, 1, 1), 2), jnp.full((1, 1, 1, 1), 1),
                                 jnp.asarray(side), jnp.asarray(False)))[0, :, :, 0]
    np.testing.assert_allclose(got[2:2 + side, 1:1 + side], ref, atol=1e-6)
    assert np.abs(got).sum() == pytest.approx(np.abs(ref).sum(), rel=1e-5)  # zero elsewhere
    flipped = np.asarray(square.bump(32, 32, jnp.full((1, 1, 1, 1), 2), jnp.full((1, 1, 1, 1), 2),
                                     jnp.asarray(side), jnp.asarray(True)))[0, :, :, 0]
    np.testing.assert_allclose(flipped[2:2 + side, 2:2 + side], ref.T, atol=1e-6)


def test_eot_averages_loss_and_gradient_over_draws():
  from mixacm_jax.attacks import apgd  # pylint: disable=g-import-not-at-top
  w = jax.random.normal(jax.random.PRNGKey(0), (12, 4))
  def one_draw(v, rng):  # a randomized model: input noise before a nonlinearity
    def total(v):
      h = jnp.tanh((v + 0.3 * jax.random.normal(rng, v.shape)) @ w)
      per = jnp.sum(h ** 2, -1)
      return jnp.sum(per), (per, h)
    (_, (per, h)), g = jax.value_and_grad(total, has_aux=True)(v)
    return per, h, g
  v = jax.random.uniform(jax.random.PRNGKey(1), (3, 12))
  rngs = jax.random.split(jax.random.PRNGKey(2), 5)
  per, logits, g = apgd.eot_value_and_grad(one_draw, v, rngs)
  draws = [one_draw(v, r) for r in rngs]
  np.testing.assert_allclose(per, np.mean([d[0] for d in draws], 0), rtol=1e-5)
  np.testing.assert_allclose(g, np.mean([d[2] for d in draws], 0), rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(logits, draws[-1][1], rtol=1e-6)
  assert float(jnp.max(jnp.abs(draws[0][2] - draws[1][2]))) > 1e-3  # the draws do differ


def test_eot_on_a_deterministic_model_is_the_plain_attack():
  from mixacm_jax.attacks import apgd  # pylint: disable=g-import-not-at-top
  w = jax.random.normal(jax.random.PRNGKey(1), (16, 3))
  logits_fn = lambda v, rng=None: v.reshape(v.shape[0], -1) @ w
  x = jax.random.uniform(jax.random.PRNGKey(0), (32, 4, 4, 1))
  y = jnp.argmax(logits_fn(x), -1)
  plain = apgd.apgd(logits_fn, x, y, jax.random.PRNGKey(3), eps=0.05, n_iter=10)
  eot = apgd.apgd(logits_fn, x, y, jax.random.PRNGKey(3), eps=0.05, n_iter=10, eot_iter=4)
  np.testing.assert_allclose(plain[0], eot[0], atol=1e-5)
  np.testing.assert_array_equal(plain[1], eot[1])


def test_square_schedule_halves_p_at_the_original_autoattack_query_counts():
  """AutoAttack's standard Square (resc_schedule=False): p_init/2 after query 10, ... down to
  p_init/128 after query 4000 of 5000; the rescaled schedule reaches p_init/512."""
  from mixacm_jax.attacks import square  # pylint: disable=g-import-not-at-top
  p = lambda i, rescale=False: float(square.p_selection(0.8, jnp.asarray(i), 5000, rescale))
  assert [p(i) for i in (0, 10, 11, 50, 51, 200, 201, 4000, 4001, 4999)] == pytest.approx(
      [0.8, 0.8, 0.4, 0.4, 0.2, 0.2, 0.1, 0.8 / 64, 0.8 / 128, 0.8 / 128])
  assert p(4999, rescale=True) == pytest.approx(0.8 / 512)
  assert p(1000, rescale=True) == pytest.approx(0.8 / 32)  # query 1000 of 5000 = 2000/10000
  from mixacm_jax.attacks import autoattack  # pylint: disable=g-import-not-at-top
  assert not autoattack.STAGES["square"].keywords.get("rescale_schedule", False)


def test_targeted_stages_stop_attacking_points_already_broken(monkeypatch):
  """APGD-T in `run_autoattack` goes target class by target class, each on the points
  still robust: a point broken towards the 2nd class costs nothing towards the 3rd."""
  import mixacm_jax  # pylint: disable=g-import-not-at-top
  from mixacm_jax.attacks import autoattack  # pylint: disable=g-import-not-at-top
  w = jnp.asarray(np.random.RandomState(0).randn(16, 4).astype(np.float32))
  logits_fn = lambda v: v.reshape(v.shape[0], -1) @ w
  x = np.random.RandomState(1).rand(48, 4, 4, 1).astype(np.float32)
  y = np.asarray(jnp.argmax(logits_fn(x), -1))
  assert autoattack.stage_ranks("apgd-t", 4) == [2, 3, 4]
  assert autoattack.stage_ranks("apgd-ce", 4) == [None]
  calls = []
  real = autoattack.STAGES["apgd-t"]

  def recording(f, x, y, key, **kw):
    calls.append((int(kw["target_rank"]), x.shape[0]))
    return real(f, x, y, key, **kw)
  monkeypatch.setitem(autoattack.STAGES, "apgd-t", functools.partial(recording, **real.keywords))
  monkeypatch.setitem(autoattack.VERSIONS, "targeted_only", [("apgd-t", {})])
  _, after = mixacm_jax.run_autoattack(logits_fn, x, y, jax.random.PRNGKey(0), eps=0.1,
                                       version="targeted_only",
                                       overrides={"apgd-t": {"n_iter": 5}})
  per_rank = {}  # points attacked towards each target, over every device's shard
  for rank, size in calls:
    per_rank[rank] = per_rank.get(rank, 0) + size
  assert list(per_rank) == [2, 3, 4][:len(per_rank)] and per_rank
  sizes = list(per_rank.values())
  assert sizes[0] == len(y)
  assert sizes == sorted(sizes, reverse=True) and sizes[-1] < sizes[0]  # fewer left each time
  assert 0 < after["apgd-t"].sum() < len(y)


def _small_net(key, dim, classes=4):
  """A nonlinear model (so attack steps matter) as a `Partial`, as the report passes it."""
  k1, k2 = jax.random.split(key)
  params = (jax.random.normal(k1, (dim, 16)) / np.sqrt(dim), jax.random.normal(k2, (16, classes)))
  net = lambda p, v: jnp.tanh(v.reshape(v.shape[0], -1) @ p[0]) @ p[1]
  return jax.tree_util.Partial(net, params)


@pytest.mark.parametrize("name,norm", [("apgd-ce", "linf"), ("apgd-t", "l2"),
                                       ("fab-t", "linf"), ("square", "linf"),
                                       pytest.param("square", "l2", marks=pytest.mark.slow)])
def test_attack_loops_run_from_python_give_the_compiled_loops_result(name, norm):
  """On CPU a stage called outside `jit` runs its loop from Python over jitted chunks
  (`attacks.loop`); inside `jit` it is one `fori_loop`/`while_loop`: the same result."""
  from mixacm_jax.attacks import autoattack, loop  # pylint: disable=g-import-not-at-top
  net = _small_net(jax.random.PRNGKey(0), 6 * 6 * 3)
  x = jax.random.uniform(jax.random.PRNGKey(1), (24, 6, 6, 3))
  y = jnp.argmax(net(x), -1)
  eps = {"linf": 0.06, "l2": 0.4}[norm]
  settings = {"n_queries": 150} if name == "square" else {"n_iter": 12}
  run = lambda f, v: autoattack.call_stage(name, f, v, y, jax.random.PRNGKey(2),
                                           2 if autoattack.is_targeted(name) else None,
                                           eps=eps, norm=norm, **settings)
  assert loop.host_driven(x)
  from_python = run(net, x)
  compiled = jax.jit(run)(net, x)
  np.testing.assert_array_equal(from_python[1], compiled[1])
  assert 0 < int(np.sum(compiled[1])) < len(y)  # some points broken, some not: a real check
  np.testing.assert_allclose(from_python[0], compiled[0], atol=1e-5)


def test_apgd_ends_once_every_point_is_fooled_with_the_same_result(monkeypatch):
  """Once all points are fooled the loop stops (APGD keeps the first adversarial point, so
  nothing could change), and the result is that of all the iterations."""
  from mixacm_jax.attacks import apgd, loop  # pylint: disable=g-import-not-at-top
  net = _small_net(jax.random.PRNGKey(0), 4 * 4 * 3)
  x = jax.random.uniform(jax.random.PRNGKey(1), (16, 4, 4, 3))
  y = jnp.argmax(net(x), -1)
  calls = []
  real = loop._chunk  # pylint: disable=protected-access

  def counting(*args, **kw):
    calls.append(kw["length"])
    return real(*args, **kw)
  monkeypatch.setattr(loop, "_chunk", counting)
  early = apgd.apgd(net, x, y, jax.random.PRNGKey(2), eps=0.5, n_iter=60)
  assert bool(np.all(early[1])) and sum(calls) < 60
  program = apgd._program("ce", "linf", 60, 0.75, 1)  # pylint: disable=protected-access
  consts = apgd.ApgdConsts(logits_fn=net, x=x, y=y, y_target=None, key=jax.random.PRNGKey(2),
                           eps=jnp.float32(0.5))
  # No early end: the same program without its `settled`.
  full = loop.run(program._replace(settled=None), 60, consts)
  np.testing.assert_array_equal(early[0], full[0])


@pytest.mark.parametrize("name", ["apgd-ce", "square"])
def test_fooled_points_leave_the_batch_with_the_same_result(monkeypatch, name):
  """From Python, APGD and Square shrink the batch to the points not yet fooled (padded to
  a power of two) between chunks: fewer rows are computed, and every row's result is the
  one the compiled loop (which cannot shrink) gives."""
  from mixacm_jax.attacks import autoattack, loop  # pylint: disable=g-import-not-at-top
  net = _small_net(jax.random.PRNGKey(4), 6 * 6 * 3)
  x = jax.random.uniform(jax.random.PRNGKey(5), (32, 6, 6, 3))
  y = jnp.argmax(net(x), -1)
  sizes = []
  real = loop._chunk  # pylint: disable=protected-access

  def recording(start, state, consts, **kw):
    sizes.append(consts.x.shape[0])
    return real(start, state, consts, **kw)
  monkeypatch.setattr(loop, "_chunk", recording)
  settings = {"n_queries": 200} if name == "square" else {"n_iter": 40}
  run = lambda f, v: autoattack.call_stage(name, f, v, y, jax.random.PRNGKey(6), None,
                                           eps=0.08, norm="linf", **settings)
  from_python = run(net, x)
  compiled = jax.jit(run)(net, x)
  assert sizes[0] == 32 and min(sizes) < 16, sizes  # it shrank, to at most half
  assert all(s & (s - 1) == 0 for s in sizes), sizes  # powers of two
  assert 0 < int(np.sum(compiled[1])) < 32
  np.testing.assert_array_equal(from_python[1], compiled[1])
  np.testing.assert_allclose(from_python[0], compiled[0], atol=1e-5)


def test_apgd_as_original_keeps_the_last_adversarial_point_and_fools_the_same_points():
  """The switch for the original's two details: the same points fooled, but the returned
  adversarial point is the last one found (so it differs from the first for some points)."""
  from mixacm_jax.attacks import apgd  # pylint: disable=g-import-not-at-top
  net = _small_net(jax.random.PRNGKey(7), 6 * 6 * 3)
  x = jax.random.uniform(jax.random.PRNGKey(8), (32, 6, 6, 3))
  y = jnp.argmax(net(x), -1)
  run = lambda original: apgd.apgd(net, x, y, jax.random.PRNGKey(9), eps=0.08, n_iter=40,
                                   as_original=original)
  first, last = run(False), run(True)
  np.testing.assert_array_equal(first[1], last[1])
  fooled = np.asarray(first[1])
  assert 0 < fooled.sum() < len(y)
  moved = np.abs(np.asarray(first[0] - last[0])).reshape(len(y), -1).max(1)
  assert np.any(moved[fooled] > 1e-4)  # a later adversarial point was kept
  assert np.all(np.asarray(jnp.argmax(net(last[0]), -1) != y)[fooled])


def test_targets_are_random_other_classes_the_least_likely_or_the_given_one():
  from mixacm_jax.attacks import targets  # pylint: disable=g-import-not-at-top
  logits = jax.random.normal(jax.random.PRNGKey(0), (2000, 5))
  y = jnp.argmax(logits, -1)
  key = jax.random.PRNGKey(1)
  random = np.asarray(targets.choose("random", logits, y, key))
  assert np.all(random != np.asarray(y)) and set(random) == set(range(5))
  counts = np.bincount((random - np.asarray(y)) % 5, minlength=5)[1:]
  assert counts.min() > 0.2 * 2000 / 4  # each of the 4 other classes, about evenly
  np.testing.assert_array_equal(random, targets.choose("random", logits, y, key))
  # A point's target depends on its own key only (the report's per-point keys).
  per_point = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(2000))
  np.testing.assert_array_equal(targets.choose("random", logits[:7], y[:7], per_point[:7]),
                                targets.choose("random", logits, y, per_point)[:7])
  np.testing.assert_array_equal(targets.choose("least_likely", logits, y, key),
                                np.argmin(np.asarray(logits), -1))
  assert set(np.asarray(targets.choose("3", logits, y, key))) == {3}


@pytest.mark.parametrize("loss", ["ce", "margin"])
def test_targeted_pgd_moves_points_into_their_target_class(loss):
  """A linear model, L-inf eps large enough to reach any class: targeted PGD ends in the
  target class for nearly every point, inside the ball and the box, and lowers the target's
  loss; untargeted PGD does not aim at it."""
  logits_fn = _linear_model(jax.random.PRNGKey(3), 48, classes=5)
  x = jax.random.uniform(jax.random.PRNGKey(4), (64, 4, 4, 3))
  y = jnp.argmax(logits_fn(x), -1)
  t = (y + 2) % 5
  eps = 0.5
  x_t, fooled = pgd_lib.pgd(logits_fn, x, y, jax.random.PRNGKey(5), eps=eps, step_size=0.05,
                            steps=40, loss=loss, y_target=t)
  assert float(jnp.max(jnp.abs(x_t - x))) <= eps + 1e-6 and 0 <= float(x_t.min())
  assert float(x_t.max()) <= 1
  hit = np.asarray(jnp.argmax(logits_fn(x_t), -1) == t)
  assert hit.mean() > 0.9 and np.all(np.asarray(fooled)[hit])
  before = pgd_lib.LOSSES[loss](logits_fn(x), t)
  after = pgd_lib.LOSSES[loss](logits_fn(x_t), t)
  assert float(jnp.mean(after)) < float(jnp.mean(before))
  x_u, _ = pgd_lib.pgd(logits_fn, x, y, jax.random.PRNGKey(5), eps=eps, step_size=0.05,
                       steps=40, loss=loss)
  assert np.mean(np.asarray(jnp.argmax(logits_fn(x_u), -1) == t)) < hit.mean() - 0.3
