"""Training engine: data-parallel equivalence, loss decrease, resume, NaN handling."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mixacm_jax import models, objectives
from mixacm_jax.configs import default
from mixacm_jax.data import input_pipeline
from mixacm_jax.errors import NonFiniteLossError
from mixacm_jax.runtime import checkpoint, parallel
from mixacm_jax.training import train


def _setup(config):
  info = input_pipeline.get_info(config.data)
  model = models.create_model_from_config(config.model, info.num_classes)
  state = train.create_train_state(model, info.image_shape, config.optim, seed=config.seed,
                                   steps_per_epoch=10, total_steps=100)
  return model, state


def _pmapped_step(config, model, n_devices, objective_name):
  return train.make_p_train_step(config.objective, model,
                                 objectives.get_objective(objective_name),
                                 devices=jax.devices()[:n_devices])


def _run_steps(step, state, batches, n_devices):
  p_state = parallel.replicate(state, devices=jax.devices()[:n_devices])
  for b in batches:
    b = {k: v.reshape((n_devices, -1) + v.shape[2:]) for k, v in b.items()}
    p_state, metrics = step(p_state, b, parallel.replicate({}, devices=jax.devices()[:n_devices]))
  return parallel.unreplicate(p_state), parallel.unreplicate(metrics)


# TRADES' inner sign-gradient steps on a KL that starts near zero turn float-rounding
# differences into sign flips, so its equality is checked with the attack's steps at 0
# (random start, two train-mode passes and the KL term still run).
@pytest.mark.parametrize("objective,attack_steps", [("natural", 0), ("pgd_at", 2), ("fast_at", 1),
                                                   ("mixup", 0), ("trades", 0), ("mart", 2)])
def test_one_vs_two_devices_same_update(tiny_config, objective, attack_steps):
  if jax.device_count() < 2:
    pytest.skip("needs 2 devices (set XLA_FLAGS=--xla_force_host_platform_device_count=2)")
  tiny_config.objective.name = objective
  for method in default.ADVERSARIAL_METHODS:
    tiny_config.objective[method].attack.steps = attack_steps
  model, state = _setup(tiny_config)
  it = input_pipeline.train_batches(tiny_config.data, 16, seed=0)
  batches = [next(it) for _ in range(3)]
  one, m1 = _run_steps(_pmapped_step(tiny_config, model, 1, objective), state, batches, 1)
  two, m2 = _run_steps(_pmapped_step(tiny_config, model, 2, objective), state, batches, 2)
  assert int(one.step) == int(two.step) == 3
  diffs = jax.tree_util.tree_map(lambda a, b: float(jnp.max(jnp.abs(a - b))),
                                 (one.params, one.batch_stats), (two.params, two.batch_stats))
  assert max(jax.tree_util.tree_leaves(diffs)) < 1e-5
  np.testing.assert_allclose(m1["loss"], m2["loss"], rtol=1e-5)
  moved = jax.tree_util.tree_map(lambda a, b: float(jnp.max(jnp.abs(a - b))), state.params,
                                 one.params)
  assert max(jax.tree_util.tree_leaves(moved)) > 1e-3


def test_loss_falls_on_a_fixed_batch(tiny_config):
  tiny_config.optim.schedule = "constant"
  tiny_config.optim.learning_rate = 0.05
  model, state = _setup(tiny_config)
  batch = next(input_pipeline.train_batches(tiny_config.data, 32, seed=0))
  batch = {k: v.reshape((1, -1) + v.shape[2:]) for k, v in batch.items()}
  losses = []
  step = _pmapped_step(tiny_config, model, 1, "natural")
  for _ in range(4):
    state, metrics = _run_steps(step, state, [batch] * 10, 1)
    losses.append(float(metrics["loss"]))
  assert losses[-1] < 0.5 * losses[0], losses  # memorises the batch


def _params_equal(a, b):
  return all(jax.tree_util.tree_leaves(jax.tree_util.tree_map(
      lambda x, y: bool(np.array_equal(x, y)), a, b)))


def test_resume_after_interruption_reproduces_uninterrupted_run(tiny_config, tmp_path,
                                                                monkeypatch):
  tiny_config.objective.name = "pgd_at"
  tiny_config.objective.pgd_at.attack.steps = 1
  full = train.train_and_evaluate(tiny_config, str(tmp_path / "full"))

  real_batches = input_pipeline.train_batches

  def crashing_batches(*args, **kwargs):
    for i, batch in enumerate(real_batches(*args, **kwargs)):
      if i == 4:  # the checkpoint of step 3 exists; step 5's batch never arrives
        raise RuntimeError("simulated crash")
      yield batch

  monkeypatch.setattr(input_pipeline, "train_batches", crashing_batches)
  with pytest.raises(RuntimeError, match="simulated crash"):
    train.train_and_evaluate(tiny_config, str(tmp_path / "resumed"))
  monkeypatch.setattr(input_pipeline, "train_batches", real_batches)
  resumed = train.train_and_evaluate(tiny_config, str(tmp_path / "resumed"))
  assert resumed["resumed_from"] == 3 and int(resumed["state"].step) == 6
  assert _params_equal((full["state"].params, full["state"].batch_stats, full["state"].opt_state),
                       (resumed["state"].params, resumed["state"].batch_stats,
                        resumed["state"].opt_state))
  assert resumed["clean_accuracy"] == full["clean_accuracy"]
  summary = json.loads((tmp_path / "resumed" / "summary.json").read_text())
  assert summary["steps"] == 6 and summary["resumed_from"] == 3
  assert os.path.exists(tmp_path / "resumed" / "metrics.jsonl")
  # Run again once finished: nothing to train, the restored model is evaluated (the
  # pipeline's table must not lose its accuracies on a second run).
  again = train.train_and_evaluate(tiny_config, str(tmp_path / "resumed"))
  assert again["steps"] == 6 and again["resumed_from"] == 3  # the training's summary, kept
  assert again["train_seconds"] == resumed["train_seconds"]
  assert again["clean_accuracy"] == full["clean_accuracy"]
  assert again["robust_accuracy"] == full["robust_accuracy"]
  # One engine: training-time evaluation is the robustness report of the same checkpoint
  # with the same attacks (--mode=eval --config.eval.attacks=clean,pgd2).
  from mixacm_jax import models  # pylint: disable=g-import-not-at-top
  from mixacm_jax.evaluation import robustness  # pylint: disable=g-import-not-at-top
  info = input_pipeline.get_info(tiny_config.data)
  model = models.create_model_from_config(tiny_config.model, info.num_classes)
  eval_cfg = tiny_config.eval.copy_and_resolve_references()
  eval_cfg.attacks = tiny_config.train_evals.pgd.attacks
  assert eval_cfg.attacks == "clean,pgd2" and eval_cfg.num_examples == 128
  report = robustness.report_on_split(
      model, checkpoint.load_variables(model, info.image_shape, str(tmp_path / "full")),
      tiny_config.data, eval_cfg, seed=tiny_config.seed, verbose=False)
  assert report["clean_accuracy"] == full["clean_accuracy"]
  assert report["attacks"]["pgd2"]["robust_accuracy"] == full["robust_accuracy"]
  assert report["num_examples"] == full["num_examples"] == 128


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tiny_config, tmp_path):
  # A learning rate this large makes the loss overflow within a few steps.
  tiny_config.optim.learning_rate = 1e30
  tiny_config.optim.schedule = "constant"
  tiny_config.checkpoint.every_steps = 1
  tiny_config.log_every_steps = 1
  # The loss, or first the state (weights, BatchNorm statistics), stops being finite.
  with pytest.raises(NonFiniteLossError, match=r"non-finite .*loss.* at step (\d+)|the state "
                     r"is not finite at step (\d+)") as err:
    train.train_and_evaluate(tiny_config, str(tmp_path))
  bad_step = int(str(err.value).split(" at step ")[1].split(" ")[0])
  steps = sorted(int(d) for d in os.listdir(tmp_path / "checkpoints") if d.isdigit())
  assert bad_step > 1 and steps and max(steps) == bad_step - 1
  assert f"the checkpoint of step {bad_step - 1} is the last good one" in str(err.value)
  reader = checkpoint.Checkpointer(str(tmp_path / "checkpoints"), read_only=True)
  for step in steps:  # every saved state is finite
    assert not checkpoint.nonfinite_entries(reader.restore(None, step)[0])


def test_empty_split_and_unknown_digits_split_are_clear_errors(tiny_config, tmp_path,
                                                               monkeypatch):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  from mixacm_jax.errors import ConfigError, DataError  # pylint: disable=g-import-not-at-top
  tiny_config.data.eval_split = "val"
  with pytest.raises(ConfigError, match="has splits 'train', 'validation', 'test', not 'val'"):
    train.train_and_evaluate(tiny_config, str(tmp_path / "a"))
  # TFDS' mock data ignores split slicing, so the empty split is simulated at its size.
  tiny_config.data.name, tiny_config.data.eval_split = "cifar10", "test"
  real = input_pipeline._tfds_source
  monkeypatch.setattr(input_pipeline, "_tfds_source",
                      lambda name, split, d, *rest: [] if split == "test" else real(name, split, d))
  with tfds.testing.mock_data(num_examples=8):
    with pytest.raises(DataError, match="split 'test' of dataset 'cifar10' is empty"):
      train.train_and_evaluate(tiny_config, str(tmp_path / "b"))


def test_disk_full_on_save_is_one_clear_error_and_keeps_the_last_checkpoint(
    tiny_config, tmp_path, monkeypatch):
  import errno  # pylint: disable=g-import-not-at-top

  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top

  from mixacm_jax.errors import CheckpointError  # pylint: disable=g-import-not-at-top
  real_save = ocp.CheckpointManager.save

  def save(self, step, *args, **kwargs):
    if step > 3:
      raise OSError(errno.ENOSPC, "No space left on device")
    return real_save(self, step, *args, **kwargs)

  monkeypatch.setattr(ocp.CheckpointManager, "save", save)
  with pytest.raises(CheckpointError, match="could not save the checkpoint of step 6 .*No space"):
    train.train_and_evaluate(tiny_config, str(tmp_path))
  steps = sorted(int(d) for d in os.listdir(tmp_path / "checkpoints") if d.isdigit())
  assert steps == [3]


def test_named_evaluations_run_on_their_schedule_and_the_first_is_the_runs(tiny_config,
                                                                           tmp_path):
  """config.train_evals: each evaluation at its every_steps and at the end, logged under its
  name; the first one's accuracies are the run's; a bad entry is refused in one line."""
  from mixacm_jax.configs import checks, default  # pylint: disable=g-import-not-at-top
  from mixacm_jax.errors import ConfigError  # pylint: disable=g-import-not-at-top
  tiny_config.train_evals.quick = default.evaluation("clean,fgsm", every_steps=2, num_examples=64)
  assert list(tiny_config.train_evals) == ["pgd", "quick"]
  result = train.train_and_evaluate(tiny_config, str(tmp_path))
  rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows if "eval/quick/fgsm" in r] == [2, 4, 6]
  assert [r["step"] for r in rows if "eval/pgd/pgd2" in r] == [6]
  assert [r["step"] for r in rows if "eval/robust_accuracy" in r] == [6]
  assert result["robust_accuracy"] == result["pgd/pgd2"] and "quick/fgsm" in result
  assert result["num_examples"] == 128 and result["clean_accuracy"] == result[
      "pgd/clean_accuracy"]
  for change, message in (({"attacks": "clean,pgd2,nope"}, "unknown attack 'nope'"),
                          ({"every_steps": -1}, "every_steps and num_examples must be >= 0")):
    bad = tiny_config.copy_and_resolve_references()
    bad.train_evals.quick.update(change)
    with pytest.raises(ConfigError, match=message):
      checks.validate(bad)
  bad = tiny_config.copy_and_resolve_references()
  bad.train_evals = default.get_config().train_evals
  del bad.train_evals["pgd"]
  with pytest.raises(ConfigError, match="config.train_evals is empty"):
    checks.validate(bad)
