"""The robustness-transfer experiment's bookkeeping: per-student configs, mean +- std over
seeds, the computed checks and the plots (the training itself is the train/pipeline tests')."""
import importlib.util
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load(name="robustness_transfer"):
  spec = importlib.util.spec_from_file_location(
      name, os.path.join(ROOT, "experiments", f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  sys.modules[name] = module
  spec.loader.exec_module(module)
  return module


def _record(run, seed, clean, pgd, aa, seconds):
  return {"run": run, "seed": seed, "train_seconds": seconds, "total_passes": 3e6, "steps": 330,
          "eval_seconds": 1.0, "warnings": [],
          "report": {"clean_accuracy": clean, "num_examples": 360, "autoattack_examples": 180,
                     "attacks": {"pgd20": {"robust_accuracy": pgd},
                                 "pgd20_subset": {"robust_accuracy": pgd},
                                 "autoattack": {"robust_accuracy": aa, "after_each_stage": {
                                     "apgd-ce": aa + 0.01, "apgd-t": aa}}}},
          "sweep": {"eps": [0.05, 0.1], "pgd20": [pgd + 0.1, pgd]}}


def test_student_configs_apply_their_overrides():
  from configs import default_mixacm  # pylint: disable=g-import-not-at-top
  rt = _load()
  config = default_mixacm.get_config()
  acm = rt.student_config(config, "acm", 3)
  assert (acm.objective.name, acm.objective.mixacm.w_kd, acm.objective.mixacm.mixup_alpha,
          acm.seed) == \
      ("mixacm", 0.0, 0.0, 3)
  wide = rt.student_config(config, "mixacm_teacher_width", 0)
  assert wide.model.kwargs.base_width == config.teacher.model.kwargs.base_width
  assert config.model.kwargs.base_width == 8  # the base config is not touched
  assert rt.student_config(config, "pgd_at", 0).objective.name == "pgd_at"


def test_summary_table_checks_and_plots(tmp_path, monkeypatch):
  rt = _load()
  from configs import default_mixacm  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(rt, "_AA_VERSION", type("F", (), {"value": "apgd"})())
  records = [_record("teacher", s, 0.97, 0.80, 0.78 + 0.02 * s, 50.0) for s in range(3)]
  records += [_record("natural", s, 0.97, 0.05, 0.04, 10.0) for s in range(3)]
  records += [_record("mixacm", s, 0.95, 0.45, 0.40 + 0.01 * s, 20.0) for s in range(3)]
  rows = rt.summarise(records)
  mean, std = rows["teacher"]["autoattack"]
  assert abs(mean - 0.80) < 1e-9 and abs(std - np.std([0.78, 0.80, 0.82], ddof=1)) < 1e-9
  text = rt.markdown(rows, records, default_mixacm.get_config(), "cmd", 1.0)
  ratio = 0.41 / 0.80
  assert f"{ratio:.2f}x the teacher's (expectation: >= 0.8x): NOT met" in text
  assert "MixACM minus natural training: +37.0 points on average, +36.0 on the worst seed" in text
  assert "Per seed (ratio to that seed's teacher): seed 0 0.51x, seed 1 0.51x, seed 2 0.51x" in text
  assert "below 0.8x on some seed" in text
  assert "| teacher | 97.0 ± 0.0 | 80.0 ± 0.0 |" in text
  rt.plot(rows, records, str(tmp_path))
  for name in ("eps_sweep.png", "clean_vs_robust.png", "cost_vs_robust.png"):
    assert (tmp_path / name).stat().st_size > 5000


def _load_study():
  from absl import flags  # pylint: disable=g-import-not-at-top
  for name in ("config", "out", "workdir", "seeds"):  # the other script's module-level flags
    if name in flags.FLAGS:
      delattr(flags.FLAGS, name)
  return _load("transfer_study")


def test_study_configs_ratios_worst_seed_table_and_plots(tmp_path, monkeypatch):
  from configs import default_mixacm  # pylint: disable=g-import-not-at-top
  st = _load_study()
  monkeypatch.setattr(st, "_SPLIT", type("F", (), {"value": "validation"})())
  config = st.prepare(default_mixacm.get_config())
  assert (config.data.eval_split, config.eval.pgd.steps) == ("validation", 20)
  cfg = st.run_config(config, 4, "acm_mixup", 2.0, st.VARIATIONS["stages 3-4"])
  assert (cfg.seed, cfg.objective.name, cfg.objective.mixacm.w_kd, cfg.optim.num_epochs) == \
      (4, "mixacm", 0.0, 2 * config.pipeline.teacher_epochs)
  assert tuple(cfg.objective.mixacm.acm.stages) == ("stage3", "stage4")
  assert st.run_config(config, 0, "pgd_at", 1.0, {}).objective.name == "pgd_at"

  def rec(run, seed, robust, passes):
    return {"run": run, "seed": seed, "clean_accuracy": 0.95, "robust_accuracy": robust,
            "total_passes": passes, "train_seconds": 1.0}
  records = [rec("teacher", s, 0.7 + 0.1 * s, 12.0) for s in range(2)]
  records += [rec("mixacm@2x", s, 0.6, 6.0) for s in range(2)]
  records += [rec("natural@2x", s, 0.1 + 0.1 * s, 4.0) for s in range(2)]
  specs = [("lengths", "mixacm@2x", "mixacm", 2.0, {}),
           ("lengths", "natural@2x", "natural", 2.0, {})]
  rows = st.summarise(records, specs)
  m = rows["mixacm@2x"]
  # Ratios are per seed, against that seed's own teacher; the worst seed is reported.
  assert abs(m["ratio"][0] - np.mean([0.6 / 0.7, 0.6 / 0.8])) < 1e-9
  assert abs(m["ratio_worst"] - 0.6 / 0.8) < 1e-9
  assert abs(m["minus_natural"][0] - np.mean([0.5, 0.4])) < 1e-9 and m["passes_ratio"] == 0.5
  text = st.markdown(rows, "cmd", 1.0, records)
  assert "| mixacm@2x | 95.0 ± 0.0 | 60.0 ± 0.0 | 60.0 | 0.80 ± 0.08 | 0.75 | +45.0 | 0.50 |" in text
  st.plot(rows, str(tmp_path))
  assert (tmp_path / "lengths.png").stat().st_size > 5000
