"""run.py end to end: the main command, eval mode, config overrides and one-line errors."""
import json
import os

import ml_collections
import pytest

from mixacm_jax.configs import default

from conftest import ROOT, TINY, repo_config, run_command as run


@pytest.mark.slow
def test_train_then_eval(tmp_path):
  out = run(f"--workdir={tmp_path}", *TINY)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "[train] step 4/4" in out.stdout and "ex/s" in out.stdout and "ETA" in out.stdout
  assert "| resnet18 | pgd_at" in out.stdout  # the final summary table
  steps = sorted(int(d) for d in os.listdir(tmp_path / "checkpoints") if d.isdigit())
  assert steps[-1] == 4
  rows = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert {r["step"] for r in rows if "train/loss" in r} == {2, 4}
  assert 0.0 <= [r for r in rows if "eval/robust_accuracy" in r][-1]["eval/robust_accuracy"] <= 1.0
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(tmp_path / "tensorboard"))
  summary = json.loads((tmp_path / "summary.json").read_text())
  evaluated = run(f"--workdir={tmp_path}", "--mode=eval", *TINY,
                  "--config.eval.attacks=clean,fgsm,pgd5,cw5,apgd-ce",
                  "--config.eval.eps_sweep=(0.05, 0.2)")
  assert evaluated.returncode == 0, evaluated.stderr[-3000:]
  assert f"{100 * summary['clean_accuracy']:.2f}" in evaluated.stdout
  report = json.loads((tmp_path / "robustness.json").read_text())
  assert report["num_examples"] == summary["num_examples"] == 360
  assert report["clean_accuracy"] == summary["clean_accuracy"]
  accs = {k: v["robust_accuracy"] for k, v in report["attacks"].items()}
  assert set(accs) == {"fgsm", "pgd5", "cw5", "apgd-ce"}
  assert all(a <= report["clean_accuracy"] for a in accs.values())
  for name in accs:
    assert f"| {name}" in evaluated.stdout
  assert [r["eps"] for r in report["eps_sweep"]["reports"]] == [0.05, 0.2]
  assert (tmp_path / "robustness_vs_eps.png").stat().st_size > 1000
  # Running the finished job again resumes at its end and does no more training.
  again = run(f"--workdir={tmp_path}", *TINY)
  assert again.returncode == 0 and "Resuming from the checkpoint of step 4" in again.stdout


@pytest.mark.slow
def test_host_devices_split_the_batch_on_cpu(tmp_path):
  """--host_devices=2: two CPU devices from one process (no XLA_FLAGS), the batch split."""
  out = run(f"--workdir={tmp_path}", *TINY, "--host_devices=2", "--config.optim.num_steps=2")
  assert out.returncode == 0, out.stderr[-3000:]
  assert "examples (" in out.stdout and "on 2 device(s)" in out.stdout
  bad = run(f"--workdir={tmp_path}", *TINY, "--host_devices=0")
  assert bad.returncode != 0 and "host_devices" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.parametrize("args,message", [
    (["--config.model.name=resnet19"], "error: unknown architecture 'resnet19'; known: "),
    (["--config.objective.name=madry"], "error: unknown objective 'madry'; known: "),
    (["--config.data.name=not_a_dataset_xyz"], "error: unknown dataset 'not_a_dataset_xyz'"),
    (["--config.eval.threat.eps=1.5"], "error: eval.threat.eps must be in (0, 1]"),
    (["--config.objective.pgd_at.attack.eps=0"],
     "error: objective.pgd_at.attack.eps must be in (0, 1]"),
    (["--config.objective.trades.attack.norm=l1"],
     "error: objective.trades.attack.norm must be one of ('linf', 'l2')"),
    (["--config.eval.threat.norm=l0"],
     "error: eval.threat.norm must be one of ('linf', 'l2', 'l1')"),
    (["--config.model.dtype=float16"], "error: model.dtype must be one of"),
    (["--config.optim.schedule=linear"], "error: unknown schedule 'linear'"),
    (["--config.eval.attacks=clean,pgdx"], "error: unknown attack 'pgdx'"),
    (["--config.eval.autoattack_version=plus2"], "error: unknown AutoAttack version 'plus2'"),
    (["--config.eval.autoattack_mode=each"], "error: eval.autoattack_mode must be one of"),
    (["--config.eval.min_norm=fgsm"],
     "error: unknown minimum-norm attack 'fgsm' in eval.min_norm"),
])
def test_bad_values_fail_in_one_line(tmp_path, args, message):
  out = run(f"--workdir={tmp_path}", *TINY, *args)
  assert out.returncode == 2
  assert message in out.stderr and "Traceback" not in out.stderr


def test_indivisible_batch_and_unwritable_workdir(tmp_path):
  out = run(f"--workdir={tmp_path}", *TINY, "--config.optim.batch_size=33", env_devices=2)
  assert out.returncode == 2 and "batch size 33 must be a positive multiple of the device " \
                                 "count (2 devices" in out.stderr
  (tmp_path / "file").write_text("")
  out = run(f"--workdir={tmp_path / 'file' / 'sub'}", *TINY)
  assert out.returncode == 2 and "is not writable" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.parametrize("args,message", [
    (["--config.optim.bogus=1"], "error: unknown config key 'optim.bogus' in "
                                 "--config.optim.bogus=1; config.optim has: awp, batch_size,"),
    (["--config.optim.batchsize=1"], "did you mean --config.optim.batch_size?"),
    (["--config.nonexistent=3"], "error: unknown config key 'nonexistent'"),
    (["--config=configs/default_mixacm.py", "--config.pipeline.studnets=kd"],
     "did you mean --config.pipeline.students?"),
    (["--config.seed.x=1"], "config.seed is a value, not a section"),
    (["--config.objective.w_acm=3"], "error: unknown config key 'objective.w_acm' in "
                                     "--config.objective.w_acm=3; config.objective has: adaad, ard,"),
    (["--config.objective.mixacm.w_acn=3"], "did you mean --config.objective.mixacm.w_acm?"),
    (["--config.optim.batch_size=abc"], "error: flag --config.optim.batch_size=abc: invalid"),
    (["--config.eval.pgd.eps=0.1"], "error: config key 'eval.pgd.eps' is now 'eval.threat.eps' "
                                    "in --config.eval.pgd.eps=0.1"),
    (["--config=configs/no_such_config.py"], "error: config file 'configs/no_such_config.py' "
                                             "not found"),
])
def test_unknown_key_wrong_type_and_missing_config_file_are_one_line(tmp_path, args, message):
  out = run(f"--workdir={tmp_path}", *args)
  assert out.returncode == 2, out.stderr[-2000:]
  assert message in out.stderr and "Traceback" not in out.stderr
  assert len(out.stderr.strip().splitlines()) == 1, out.stderr


@pytest.mark.parametrize("name", ["default", "default_mixacm", "cifar10_resnet18_natural",
                                  "cifar10_preact18_pgd_at", "cifar10_wrn34_10_trades",
                                  "cifar10_mixacm_wrn34_10_to_resnet18",
                                  "cifar10_mixacm_wrn34_10_to_wrn34_10",
                                  "cifar100_mixacm_wrn34_10_to_resnet18",
                                  "imagenet_mixacm_salman_r50_to_resnet18",
                                  "imagenet_mixacm_salman_wrn50_2_to_resnet50",
                                  "imagenet_robustbench_eval"])
def test_every_config_loads_and_validates(name):
  from mixacm_jax.configs import checks as config_checks  # pylint: disable=g-import-not-at-top
  config = repo_config(name)
  config_checks.validate(config)
  if name.startswith("cifar"):
    assert config.data.name == name.split("_")[0]
    for method in default.ADVERSARIAL_METHODS:
      assert config.objective[method].attack.eps == pytest.approx(8 / 255)
  if name.startswith("imagenet"):  # RobustBench's protocol; its ids file ships
    assert config.eval.threat.eps == pytest.approx(4 / 255)
    assert (config.data.image_size, config.data.eval_resize) == (224, 256)
    assert os.path.isfile(config.data.eval_ids)
  if "mixacm" in name and name.startswith("imagenet"):  # the teacher's entry exists, by name
    from mixacm_jax.port import zoo  # pylint: disable=g-import-not-at-top
    found = zoo.recipe(config.teacher.robustbench, "imagenet", "Linf")
    config.teacher.model.name, shape = found["arch"], (64, 64, 3)
  else:
    shape = (32, 32, 3)
  if "mixacm" in name:
    # Every matched block exists in both full-size models (traced, not run).
    from mixacm_jax import models  # pylint: disable=g-import-not-at-top
    from mixacm_jax.objectives import mixacm  # pylint: disable=g-import-not-at-top
    student, teacher = mixacm.feature_names(config.objective.mixacm)
    for cfg, names in ((config.model, student), (config.teacher.model, teacher)):
      sown = models.feature_names(models.create_model_from_config(cfg, 10), shape)
      assert set(names) <= set(sown), (names, sown)


def test_the_cifar10_distillation_config_has_a_recipe_per_method(tmp_path):
  """configs/cifar10_distillation.py:<method>, each validated, its teachers zoo entries."""
  from mixacm_jax.configs import checks as config_checks  # pylint: disable=g-import-not-at-top
  from mixacm_jax.errors import ConfigError  # pylint: disable=g-import-not-at-top
  from mixacm_jax.port import zoo  # pylint: disable=g-import-not-at-top
  module = _config_module("cifar10_distillation")
  for method in ("mixacm", *module.RECIPES):
    config = module.get_config(method)
    config_checks.validate(config)
    assert config.objective.name == (module.RECIPES[method].objective
                                     if method in module.RECIPES else "mixacm")
    if method != "peeraid":  # PeerAiD has no teacher
      assert zoo.recipe(config.teacher.robustbench, "cifar10", "Linf")["arch"] == "wrn34_10"
  assert zoo.recipe(module.get_config("mtard").clean_teacher.robustbench, "cifar10", "Linf")
  assert module.get_config("adaad_igdm").objective.adaad.igdm_alpha == 1.0
  with pytest.raises(ConfigError, match="unknown method 'trad'"):
    module.get_config("trad")
  # The command takes the method after the file; it gets as far as the (absent) data.
  out = run("--config=configs/cifar10_distillation.py:saad", f"--workdir={tmp_path}",
            "--config.data.data_dir=/nonexistent/data", "--config.objective.saad.gamma=2")
  assert "dataset 'cifar10' is not prepared" in out.stderr, out.stderr[-2000:]
  out = run("--config=configs/cifar10_distillation.py:trad", f"--workdir={tmp_path}")
  assert out.returncode == 2 and out.stderr.strip().splitlines() == [
      "error: unknown method 'trad' for configs/cifar10_distillation.py; known: mixacm, ard, "
      "rslad, iad, adaad, adaad_igdm, mtard, saad, peeraid"]


def _config_module(name):
  import importlib.util  # pylint: disable=g-import-not-at-top
  spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "configs", f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.mark.parametrize("old,new", [("evals.pgd.attacks", "train_evals.pgd.attacks"),
                                     ("eval.pgd.eps", "eval.threat.eps"),
                                     ("eval.pgd.norm", "eval.threat.norm")])
def test_a_config_file_with_a_renamed_key_names_the_new_one(old, new):
  """A config file setting an old key (which nothing reads) is refused, naming the new key."""
  from mixacm_jax.configs import checks as config_checks  # pylint: disable=g-import-not-at-top
  from mixacm_jax.errors import ConfigError  # pylint: disable=g-import-not-at-top
  config = repo_config("default")
  *parents, leaf = old.split(".")
  node = config
  for key in parents:
    if key not in node:
      node[key] = ml_collections.ConfigDict()
    node = node[key]
  node[leaf] = "clean" if leaf == "attacks" else 0.1
  with pytest.raises(ConfigError, match=f"config key '{old}' is now '{new}'"):
    config_checks.validate(config)


@pytest.mark.slow
def test_pipeline_mode_writes_the_report(tmp_path):
  out = run(f"--workdir={tmp_path}", "--mode=pipeline", "--config=configs/default_mixacm.py",
            *TINY, "--config.teacher.model.kwargs.base_width=8",
            "--config.teacher.model.kwargs.stage_sizes=(1, 1)",
            "--config.objective.mixacm.acm.stages=('stem', 'stage1', 'stage2')",
            "--config.pipeline.teacher_epochs=1", "--config.pipeline.students=('mixacm', 'kd')")
  assert out.returncode == 0, out.stderr[-3000:]
  rows = json.loads((tmp_path / "results.json").read_text())
  assert [r["run"] for r in rows] == ["teacher", "student (mixacm)", "student (kd)"]
  assert rows[0]["objective"] == "pgd_at" and rows[0]["passes_per_example"] == 4  # PGD-1
  assert rows[1]["passes_per_example"] == 3 and rows[1]["teacher_forward_passes"] == 4 * 32
  for r in rows:
    assert 0 <= r["robust_accuracy"] <= 1 and r["train_seconds"] > 0
    assert f"{100 * r['clean_accuracy']:.2f}" in out.stdout
  assert (tmp_path / "results.md").read_text().count("\n") == 5


def test_pipeline_mode_needs_a_pipeline_config(tmp_path):
  out = run(f"--workdir={tmp_path}", "--mode=pipeline", *TINY)
  assert out.returncode == 2 and "needs a config with a `pipeline` section" in out.stderr
