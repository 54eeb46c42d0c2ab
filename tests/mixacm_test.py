"""MixACM step: frozen teacher, device-count invariance, transformations, end-to-end signal,
teacher loading errors."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mixacm_jax import models, objectives
from mixacm_jax.data import digits, input_pipeline
from mixacm_jax.errors import CheckpointError, ConfigError
from mixacm_jax.runtime import checkpoint, parallel
from mixacm_jax.training import teacher as teacher_lib, train


def _setup(config):
  info = input_pipeline.get_info(config.data)
  objective = objectives.get_objective("mixacm")
  teacher = teacher_lib.load_teacher(config.teacher, info.num_classes, info.image_shape)
  model = models.create_model_from_config(config.model, info.num_classes)
  state = train.create_train_state(
      model, info.image_shape, config.optim, seed=config.seed, steps_per_epoch=10,
      total_steps=100, objective_params=train.init_objective_params(
          config.objective, objective, model, teacher, info.image_shape, seed=config.seed))
  return model, teacher, state


def _run(config, model, teacher, state, batches, n_devices):
  devices = jax.devices()[:n_devices]
  step = train.make_p_train_step(config.objective, model, objectives.get_objective("mixacm"),
                                 teacher.model, devices=devices)
  p_state = parallel.replicate(state, devices=devices)
  p_teacher = parallel.replicate(teacher.variables, devices=devices)
  for b in batches:
    b = {k: v.reshape((n_devices, -1) + v.shape[2:]) for k, v in b.items()}
    p_state, metrics = step(p_state, b, p_teacher)
  return parallel.unreplicate(p_state), parallel.unreplicate(metrics), p_teacher


def test_transform_shapes_follow_widths(mixacm_config):
  _, _, state = _setup(mixacm_config)
  kernels = state.params["objective"]
  assert set(kernels) == {"stem", "stage1", "stage2"}
  assert kernels["stem"]["kernel"].shape == (4, 8) and kernels["stage2"]["kernel"].shape == (8, 16)
  mixacm_config.model.kwargs.base_width = 8  # equal widths: identity initialisation
  _, _, state = _setup(mixacm_config)
  np.testing.assert_array_equal(state.params["objective"]["stage1"]["kernel"], np.eye(8))


def test_one_vs_two_devices_and_frozen_teacher(mixacm_config):
  if jax.device_count() < 2:
    pytest.skip("needs 2 devices (set XLA_FLAGS=--xla_force_host_platform_device_count=2)")
  mixacm_config.objective.mixacm.mixup_per_example = True
  model, teacher, state = _setup(mixacm_config)
  original = jax.tree_util.tree_map(np.copy, teacher.variables)
  it = input_pipeline.train_batches(mixacm_config.data, 16, seed=0)
  batches = [next(it) for _ in range(4)]
  one, m1, p_teacher = _run(mixacm_config, model, teacher, state, batches, 1)
  two, m2, _ = _run(mixacm_config, model, teacher, state, batches, 2)
  diff = jax.tree_util.tree_map(lambda a, b: float(jnp.max(jnp.abs(a - b))),
                                (one.params, one.batch_stats), (two.params, two.batch_stats))
  assert max(jax.tree_util.tree_leaves(diff)) < 1e-5
  for k in ("ce", "kd", "acm", "acm_stem", "acm_stage1", "acm_stage2", "teacher_agreement"):
    np.testing.assert_allclose(m1[k], m2[k], rtol=1e-5, atol=1e-7)
  # The teacher's params and running statistics are bit-identical after training...
  same = jax.tree_util.tree_map(lambda a, b: bool(np.array_equal(a, b)), original,
                                parallel.unreplicate(p_teacher))
  assert all(jax.tree_util.tree_leaves(same))
  # ...while the student and its transformations moved.
  moved = jax.tree_util.tree_map(lambda a, b: float(jnp.max(jnp.abs(a - b))),
                                 state.params, one.params)
  assert min(jax.tree_util.tree_leaves(moved["objective"])) > 0
  assert max(jax.tree_util.tree_leaves(moved["model"])) > 1e-3


def test_no_gradient_reaches_the_teacher(mixacm_config):
  _, teacher, _ = _setup(mixacm_config)
  x = jax.random.uniform(jax.random.PRNGKey(0), (4, 8, 8, 1))
  def loss(variables):
    logits, feats = teacher_lib.frozen_forward(teacher.model, variables)(x, ("stage1",))
    return jnp.sum(logits) + jnp.sum(feats["stage1"])
  grads = jax.grad(loss)(teacher.variables)
  assert all(float(jnp.max(jnp.abs(g))) == 0 for g in jax.tree_util.tree_leaves(grads))


@pytest.mark.slow
def test_end_to_end_acm_falls_agreement_rises_and_export_drops_transforms(mixacm_config,
                                                                          tmp_path):
  mixacm_config.optim.num_steps = 100
  mixacm_config.optim.learning_rate = 0.1
  mixacm_config.log_every_steps = 1
  mixacm_config.checkpoint.every_steps = 50
  # A teacher that has learnt something (a random one predicts one class).
  teacher_cfg = mixacm_config.copy_and_resolve_references()
  teacher_cfg.objective.name = "natural"
  teacher_cfg.model = mixacm_config.teacher.model.copy_and_resolve_references()
  teacher_run = train.train_and_evaluate(teacher_cfg, str(tmp_path / "trained_teacher"))
  assert teacher_run["clean_accuracy"] > 0.5
  mixacm_config.teacher.checkpoint = str(tmp_path / "trained_teacher")
  result = train.train_and_evaluate(mixacm_config, str(tmp_path / "student"))
  rows = [json.loads(l) for l in (tmp_path / "student" / "metrics.jsonl").read_text().splitlines()]
  train_rows = [r for r in rows if "train/acm" in r]
  first, last = train_rows[:5], train_rows[-5:]
  mean = lambda rs, k: np.mean([r[k] for r in rs])
  assert mean(last, "train/acm") < 0.7 * mean(first, "train/acm")
  # Agreement with the teacher on the whole test split, before and after distillation.
  student = models.create_model_from_config(mixacm_config.model, 10)
  teacher = teacher_lib.load_teacher(mixacm_config.teacher, 10, (8, 8, 1))
  x, _ = digits.arrays("test")
  t_pred = jnp.argmax(teacher.model.apply(teacher.variables, x), -1)
  initial = train.create_train_state(student, (8, 8, 1), mixacm_config.optim,
                                     seed=mixacm_config.seed, steps_per_epoch=1, total_steps=1)
  agreement = lambda s: float(jnp.mean(jnp.argmax(student.apply(
      {"params": s.params["model"], "batch_stats": s.batch_stats}, x), -1) == t_pred))
  assert agreement(result["state"]) > agreement(initial) + 0.2
  assert result["teacher_forward_passes"] == 100 * 32 and result["passes_per_example"] == 3
  # Exported / evaluated student weights are the model's alone: no transformation inside.
  student = models.create_model_from_config(mixacm_config.model, 10)
  variables = checkpoint.load_variables(student, (8, 8, 1), str(tmp_path / "student"))
  assert "objective" not in variables["params"] and "stem" not in variables["params"]
  jax.tree_util.tree_map(np.testing.assert_array_equal, variables["params"],
                         jax.device_get(result["state"].params["model"]))


def test_teacher_errors_name_the_problem(mixacm_config, tmp_path):
  info = input_pipeline.get_info(mixacm_config.data)
  wrong = mixacm_config.teacher.copy_and_resolve_references()
  wrong.model.kwargs.base_width = 16
  with pytest.raises(CheckpointError, match=r"does not match: 31 of the wrong shape "
                                            r"\(\['batch_stats'\]\['bn1'\]\['mean'\]: "
                                            r"expected \(16,\), found \(8,\)"):
    teacher_lib.load_teacher(wrong, 10, info.image_shape)
  wrong.model.name, wrong.model.kwargs = "wrn", {"depth": 10, "widen_factor": 1}
  with pytest.raises(CheckpointError, match=r"missing .*unexpected"):
    teacher_lib.load_teacher(wrong, 10, info.image_shape)
  with pytest.raises(CheckpointError, match="no checkpoint at"):
    teacher_lib.load_teacher(mixacm_config.teacher, 10, info.image_shape,
                             path=str(tmp_path / "nowhere"))
  mixacm_config.objective.mixacm.acm.stages = ("stem", "stage4")
  with pytest.raises(ConfigError, match=r"the teacher \(ResNet\) does not sow \['stage4'\]; "
                                        r"expected \['stem', 'stage4'\], found"):
    train.train_and_evaluate(mixacm_config, str(tmp_path / "s"))
  mixacm_config.teacher.checkpoint = ""
  with pytest.raises(ConfigError, match="needs a teacher"):
    train.train_and_evaluate(mixacm_config, str(tmp_path / "s"))


@pytest.mark.parametrize("name,adversarial", [("kd", False), ("ard", True), ("rslad", True)])
def test_baselines_train_and_cost_what_they_should(mixacm_config, tmp_path, name, adversarial):
  """KD, ARD and RSLAD run in the same engine; the adversarial ones count their attack."""
  mixacm_config.objective.name = name
  if adversarial:
    mixacm_config.objective[name].attack.steps = 2
  mixacm_config.optim.num_steps = 3
  result = train.train_and_evaluate(mixacm_config, str(tmp_path / name))
  rows = [json.loads(l) for l in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
  last = [r for r in rows if "train/loss" in r][-1]
  assert np.isfinite(last["train/loss"]) and last["train/loss"] > 0
  assert result["teacher_forward_passes"] == 3 * 32
  expected = 1 + 1 + 1 if not adversarial else (2 + 1) * 2 + 1 + (2 if name == "rslad" else 0)
  assert result["passes_per_example"] == expected


def test_rslad_and_ard_examples_stay_in_the_ball(mixacm_config):
  from mixacm_jax.objectives import common  # pylint: disable=g-import-not-at-top
  model, teacher, state = _setup(mixacm_config)
  x = jax.random.uniform(jax.random.PRNGKey(3), (6, 8, 8, 1))
  ctx = objectives.ObjectiveContext(
      forward=lambda p, *a: train.make_forward(model)(p["model"], *a),
      batch_stats=state.batch_stats, rng=jax.random.PRNGKey(0), cfg=mixacm_config.objective.rslad,
      teacher=teacher_lib.frozen_forward(teacher.model, teacher.variables))
  t_logits, _ = ctx.teacher(x, ())
  x_adv = common.kl_adversarial_examples(state.params, ctx, x, t_logits)
  eps = mixacm_config.objective.rslad.attack.eps
  assert float(jnp.max(jnp.abs(x_adv - x))) <= eps + 1e-6
  kl = lambda v: float(common.kl_divergence(t_logits, ctx.eval_logits_fn(state.params)(v)))
  assert kl(x_adv) > kl(x)  # the inner maximisation raised the KL to the teacher


def test_one_student_block_matched_to_two_teacher_blocks_keeps_both_pairs(mixacm_config):
  mixacm_config.objective.mixacm.acm.stages = ("stage1", "stage1:stage2")
  _, _, state = _setup(mixacm_config)
  kernels = state.params["objective"]
  # Keyed by pair: student stage1 (width 4) -> teacher stage1 (8) and -> teacher stage2 (16).
  assert set(kernels) == {"stage1", "stage1__stage2"}
  assert kernels["stage1"]["kernel"].shape == (4, 8)
  assert kernels["stage1__stage2"]["kernel"].shape == (4, 16)
  from mixacm_jax.objectives import mixacm  # pylint: disable=g-import-not-at-top
  feats = {"stage1": jnp.ones((2, 4, 4, 4))}
  t_feats = {"stage1": jax.random.uniform(jax.random.PRNGKey(0), (2, 4, 4, 8)),
             "stage2": jax.random.uniform(jax.random.PRNGKey(1), (2, 2, 2, 16))}
  terms = mixacm.acm_terms(state.params["objective"], mixacm_config.objective.mixacm, feats,
                           t_feats)
  assert set(terms) == {"stage1", "stage1__stage2"}
  assert float(terms["stage1"]) != float(terms["stage1__stage2"])
  # The same pair twice is a config error, not a silent overwrite.
  mixacm_config.objective.mixacm.acm.stages = ("stage1", "stem", "stage1")
  with pytest.raises(ConfigError, match="matches 'stage1' to 'stage1' twice"):
    _setup(mixacm_config)


def test_weight_decay_on_acm_transforms_is_a_switch(mixacm_config):
  from mixacm_jax.training import optim  # pylint: disable=g-import-not-at-top
  params = {"model": {"conv": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones((2,))}},
            "objective": {"stage1": {"kernel": jnp.ones((2, 2))}}}
  for decay in (True, False):
    mixacm_config.optim.decay_acm_transforms = decay
    mixacm_config.optim.warmup_epochs = 0.0  # a zero learning rate at step 0 would hide it
    tx = optim.create_optimizer(mixacm_config.optim, 10, 100)
    zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
    updates, _ = tx.update(zeros, tx.init(params), params)
    # Zero gradients: only weight decay moves a parameter.
    assert float(jnp.abs(updates["model"]["conv"]["kernel"]).sum()) > 0
    assert float(jnp.abs(updates["model"]["conv"]["bias"]).sum()) == 0
    assert (float(jnp.abs(updates["objective"]["stage1"]["kernel"]).sum()) > 0) == decay
