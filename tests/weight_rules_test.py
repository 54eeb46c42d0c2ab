"""What the step does to the weights for any objective: the moving average (EMA) and
adversarial weight perturbation (AWP), against closed forms computed here."""
import jax
import numpy as np
import pytest

from mixacm_jax import models, objectives
from mixacm_jax.data import input_pipeline
from mixacm_jax.errors import CheckpointError, ConfigError
from mixacm_jax.runtime import checkpoint, parallel
from mixacm_jax.training import train


def _plain_sgd(config):
  """Constant learning rate, no momentum, no weight decay: w' = w - lr * g."""
  config.optim.schedule, config.optim.warmup_epochs = "constant", 0.0
  config.optim.momentum, config.optim.weight_decay = 0.0, 0.0
  config.optim.learning_rate = 0.05


def _state_and_step(config, objective="natural", n_devices=1, steps_per_epoch=10):
  info = input_pipeline.get_info(config.data)
  model = models.create_model_from_config(config.model, info.num_classes)
  state = train.create_train_state(model, info.image_shape, config.optim, seed=0,
                                   steps_per_epoch=steps_per_epoch, total_steps=100)
  step = train.make_p_train_step(config.objective, model, objectives.get_objective(objective),
                                 devices=jax.devices()[:n_devices],
                                 rules=train.WeightRules.of(config.optim, steps_per_epoch))
  return model, state, step


def _steps(step, state, batches, n_devices=1):
  """The host states after each step."""
  devices = jax.devices()[:n_devices]
  p_state, states = parallel.replicate(state, devices=devices), []
  for b in batches:
    b = {k: v.reshape((n_devices, -1) + v.shape[2:]) for k, v in b.items()}
    p_state, _ = step(p_state, b, parallel.replicate({}, devices=devices))
    states.append(jax.device_get(parallel.unreplicate(p_state)))
  return states


def _batches(config, n):
  it = input_pipeline.train_batches(config.data, 16, seed=0)
  return [next(it) for _ in range(n)]


def _max_diff(a, b):
  return max(jax.tree_util.tree_leaves(jax.tree_util.tree_map(
      lambda x, y: float(np.max(np.abs(np.asarray(x) - np.asarray(y)))), a, b)))


def test_ema_equals_the_closed_form_after_k_steps(tiny_config):
  tiny_config.optim.ema.decay = d = 0.8
  _, state, step = _state_and_step(tiny_config)
  w0 = jax.device_get(state.params["model"])
  assert _max_diff(state.ema_params, w0) == 0  # starts at the initial weights
  states = _steps(step, state, _batches(tiny_config, 4))
  k = len(states)
  # ema_k = d^k w_0 + (1 - d) sum_i d^(k - i) w_i, over the weights after each step.
  expected = jax.tree_util.tree_map(
      lambda w0, *ws: d ** k * np.asarray(w0) + (1 - d) * sum(
          d ** (k - i) * np.asarray(w, np.float64) for i, w in enumerate(ws, 1)),
      w0, *[s.params["model"] for s in states])
  assert _max_diff(states[-1].ema_params, expected) < 1e-5
  assert _max_diff(states[-1].ema_params, states[-1].params["model"]) > 1e-3  # it lags


def test_without_ema_the_state_keeps_no_copy(tiny_config):
  _, state, _ = _state_and_step(tiny_config)
  assert state.ema_params == {}


def _reference_awp_grads(model, state, objective, cfg, batch, gamma):
  """The AWP gradient by hand: g at w, v_l = gamma ||w_l|| g_l / ||g_l|| for kernels, then the
  gradient at w + v with the inner maximisation still at w."""
  forward = train.make_forward(model)
  ctx = objectives.ObjectiveContext(
      forward=lambda p, *a: forward(p["model"], *a), batch_stats=state.batch_stats,
      cfg=cfg, rng=jax.random.fold_in(state.rng, state.step), attack_params=state.params)
  loss = objectives.get_objective(objective).loss_fn
  batch = {k: v.reshape((-1,) + v.shape[2:]) for k, v in batch.items()}  # one device
  g = jax.grad(lambda p: loss(p, ctx, batch)[0])(state.params)["model"]
  flat_w, tree = jax.tree_util.tree_flatten_with_path(state.params["model"])
  flat_v = []
  for (path, w), gl in zip(flat_w, jax.tree_util.tree_leaves(g)):
    w, gl = np.asarray(w, np.float64), np.asarray(gl, np.float64)
    kernel = path[-1].key == "kernel"  # conv and dense kernels only
    flat_v.append(gamma * np.linalg.norm(w) / np.linalg.norm(gl) * gl if kernel
                  else np.zeros_like(w))
  v = jax.tree_util.tree_unflatten(tree, flat_v)
  perturbed = {**state.params, "model": jax.tree_util.tree_map(
      lambda w, v: w + v.astype(np.float32), state.params["model"], v)}
  return jax.grad(lambda p: loss(p, ctx, batch)[0])(perturbed)["model"], v


@pytest.mark.parametrize("objective", ["natural", "pgd_at"])
def test_awp_gradient_is_taken_at_w_plus_v_and_applied_to_w(tiny_config, objective):
  _plain_sgd(tiny_config)
  tiny_config.optim.awp.gamma = gamma = 0.05
  tiny_config.objective.pgd_at.attack.steps = 2
  model, state, step = _state_and_step(tiny_config, objective)
  batch = _batches(tiny_config, 1)[0]
  after = _steps(step, state, [batch])[0]
  grads, v = _reference_awp_grads(model, state, objective,
                                  tiny_config.objective[objective], batch, gamma)
  lr = tiny_config.optim.learning_rate
  expected = jax.tree_util.tree_map(lambda w, g: np.asarray(w) - lr * np.asarray(g),
                                    state.params["model"], grads)
  # The update lands on w (the perturbation is gone), with the gradient of w + v.
  assert _max_diff(after.params["model"], expected) < 1e-5
  plain = _steps(_plain_step(tiny_config, objective), state, [batch])[0]
  assert _max_diff(after.params["model"], plain.params["model"]) > 1e-4  # AWP did something
  norms = [np.linalg.norm(x) for x in jax.tree_util.tree_leaves(v) if np.ndim(x) > 1]
  assert min(norms) > 0


def _plain_step(config, objective):
  plain = config.copy_and_resolve_references()
  plain.optim.awp.gamma = 0.0
  return _state_and_step(plain, objective)[2]


def test_awp_waits_its_warmup_then_perturbs(tiny_config):
  _plain_sgd(tiny_config)
  tiny_config.optim.awp.gamma, tiny_config.optim.awp.warmup_epochs = 0.05, 0.2  # 2 steps
  _, state, step = _state_and_step(tiny_config, steps_per_epoch=10)
  batches = _batches(tiny_config, 3)
  with_awp = _steps(step, state, batches)
  plain = _steps(_plain_step(tiny_config, "natural"), state, batches)
  assert _max_diff(with_awp[1].params, plain[1].params) < 1e-6  # steps 1-2: plain
  assert _max_diff(with_awp[2].params, plain[2].params) > 1e-4  # step 3: perturbed


@pytest.mark.parametrize("warmup_epochs", [0.0, 0.1])  # 0.1: the first step plain (lax.cond)
def test_awp_and_ema_make_the_same_update_on_one_and_two_devices(tiny_config, warmup_epochs):
  if jax.device_count() < 2:
    pytest.skip("needs 2 devices (set XLA_FLAGS=--xla_force_host_platform_device_count=2)")
  tiny_config.optim.awp.gamma, tiny_config.optim.ema.decay = 0.01, 0.9
  tiny_config.optim.awp.warmup_epochs = warmup_epochs
  tiny_config.objective.pgd_at.attack.steps = 2
  batches = _batches(tiny_config, 3)
  _, state, one_step = _state_and_step(tiny_config, "pgd_at", 1)
  two_step = _state_and_step(tiny_config, "pgd_at", 2)[2]
  one, two = _steps(one_step, state, batches, 1)[-1], _steps(two_step, state, batches, 2)[-1]
  assert _max_diff((one.params, one.ema_params, one.batch_stats),
                   (two.params, two.ema_params, two.batch_stats)) < 1e-5


def test_a_run_with_ema_evaluates_checkpoints_and_loads_both_weights(tiny_config, tmp_path):
  tiny_config.optim.ema.decay = 0.5
  tiny_config.checkpoint.best_metric = "ema/robust_accuracy"
  result = train.train_and_evaluate(tiny_config, str(tmp_path))
  assert {"ema/clean_accuracy", "ema/robust_accuracy", "ema/pgd/pgd2"} <= set(result)
  info = input_pipeline.get_info(tiny_config.data)
  model = models.create_model_from_config(tiny_config.model, info.num_classes)
  raw = checkpoint.load_variables(model, info.image_shape, str(tmp_path))
  averaged = checkpoint.load_variables(model, info.image_shape, str(tmp_path), weights="ema")
  assert _max_diff(raw["params"], result["state"].params["model"]) == 0
  assert _max_diff(averaged["params"], result["state"].ema_params) == 0
  assert _max_diff(raw["params"], averaged["params"]) > 0
  tiny_config.optim.ema.decay, tiny_config.checkpoint.best_metric = 0.0, "robust_accuracy"
  train.train_and_evaluate(tiny_config.copy_and_resolve_references(), str(tmp_path / "plain"))
  with pytest.raises(CheckpointError, match="keeps no moving average of its weights"):
    checkpoint.load_variables(model, info.image_shape, str(tmp_path / "plain"), weights="ema")


@pytest.mark.parametrize("key,value,match", [
    ("optim.ema.decay", 1.0, r"optim.ema.decay must be in \[0, 1\)"),
    ("optim.awp.gamma", -0.1, "gamma"),
    ("eval.weights", "averaged", "eval.weights must be one of"),
])
def test_bad_weight_settings_are_one_line_errors(tiny_config, key, value, match):
  from mixacm_jax.configs import checks  # pylint: disable=g-import-not-at-top
  group, name = key.rsplit(".", 1)
  section = tiny_config
  for part in group.split("."):
    section = section[part]
  section[name] = value
  with pytest.raises(ConfigError, match=match):
    checks.validate(tiny_config)


def test_awp_is_charged_its_proxy_pass(tiny_config, tmp_path):
  tiny_config.objective.name = "pgd_at"
  tiny_config.objective.pgd_at.attack.steps = 1
  tiny_config.optim.awp.gamma = 0.01
  result = train.train_and_evaluate(tiny_config, str(tmp_path))
  # PGD-1: 2 forward + 2 backward passes per example-step, twice per step with AWP.
  assert result["passes_per_example"] == 8
  assert result["student_forward_passes"] == 2 * 2 * 6 * 32


def test_resuming_with_the_moving_average_switched_is_one_clear_error(tiny_config, tmp_path):
  tiny_config.optim.num_steps = 3
  train.train_and_evaluate(tiny_config, str(tmp_path))
  tiny_config.optim.num_steps, tiny_config.optim.ema.decay = 6, 0.9
  with pytest.raises(ConfigError, match=r"was written without a moving average of the weights "
                                        r"\(optim.ema.decay\), this run is with it"):
    train.train_and_evaluate(tiny_config, str(tmp_path))
