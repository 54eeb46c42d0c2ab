"""Our attacks against two references on the same model and examples: torchattacks, and the
original AutoAttack code (Croce & Hein, `pyautoattack`). The model is a small CNN trained here
(PGD-AT on the embedded digits), its weights copied by hand into an identical PyTorch module.
Both references are installed from requirements-port.txt (--no-deps)."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

torch = pytest.importorskip("torch", reason="torch==2.13.0 is in requirements.txt")
torchattacks = pytest.importorskip("torchattacks",
                                   reason="pip install --no-deps -r requirements-port.txt")

from mixacm_jax.attacks import autoattack, fab as fab_lib, pgd, square as square_lib  # noqa: E402
from mixacm_jax.evaluation import robustness  # noqa: E402
from mixacm_jax.data.digits import arrays as digits_arrays  # noqa: E402

EPS = 0.1
EPS_L2 = 0.5
N_EXAMPLES = 500


class SmallCNN(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(16, (3, 3), padding=((1, 1), (1, 1)))(x))
    x = nn.relu(nn.Conv(32, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))(x))
    return nn.Dense(10)(jnp.mean(x, axis=(1, 2)))


def _torch_copy(params):
  net = torch.nn.Sequential(
      torch.nn.Conv2d(1, 16, 3, padding=1), torch.nn.ReLU(),
      torch.nn.Conv2d(16, 32, 3, stride=2, padding=1), torch.nn.ReLU(),
      torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(32, 10))
  p = jax.tree_util.tree_map(np.array, params)  # writable copies for torch.from_numpy
  with torch.no_grad():
    for idx, name in ((0, "Conv_0"), (2, "Conv_1")):
      net[idx].weight.copy_(torch.from_numpy(p[name]["kernel"].transpose(3, 2, 0, 1).copy()))
      net[idx].bias.copy_(torch.from_numpy(p[name]["bias"]))
    net[6].weight.copy_(torch.from_numpy(p["Dense_0"]["kernel"].T.copy()))
    net[6].bias.copy_(torch.from_numpy(p["Dense_0"]["bias"]))
  return net.eval()


@pytest.fixture(scope="module")
def setup():
  x_train, y_train = digits_arrays("train")
  x_test, y_test = digits_arrays("test")
  x_all = np.concatenate([x_test, x_train])[:N_EXAMPLES]  # >= 500 real images
  y_all = np.concatenate([y_test, y_train])[:N_EXAMPLES]
  model = SmallCNN()
  params = model.init(jax.random.PRNGKey(0), x_train[:1])["params"]
  tx = optax.adam(3e-3)
  opt = tx.init(params)

  @jax.jit
  def step(params, opt, x, y, key):
    f = lambda v: model.apply({"params": params}, v)
    x_adv, _ = pgd.pgd(f, x, y, key, eps=EPS, step_size=EPS / 3, steps=3)
    loss = lambda p: jnp.mean(optax.softmax_cross_entropy_with_integer_labels(
        model.apply({"params": p}, x_adv), y))
    g = jax.grad(loss)(params)
    updates, opt = tx.update(g, opt)
    return optax.apply_updates(params, updates), opt

  rng = np.random.RandomState(0)
  for i in range(400):
    idx = rng.randint(0, len(y_train), 128)
    params, opt = step(params, opt, x_train[idx], y_train[idx], jax.random.PRNGKey(i))
  net = _torch_copy(params)
  logits_fn = jax.jit(lambda v: model.apply({"params": params}, v))
  x_t = torch.from_numpy(x_all.transpose(0, 3, 1, 2).copy())
  y_t = torch.from_numpy(y_all.astype(np.int64))
  with torch.no_grad():
    ref = net(x_t).numpy()
  assert np.max(np.abs(np.asarray(logits_fn(x_all)) - ref)) < 1e-4
  return logits_fn, net, jnp.asarray(x_all), jnp.asarray(y_all), x_t, y_t


def _acc_ours(logits_fn, x_adv, y):
  return float(jnp.mean(jnp.argmax(logits_fn(x_adv), -1) == y))


def _acc_torch(net, x_adv, y):
  with torch.no_grad():
    return float((net(x_adv).argmax(1) == y).float().mean())


@pytest.mark.slow
def test_pgd20_matches_torchattacks(setup):
  logits_fn, net, x, y, x_t, y_t = setup
  ours = _acc_ours(logits_fn, jax.jit(lambda x, y: pgd.pgd(
      logits_fn, x, y, jax.random.PRNGKey(1), eps=EPS, step_size=EPS / 4, steps=20)[0])(x, y), y)
  torch.manual_seed(0)
  theirs = _acc_torch(net, torchattacks.PGD(net, eps=EPS, alpha=EPS / 4, steps=20,
                                            random_start=True)(x_t, y_t), y_t)
  clean = _acc_ours(logits_fn, x, y)
  print(f"clean {clean:.4f}  PGD-20 ours {ours:.4f}  torchattacks {theirs:.4f}")
  assert 0.2 < ours < clean  # a model with some robustness, and an attack that bites
  assert abs(ours - theirs) <= 0.01


@pytest.mark.slow
@pytest.mark.parametrize("norm,eps", [("linf", EPS), ("l2", EPS_L2)])
def test_autoattack_stages_match_torchattacks(setup, norm, eps):
  """AutoAttack's standard stages in sequence, each on the points the earlier ones left:
  APGD-CE (100 it.), APGD-T (9 targets, 100 it.), FAB-T (9 targets, 100 it.), Square (5000
  queries for L-inf; 1000 for L2, on both sides, to fit CI); torchattacks' stages with the
  same settings. (torchattacks' own AutoAttack class runs APGD, APGD-T and FAB with 10 steps
  by default, a weaker attack.)"""
  logits_fn, net, x, y, x_t, y_t = setup
  queries = 5000 if norm == "linf" else 1000
  key = jax.random.PRNGKey(2)
  # The library's one-call AutoAttack (the same sequence the report runs).
  x_adv, robust_after = robustness.run_autoattack(logits_fn, x, y, key, eps=eps, norm=norm,
                                                  overrides={"square": {"n_queries": queries}})
  d = np.asarray(x_adv - x).reshape(len(y), -1)
  assert (np.abs(d).max(1) if norm == "linf" else np.linalg.norm(d, axis=1)).max() <= eps + 1e-5
  assert np.asarray(x_adv).min() >= 0 and np.asarray(x_adv).max() <= 1
  assert list(robust_after) == ["apgd-ce", "apgd-t", "fab-t", "square"]
  ours_after = [r.mean() for r in robust_after.values()]
  # The returned points are adversarial exactly where a stage broke the point.
  broken = ~robust_after["square"] & np.asarray(jnp.argmax(logits_fn(x), -1) == y)
  assert np.all(np.asarray(jnp.argmax(logits_fn(jnp.asarray(x_adv)), -1))[broken]
                != np.asarray(y)[broken])
  their_norm = {"linf": "Linf", "l2": "L2"}[norm]
  stages = [torchattacks.APGD(net, norm=their_norm, eps=eps, steps=100, loss="ce", n_restarts=1,
                              seed=0),
            torchattacks.APGDT(net, norm=their_norm, eps=eps, steps=100, n_classes=10,
                               n_restarts=1, seed=0),
            torchattacks.FAB(net, norm=their_norm, eps=eps, steps=100, n_classes=10,
                             n_restarts=1, multi_targeted=True, seed=0),
            torchattacks.Square(net, norm=their_norm, eps=eps, n_queries=queries, n_restarts=1,
                                resc_schedule=False,
                                seed=0)]
  with torch.no_grad():
    t_robust = (net(x_t).argmax(1) == y_t).numpy()
  theirs_after = []
  for attack in stages:
    idx = np.flatnonzero(t_robust)
    if len(idx):
      adv = attack(x_t[idx], y_t[idx])
      with torch.no_grad():
        t_robust[idx] = (net(adv).argmax(1) == y_t[idx]).numpy()
    theirs_after.append(t_robust.mean())
  print(f"{norm} eps={eps}: robust accuracy after each stage: ours", ours_after,
        "torchattacks", theirs_after)
  assert ours_after[-1] < _acc_ours(logits_fn, x, y)
  assert abs(ours_after[-1] - theirs_after[-1]) <= 0.01
  assert abs(ours_after[0] - theirs_after[0]) <= 0.01


def _original_sequence(net, x_t, y_t, eps, norm, n_queries, version="standard", stages=None):
  """The original AutoAttack's sequence of `version` (or its first `stages`), stage by
  stage, exactly as its `run_standard_evaluation` drives its attack objects (each on the
  points still robust)."""
  pyautoattack = pytest.importorskip("pyautoattack",
                                     reason="pip install --no-deps -r requirements-port.txt")
  adversary = pyautoattack.AutoAttack(net, norm={"linf": "Linf", "l2": "L2", "l1": "L1"}[norm],
                                      eps=eps, version=version, seed=0)
  adversary.square.n_queries = n_queries
  with torch.no_grad():
    robust = (net(x_t).argmax(1) == y_t).numpy()
  after = {}
  for stage in list(adversary.attacks_to_run)[:stages]:
    idx = np.flatnonzero(robust)
    if len(idx):
      if stage in ("apgd-ce", "apgd-dlr"):
        adversary.apgd.loss = stage[5:]
        attack = adversary.apgd
      elif stage == "apgd-t":
        attack = adversary.apgd_targeted
      elif stage == "fab":
        adversary.fab.targeted = False
        attack = adversary.fab
      elif stage == "fab-t":
        adversary.fab.targeted, adversary.fab.n_restarts = True, 1
        attack = adversary.fab
      else:
        attack = adversary.square
      attack.seed = 0
      adv = attack.perturb(x_t[idx], y_t[idx])
      with torch.no_grad():
        robust[idx] = (net(adv).argmax(1) == y_t[idx]).numpy()
    after[stage] = robust.copy()
  return after


def _compare_stages(label, ours, theirs, clean_logits, y, *, bites, differ):
  """After every stage, robust accuracy within 2.5 points of the original's and at most
  `differ` points differing; after stage `bites`, 10 points below clean accuracy."""
  print(f"{label}: robust % after each stage: ours",
        [round(100 * float(v.mean()), 1) for v in ours.values()], "original",
        [round(100 * float(v.mean()), 1) for v in theirs.values()])
  clean = np.asarray(jnp.argmax(clean_logits, -1) == y).mean()
  assert ours[bites].mean() < clean - 0.1  # the attack bites on this model
  for stage in ours:
    assert abs(ours[stage].mean() - theirs[stage].mean()) <= 0.025 + 1e-9, stage
    assert np.sum(ours[stage] != theirs[stage]) <= differ, stage


@pytest.mark.slow
@pytest.mark.parametrize("norm,eps", [("linf", EPS), ("l2", EPS_L2)])
def test_autoattack_matches_the_original_code_stage_by_stage(setup, norm, eps):
  """Same model, same 120 digits: after every stage the robust accuracy is within 2.5 points
  (3 of 120) and at most 5 points differ in being broken. The tolerance is the random
  start: APGD starts from a random point of the ball (their torch generator, our JAX key),
  so near-boundary points can fall either way; FAB-T and Square's first iterate, and all of
  FAB-T, are deterministic given the points that reach them. Square with 1000 queries on both
  sides (the CI budget), at the original's fixed schedule (resc_schedule=False)."""
  logits_fn, net, x, y, x_t, y_t = setup
  n = 120
  x, y, x_t, y_t = x[:n], y[:n], x_t[:n], y_t[:n]
  theirs = _original_sequence(net, x_t, y_t, eps, norm, 1000)
  x_adv, ours = robustness.run_autoattack(logits_fn, x, y, jax.random.PRNGKey(0), eps=eps,
                                          norm=norm, overrides={"square": {"n_queries": 1000}})
  d = np.asarray(x_adv - np.asarray(x)).reshape(n, -1)
  size = np.abs(d).max(1) if norm == "linf" else np.linalg.norm(d, axis=1)
  assert size.max() <= eps + 1e-5 and x_adv.min() >= 0 and x_adv.max() <= 1
  _compare_stages(f"{norm} eps={eps}", ours, theirs, logits_fn(x), y, bites="square",
                  differ=5)


def _tanh_net(seed=0, dim=48, hidden=32, classes=5):
  """A small nonlinear classifier in JAX and the same in PyTorch (NCHW input, flattened in
  NHWC order as JAX does)."""
  rng = np.random.RandomState(seed)
  w1 = (rng.randn(dim, hidden) / np.sqrt(dim)).astype(np.float32)
  w2 = rng.randn(hidden, classes).astype(np.float32)

  class Net(torch.nn.Module):
    def forward(self, v):
      v = v.permute(0, 2, 3, 1).reshape(v.shape[0], -1)
      return torch.tanh(v @ torch.from_numpy(w1)) @ torch.from_numpy(w2)
  return (lambda v: jnp.tanh(v.reshape(v.shape[0], -1) @ w1) @ w2), Net()


@pytest.mark.parametrize("norm,eps", [("linf", 0.05), ("l2", 0.3), ("l1", 1.0)])
def test_untargeted_fab_matches_the_original_code_point_by_point(norm, eps):
  """Untargeted FAB (AutoAttack's `plus`) from x, no random start: the original's
  `attack_single_run` and ours find the same smallest perturbation for every point (to
  1e-4), so they break the same points at eps."""
  pyautoattack = pytest.importorskip("pyautoattack",
                                     reason="pip install --no-deps -r requirements-port.txt")
  from pyautoattack.fab_pt import FABAttack_PT  # pylint: disable=g-import-not-at-top
  f, net = _tanh_net()
  x = np.random.RandomState(1).rand(40, 4, 4, 3).astype(np.float32)
  y = np.asarray(jnp.argmax(f(x), -1)).astype(np.int32)
  original = FABAttack_PT(net, norm={"linf": "Linf", "l2": "L2", "l1": "L1"}[norm], n_restarts=1,
                          n_iter=100, eps=eps, device="cpu")
  del pyautoattack
  theirs = original.attack_single_run(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()),
                                      torch.from_numpy(y.astype(np.int64))).numpy()
  theirs = theirs.transpose(0, 2, 3, 1)
  size = lambda a: {"linf": lambda d: np.abs(d).max(1), "l1": lambda d: np.abs(d).sum(1),
                    "l2": lambda d: np.linalg.norm(d, axis=1)}[norm]((a - x).reshape(len(x), -1))
  # Ours at a large eps returns each point's smallest adversarial perturbation found.
  unbounded, _ = fab_lib.fab_untargeted(f, jnp.asarray(x), jnp.asarray(y), None, eps=1e3,
                                        norm=norm)
  found = size(theirs) > 0
  assert found.sum() >= 20  # most points have a boundary within reach
  np.testing.assert_allclose(size(np.asarray(unbounded))[found], size(theirs)[found], atol=1e-4)
  _, fooled = fab_lib.fab_untargeted(f, jnp.asarray(x), jnp.asarray(y), None, eps=eps, norm=norm)
  their_fooled = (np.asarray(jnp.argmax(f(theirs), -1)) != y) & (size(theirs) <= eps + 1e-6)
  assert 0 < their_fooled.sum() < len(x)
  np.testing.assert_array_equal(np.asarray(fooled), their_fooled)


@pytest.mark.slow
def test_autoattack_plus_matches_the_original_code_stage_by_stage(setup):
  """AutoAttack `plus` (APGD-CE and APGD-DLR with 5 restarts, untargeted FAB with 5, Square,
  APGD-T, FAB-T) on the same model and 60 digits, L-inf: after every stage the robust
  accuracy is within 2.5 points of the original's and at most 3 points differ (the random
  starts: their torch generator, our JAX keys). Square with 1000 queries on both sides."""
  logits_fn, net, x, y, x_t, y_t = setup
  n = 60
  x, y, x_t, y_t = x[:n], y[:n], x_t[:n], y_t[:n]
  theirs = _original_sequence(net, x_t, y_t, EPS, "linf", 1000, version="plus")
  assert list(theirs) == autoattack.get_version("plus")
  _, ours = robustness.run_autoattack(logits_fn, x, y, jax.random.PRNGKey(0), eps=EPS,
                                      version="plus", overrides={"square": {"n_queries": 1000}})
  _compare_stages("plus", ours, theirs, logits_fn(x), y, bites="fab-t", differ=3)


@pytest.mark.slow
def test_autoattack_l1_matches_the_original_code_stage_by_stage(setup):
  """Under L1 (eps = 2 on the 8x8 digits) the original's standard version: APGD-CE (5
  restarts) and APGD-T (5 target classes), both with its large-radius phases, then FAB-T and
  Square in their L1 forms (1000 queries on both sides). On the same model and 120 digits,
  after each stage robust accuracy within 2.5 points and at most 3 points differing (the
  random starts: their torch generator, our JAX keys)."""
  logits_fn, net, x, y, x_t, y_t = setup
  n, eps = 120, 2.0
  x, y, x_t, y_t = x[:n], y[:n], x_t[:n], y_t[:n]
  theirs = _original_sequence(net, x_t, y_t, eps, "l1", 1000)
  x_adv, ours = robustness.run_autoattack(logits_fn, x, y, jax.random.PRNGKey(0), eps=eps,
                                          norm="l1", overrides={"square": {"n_queries": 1000}})
  assert list(ours) == list(theirs) == ["apgd-ce", "apgd-t", "fab-t", "square"]
  size = np.abs(np.asarray(x_adv - np.asarray(x))).reshape(n, -1).sum(1)
  assert size.max() <= eps * (1 + 1e-5) and x_adv.min() >= 0 and x_adv.max() <= 1
  _compare_stages(f"l1 eps={eps}", ours, theirs, logits_fn(x), y, bites="apgd-ce", differ=3)


@pytest.mark.slow
@pytest.mark.parametrize("eps", [2.0, 4.0])
def test_square_l1_matches_the_original_code(setup, eps):
  """Square under L1 (1000 queries) on the same model and 120 digits, with windows placed as
  the original places them (`original_positions`): robust accuracy within 5 points of the
  original's (the random search: their torch generator, our JAX keys)."""
  pyautoattack = pytest.importorskip("pyautoattack.square",
                                     reason="pip install --no-deps -r requirements-port.txt")
  logits_fn, net, x, y, x_t, y_t = setup
  n = 120
  x, y, x_t, y_t = x[:n], y[:n], x_t[:n], y_t[:n]
  attack = pyautoattack.SquareAttack(net, p_init=0.8, n_queries=1000, eps=eps, norm="L1",
                                     n_restarts=1, seed=0, device="cpu", resc_schedule=False)
  theirs = _acc_torch(net, attack.perturb(x_t, y_t), y_t)
  x_adv, _ = square_lib.square(logits_fn, x, y, jax.random.PRNGKey(0), eps=eps,
                               n_queries=1000, norm="l1", original_positions=True)
  size = np.abs(np.asarray(x_adv - np.asarray(x))).reshape(n, -1).sum(1)
  assert size.max() <= eps * (1 + 1e-5) and x_adv.min() >= 0 and x_adv.max() <= 1
  ours = _acc_ours(logits_fn, x_adv, y)
  print(f"Square L1 eps={eps}: robust ours {ours:.4f} original {theirs:.4f}")
  assert ours < _acc_ours(logits_fn, x, y) - 0.1  # the search bites
  assert abs(ours - theirs) <= 0.05
