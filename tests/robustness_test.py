"""The robustness report: stages run only on the points still robust (compacted batches), and
the counts equal a direct computation over the whole split."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mixacm_jax import models
from mixacm_jax.attacks import autoattack, pgd as pgd_lib
from mixacm_jax.data import digits, input_pipeline
from mixacm_jax.evaluation import programs as programs_lib, robustness, split


def test_compact_batches_cover_each_robust_point_once():
  robust = np.zeros((50,), bool)
  robust[[0, 3, 4, 17, 18, 19, 20, 49]] = True
  work = list(split.compact_batches(robust, 6, 2))
  assert len(work) == 2
  seen = np.concatenate([sel for sel, _, _ in work])
  np.testing.assert_array_equal(seen, np.flatnonzero(robust))
  assert [len(p) for _, p, _ in work] == [6, 2]  # the remainder of 2 is not padded to 6
  for sel, padded, valid in work:
    assert padded.shape == valid.shape and valid.sum() == len(sel)
    np.testing.assert_array_equal(padded[valid], sel)
  assert list(split.compact_batches(np.zeros((5,), bool), 3)) == []
  assert [split.padded_size(n, 128, 2) for n in (1, 3, 33, 100, 128)] == [2, 4, 64, 128, 128]


def test_report_matches_a_direct_computation(tiny_config, monkeypatch):
  cfg = tiny_config
  cfg.eval.num_examples = 100  # not a multiple of the batch: padding must not count
  info = input_pipeline.get_info(cfg.data)
  model = models.create_model_from_config(cfg.model, info.num_classes)
  variables = models.init_variables(model, jax.random.PRNGKey(3), info.image_shape)
  # A two-stage "AutoAttack": the second stage only sees what the first left robust.
  monkeypatch.setitem(autoattack.VERSIONS, "two_fgsm", [("fgsm", {}), ("fgsm", {})])
  cfg.eval.attacks = "clean,fgsm,autoattack"
  cfg.eval.autoattack_version = "two_fgsm"
  report = robustness.report_on_split(model, variables, cfg.data, cfg.eval, verbose=False)

  batches = list(input_pipeline.eval_batches(cfg.data, cfg.eval.batch_size, 100))
  x = np.concatenate([b["image"].reshape((-1,) + info.image_shape) for b in batches])[:100]
  y = np.concatenate([b["label"].reshape(-1) for b in batches])[:100]
  logits_fn = lambda v: model.apply(variables, v)
  clean = np.asarray(jnp.argmax(logits_fn(x), -1) == y)
  x_adv, _ = pgd_lib.fgsm(logits_fn, jnp.asarray(x), jnp.asarray(y), eps=cfg.eval.threat.eps)
  after_fgsm = clean & np.asarray(jnp.argmax(logits_fn(x_adv), -1) == y)
  assert report["num_examples"] == 100
  assert report["clean_accuracy"] == clean.mean()
  assert abs(report["attacks"]["fgsm"]["robust_accuracy"] - after_fgsm.mean()) < 1e-9
  stages = report["attacks"]["autoattack"]["after_each_stage"]
  assert abs(stages["fgsm"] - after_fgsm.mean()) < 1e-9
  assert report["attacks"]["autoattack"]["robust_accuracy"] <= stages["fgsm"]


@pytest.mark.slow
def test_rand_version_runs_eot_and_flags_a_deterministic_model(tiny_config, monkeypatch):
  cfg = tiny_config
  cfg.eval.num_examples = 32
  info = input_pipeline.get_info(cfg.data)
  model = models.create_model_from_config(cfg.model, info.num_classes)
  variables = models.init_variables(model, jax.random.PRNGKey(3), info.image_shape)
  monkeypatch.setattr(autoattack, "EOT_ITER", 2)  # the stages read it when called
  cfg.eval.attacks = "autoattack"
  cfg.eval.autoattack_version = "rand"
  report = robustness.report_on_split(model, variables, cfg.data, cfg.eval, verbose=False)
  stages = report["attacks"]["autoattack"]["after_each_stage"]
  assert list(stages) == ["apgd-ce-eot", "apgd-dlr-eot"]
  assert stages["apgd-dlr-eot"] <= stages["apgd-ce-eot"] <= report["clean_accuracy"]
  assert any("deterministic" in w for w in report["warnings"])


def test_an_eps_sweep_compiles_each_attack_once(tiny_config, caplog):
  """eps and the PGD step are traced arguments: the 2nd and 3rd eps of a sweep compile
  nothing new (eps tiny, so no point is broken and the stages see the same shapes)."""
  import logging  # pylint: disable=g-import-not-at-top
  cfg = tiny_config
  cfg.eval.num_examples = 32
  cfg.eval.attacks = "clean,pgd3,fgsm"
  info = input_pipeline.get_info(cfg.data)
  model = models.create_model_from_config(cfg.model, info.num_classes)
  variables = models.init_variables(model, jax.random.PRNGKey(3), info.image_shape)
  programs = {}
  first = robustness.report_on_split(model, variables, cfg.data, cfg.eval, eps=1e-5,
                                     verbose=False, programs=programs)
  jax.config.update("jax_log_compiles", True)
  try:
    with caplog.at_level(logging.WARNING):
      later = [robustness.report_on_split(model, variables, cfg.data, cfg.eval, eps=e,
                                          verbose=False, programs=programs)
               for e in (2e-5, 3e-5)]
  finally:
    jax.config.update("jax_log_compiles", False)
  compiles = [r.getMessage()[:100] for r in caplog.records
              if r.getMessage().startswith("Compiling") and "run" in r.getMessage()]
  assert compiles == []
  key = programs_lib.model_key(model)
  assert set(programs) == {("clean", key), ("margins", key),
                           (key, "pgd3", "linf", 1, "random", False, ()),
                           (key, "fgsm", "linf", 1, "random", False, ())}
  for report in [first] + later:  # the traced eps is the one used: nothing moved far
    assert report["attacks"]["pgd3"]["robust_accuracy"] == first["clean_accuracy"]
  # The traced eps is the one used: each sweep point equals FGSM computed directly at it.
  sweep = robustness.eps_sweep(model, variables, cfg.data, cfg.eval, [0.05, 0.5])
  x, y = digits.arrays("test")
  x, y = x[:32], y[:32]
  logits_fn = lambda v: model.apply(variables, v)
  clean = np.asarray(jnp.argmax(logits_fn(x), -1) == y)
  for e, report in zip([0.05, 0.5], sweep["reports"]):
    x_adv, _ = pgd_lib.fgsm(logits_fn, jnp.asarray(x), jnp.asarray(y), eps=e)
    direct = (clean & np.asarray(jnp.argmax(logits_fn(x_adv), -1) == y)).mean()
    assert abs(report["attacks"]["fgsm"]["robust_accuracy"] - direct) < 1e-9, e


def test_reports_on_two_models_sharing_a_programs_cache_each_use_their_own(tiny_config):
  """Two models whose weights have the same tree but whose input normalisation differs (two
  zoo entries of one architecture): with one `programs` dict, each report is the one a fresh
  cache gives, not the first model's programs run on the second's weights."""
  cfg = tiny_config
  cfg.eval.num_examples, cfg.eval.attacks = 32, "clean,pgd3"
  info = input_pipeline.get_info(cfg.data)
  plain = models.create_model_from_config(cfg.model, info.num_classes)
  shifted = plain.clone(mean=(0.5,) * info.image_shape[-1], std=(0.25,) * info.image_shape[-1])
  variables = models.init_variables(plain, jax.random.PRNGKey(3), info.image_shape)
  report = lambda m, programs: robustness.report_on_split(
      m, variables, cfg.data, cfg.eval, verbose=False, programs=programs)
  shared = {}
  first, second = report(plain, shared), report(shifted, shared)
  for model, got in ((plain, first), (shifted, second)):
    alone = report(model, {})
    assert got["clean_accuracy"] == alone["clean_accuracy"]
    np.testing.assert_array_equal(got["examples"]["clean_margin"],
                                  alone["examples"]["clean_margin"])
    assert got["attacks"] == alone["attacks"]
  assert not np.array_equal(first["examples"]["clean_margin"],
                            second["examples"]["clean_margin"])


def test_a_later_report_on_an_equal_model_compiles_no_attack_loop(tiny_config, caplog):
  """The attacks' loop programs are keyed by the model, not by the report: a second report on
  a new but equal Flax model with other weights compiles none of them again, and attacks the
  new weights (the same as a report on them with every cache cleared). A logits function
  compiles anew each call, so a closure attacks what it holds now."""
  import logging  # pylint: disable=g-import-not-at-top
  cfg = tiny_config
  cfg.eval.attacks, cfg.eval.threat.eps = "apgd-ce", 0.3
  info = input_pipeline.get_info(cfg.data)
  x = digits.arrays("test")[0][:16]
  fast = {"apgd-ce": {"n_iter": 4}}
  # Labels are the model's own predictions: every point is attacked, in batches of one shape.
  report = lambda m, v: robustness.report_on_arrays(
      m, v, x, np.asarray(m.apply(v, x).argmax(-1)), cfg.eval, verbose=False,
      stage_settings=fast)
  create = lambda: models.create_model_from_config(cfg.model, info.num_classes)
  v1, v2 = (models.init_variables(create(), jax.random.PRNGKey(k), info.image_shape)
            for k in (3, 4))
  first = report(create(), v1)
  jax.config.update("jax_log_compiles", True)
  try:
    with caplog.at_level(logging.WARNING):
      second = report(create(), v2)
  finally:
    jax.config.update("jax_log_compiles", False)
  loops = [r.getMessage()[:80] for r in caplog.records
           if r.getMessage().startswith("Compiling jit(_chunk)")]
  assert loops == []
  jax.clear_caches()
  fresh = report(create(), v2)
  assert not np.array_equal(first["examples"]["clean_margin"],
                            second["examples"]["clean_margin"])
  assert second["attacks"] == fresh["attacks"]
  broken = lambda r: r["examples"]["attacks"]["apgd-ce"]["broken_by"]
  assert broken(second) == broken(fresh)

  held = {"v": v1}
  model = create()
  y = np.asarray(model.apply(v2, x).argmax(-1))
  attack = lambda f: robustness.run_autoattack(f, x, y, jax.random.PRNGKey(0), eps=0.3,
                                               version="apgd-ce", overrides=fast)[1]["apgd-ce"]
  closure = lambda v: model.apply(held["v"], v)
  attack(closure)
  held["v"] = v2
  np.testing.assert_array_equal(attack(closure), attack(lambda v: model.apply(v2, v)))


@pytest.mark.slow
def test_autoattack_run_from_python_gives_the_pmapped_report(tiny_config, monkeypatch):
  """The report runs AutoAttack's stages from Python on CPU, each device's shard in its own
  thread with the pmapped run's keys: the same robust points as the pmapped stages."""
  cfg = tiny_config
  cfg.eval.num_examples = 48
  cfg.eval.attacks = "autoattack"
  cfg.eval.autoattack_version = "apgd"
  cfg.eval.threat.eps = 0.03
  info = input_pipeline.get_info(cfg.data)
  model = models.create_model_from_config(cfg.model, info.num_classes)
  variables = models.init_variables(model, jax.random.PRNGKey(3), info.image_shape)
  monkeypatch.setitem(autoattack.STAGES, "apgd-ce",
                      functools.partial(autoattack.STAGES["apgd-ce"], n_iter=8))
  monkeypatch.setitem(autoattack.STAGES, "apgd-t", functools.partial(
      autoattack.STAGES["apgd-t"], n_iter=8, n_target_classes=2))
  reports = {}
  for host in (True, False):
    monkeypatch.setattr(programs_lib, "host_loops", lambda h=host: h)
    reports[host] = robustness.report_on_split(model, variables, cfg.data, cfg.eval,
                                               verbose=False)["attacks"]["autoattack"]
  assert reports[True] == reports[False]
  assert 0 < reports[True]["robust_accuracy"]
