"""RobustBench's zoo by name: the recipe table derived again from the installed robustbench's
own zoo files, the coverage it claims, the paper's teacher (Zhang2019Theoretically, full size)
by the library call, by --mode=convert and as a MixACM teacher, RobustBench's loader layout,
and every wrong input as one line."""
import importlib.util
import json
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the zoo's own modules are PyTorch")
if importlib.util.find_spec("robustbench") is None:
  pytest.skip("robustbench is not installed (pip install --no-deps -r requirements-port.txt)",
              allow_module_level=True)

from conftest import distil_from_zoo  # noqa: E402
import mixacm_jax  # noqa: E402
from mixacm_jax import models  # noqa: E402
from mixacm_jax.errors import CheckpointError, ConfigError  # noqa: E402
from mixacm_jax.port import convert, to_orbax, zoo, zoo_recipes, zoo_recipes_main  # noqa: E402
from tools import robustbench_parity as parity, robustbench_zoo as robustbench  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ZHANG = "Zhang2019Theoretically"


def test_recipe_table_and_coverage_are_derived_from_the_installed_zoo():
  derived = robustbench.derive_recipes()
  assert robustbench.installed_version() == zoo_recipes.ROBUSTBENCH_VERSION
  assert derived == zoo_recipes.RECIPES, "run: python -m tools.robustbench_zoo"
  files = robustbench.generated_files("wheel", zoo_recipes.ROBUSTBENCH_VERSION, derived)
  for path, text in files.items():  # the recipes and docs/port.md's table and lists
    with open(path) as f:
      assert f.read() == text, "run: python -m tools.robustbench_zoo"


def test_coverage_by_name():
  cover = zoo.coverage()
  for key, floor in ((("cifar10", "Linf"), 0.85), (("cifar10", "L2"), 0.85),
                     (("cifar100", "Linf"), 0.80)):
    ok, total = cover[key]
    assert total >= 18 and ok / total >= floor, (key, ok, total)


@pytest.mark.parametrize("report,recipes", [("robustbench_parity.md", zoo_recipes),
                                            ("robustbench_parity_main.md", zoo_recipes_main)])
def test_the_committed_parity_proof_covers_every_supported_entry(report, recipes):
  """docs/robustbench_parity*.md (python -m tools.robustbench_parity [--source=<checkout>]):
  one row per supported entry of the zoo's table, every one within the tolerance, read from
  the zoo the table was derived from."""
  with open(os.path.join(ROOT, "docs", report)) as f:
    text = f.read()
  assert zoo.zoo_name(recipes.ROBUSTBENCH_VERSION) in text
  rows = [line.split("|")[1:-1] for line in text.splitlines()
          if re.match(r"\| (cifar|imagenet)", line)]
  checked = {(r[0].strip(), r[1].strip(), r[2].strip()): float(r[4].split()[0]) for r in rows}
  supported = {(d, t, n) for d, ts in recipes.RECIPES.items() for t, es in ts.items()
               for n, e in es.items() if "arch" in e}
  assert set(checked) == supported
  assert max(checked.values()) <= parity.TOLERANCE


def test_recipes_read_the_entrys_own_module():
  r = zoo_recipes.RECIPES
  assert r["cifar10"]["Linf"][ZHANG]["arch"] == "wrn34_10"
  # Normalisation written in the subclass's forward (2x - 1), and per-image standardisation.
  assert r["cifar10"]["Linf"]["Hendrycks2019Using"]["mean"] == (0.5, 0.5, 0.5)
  assert r["cifar10"]["Linf"]["Ding2020MMA"]["kwargs"]["per_image_standardization"]
  # RobustBench's loader opens the Kireev / Andriushchenko files at 'last'.
  assert r["cifar10"]["corruptions"]["Kireev2021Effectiveness_RLAT"]["checkpoint_key"] == "last"
  assert r["cifar10"]["Linf"]["Andriushchenko2020Understanding"]["checkpoint_key"] == "last"
  # A DM model's statistics are its dataset's, from the zoo's constructor.
  dm100 = r["cifar100"]["Linf"]["Rebuffi2021Fixing_R18_ddpm"]
  assert dm100["mean"] == tuple(models.DM_NORMALISATION[100][0])
  assert r["cifar10"]["Linf"]["Pang2020Boosting"]["kwargs"]["cosine_head"]
  assert r["cifar10"]["Linf"]["Huang2021Exploring"]["kwargs"]["stage_widths"] == (320, 640, 512)
  assert r["cifar10"]["Linf"]["Dai2021Parameterizing"]["kwargs"]["activation"] == "pssilu"


def _save_entry(name, model_dir, dataset="cifar10", threat="Linf", seed=0):
  """The zoo entry's own module with random weights, in RobustBench's file layout."""
  entry = robustbench.zoo_entries(dataset)[threat][name]
  torch.manual_seed(seed)
  net = robustbench.randomise_batchnorm(entry["model"](), seed)
  path = zoo.checkpoint_path(name, dataset, threat, str(model_dir))
  os.makedirs(os.path.dirname(path), exist_ok=True)
  parity.save_as_robustbench(net, zoo.recipe(name, dataset, threat), path)
  x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(seed + 1))
  with torch.no_grad():
    ref = net(x).numpy()
  return x.numpy().transpose(0, 2, 3, 1), ref


@pytest.fixture(scope="module")
def zhang_dir(tmp_path_factory):
  model_dir = tmp_path_factory.mktemp("models")
  x, ref = _save_entry(ZHANG, model_dir)
  return str(model_dir), x, ref


def test_the_papers_teacher_by_name_and_by_convert_mode(zhang_dir, tmp_path):
  from mixacm_jax.cli import modes  # pylint: disable=g-import-not-at-top
  from mixacm_jax.configs import default  # pylint: disable=g-import-not-at-top
  from mixacm_jax.runtime import checkpoint  # pylint: disable=g-import-not-at-top
  model_dir, x, ref = zhang_dir
  model, variables = mixacm_jax.load_robustbench(ZHANG, model_dir=model_dir)
  out = np.asarray(model.apply(variables, jnp.asarray(x)))
  assert float(np.max(np.abs(out - ref))) <= 1e-4
  np.testing.assert_array_equal(out.argmax(-1), ref.argmax(-1))

  config = default.get_config()
  config.convert.robustbench, config.convert.model_dir = ZHANG, model_dir
  workdir = str(tmp_path / "converted")
  assert modes.run("convert", config, workdir) == 0
  loaded = checkpoint.load_variables(model, (32, 32, 3), workdir)
  out2 = np.asarray(model.apply(loaded, jnp.asarray(x)))
  np.testing.assert_array_equal(out2, out)


@pytest.mark.slow
def test_the_papers_teacher_distils_into_a_student_by_name(zhang_dir, tmp_path, tiny_config):
  from mixacm_jax.configs import cifar  # pylint: disable=g-import-not-at-top
  model_dir, _, _ = zhang_dir
  result = distil_from_zoo(tiny_config, ZHANG, model_dir, cifar.WRN_TO_RESNET_STAGES[:2],
                           str(tmp_path / "student"))
  assert result["steps"] == 2 and result["teacher_forward_passes"] > 0
  assert 0 <= result["clean_accuracy"] <= 100


def test_a_cifar100_dm_model_gets_cifar100_statistics(tmp_path):
  name = "Rebuffi2021Fixing_R18_ddpm"
  x, ref = _save_entry(name, tmp_path, dataset="cifar100")
  model, variables = mixacm_jax.load_robustbench(name, "cifar100", "Linf", str(tmp_path))
  assert model.mean == models.DM_NORMALISATION[100][0] and model.num_classes == 100
  out = np.asarray(model.apply(variables, jnp.asarray(x)))
  assert float(np.max(np.abs(out - ref))) <= 1e-4


def test_an_ensemble_loads_from_robustbenchs_member_files(tmp_path, monkeypatch):
  """Chen2020Adversarial's layout (<name>.pt_m0.pt ...: one file per member, the mean of the
  members' softmax after one normalisation), at small size: its own recipe with 1 block per
  stage, members built from RobustBench's own block."""
  name = "Chen2020Adversarial"
  small = dict(zoo_recipes.RECIPES["cifar10"]["Linf"][name])
  assert small["softmax_ensemble"] == 3 and small["arch"] == "preact_bottleneck_resnet50"
  small["kwargs"] = dict(small["kwargs"], stage_sizes=(1, 1, 1, 1))
  monkeypatch.setitem(zoo_recipes.RECIPES["cifar10"]["Linf"], name, small)
  resnet = robustbench.architecture_module("resnet")
  members = [robustbench.randomise_batchnorm(
      resnet.ResNet(resnet.BottleneckChen2020AdversarialNet, [1, 1, 1, 1]), i) for i in range(3)]
  path = zoo.checkpoint_path(name, model_dir=str(tmp_path))
  os.makedirs(os.path.dirname(path))
  for i, m in enumerate(members):
    torch.save({"state_dict": {f"module.{k}": v for k, v in m.state_dict().items()}},
               f"{path}_m{i}.pt")
  x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(4))
  mu, sigma = (torch.tensor(v).view(1, 3, 1, 1) for v in (small["mean"], small["std"]))
  with torch.no_grad():
    ref = sum(torch.softmax(m((x - mu) / sigma), 1) for m in members).numpy() / 3
  model, variables = mixacm_jax.load_robustbench(name, model_dir=str(tmp_path))
  out = np.asarray(model.apply(variables, jnp.asarray(x.numpy().transpose(0, 2, 3, 1))))
  assert float(np.max(np.abs(out - ref))) <= 1e-5
  os.remove(f"{path}_m2.pt")
  with pytest.raises(CheckpointError, match=r"Chen2020Adversarial.pt_m2.pt not found"):
    zoo.load_robustbench(name, model_dir=str(tmp_path))
  from mixacm_jax.configs import default  # pylint: disable=g-import-not-at-top
  convert_cfg = default.get_config().convert
  convert_cfg.robustbench, convert_cfg.model_dir = name, str(tmp_path)
  with pytest.raises(ConfigError, match=r"an ensemble \(3 weight files\), used by name, not "
                     r"converted: --config.teacher.robustbench=Chen2020Adversarial$"):
    to_orbax.to_checkpoint(convert_cfg, str(tmp_path / "converted"))


def test_every_wrong_input_is_one_line(zhang_dir, tmp_path):
  model_dir, _, _ = zhang_dir
  cases = [
      (lambda: zoo.recipe("Zhang2019Theoreticaly"), ConfigError, "nearest: " + ZHANG),
      (lambda: zoo.recipe(ZHANG, "cifar100"), ConfigError, "it is an entry of cifar10 Linf"),
      (lambda: zoo.recipe(ZHANG, "svhn"), ConfigError, "unknown RobustBench dataset 'svhn'"),
      (lambda: zoo.recipe(ZHANG, threat_model="L3"), ConfigError, "unknown threat model 'L3'"),
      (lambda: zoo.recipe("Kang2021Stable"), ConfigError,
       r"no Flax twin here: built from geotorch.orthogonal \(not installed\)"),
      (lambda: zoo.load_robustbench(ZHANG, model_dir=str(tmp_path)), CheckpointError,
       r"Zhang2019Theoretically.pt not found; .*load_model\('Zhang2019Theoretically', "
       f"model_dir='{tmp_path}', dataset='cifar10', threat_model='Linf'\\)"),
  ]
  for call, error, pattern in cases:
    with pytest.raises(error, match=pattern) as e:
      call()
    assert "\n" not in str(e.value)
  # A file of another architecture where the entry should be.
  wrong = zoo.checkpoint_path("Sehwag2021Proxy_R18", model_dir=str(tmp_path))
  os.makedirs(os.path.dirname(wrong), exist_ok=True)
  torch.save(robustbench.architecture_module("wide_resnet").WideResNet(
      depth=10, widen_factor=1).state_dict(), wrong)
  with pytest.raises(CheckpointError, match=r"does not hold RobustBench's Sehwag2021Proxy_R18 "
                                            r"\(resnet18.*\): the weights do not fit ResNet"):
    zoo.load_robustbench("Sehwag2021Proxy_R18", model_dir=str(tmp_path))
  # A teacher of another dataset.
  from mixacm_jax.configs import default  # pylint: disable=g-import-not-at-top
  from mixacm_jax.training import teacher as teacher_lib  # pylint: disable=g-import-not-at-top
  cfg = default.get_config().teacher
  cfg.robustbench, cfg.model_dir = ZHANG, model_dir
  with pytest.raises(ConfigError, match="has 10 classes and the data 100"):
    teacher_lib.load_teacher(cfg, 100, (32, 32, 3))


# --- RobustBench's main branch ------------------------------------------------------------


def test_the_main_branch_recipes_name_their_commit_and_build_registered_models():
  """zoo_recipes_main (python -m tools.robustbench_zoo --source=<checkout>): derived again
  only where a checkout is given (ROBUSTBENCH_SOURCE); here, what can be checked without it."""
  assert re.fullmatch(r"main@[0-9a-f]{40}", zoo_recipes_main.ROBUSTBENCH_VERSION)
  for dataset, tables in zoo_recipes_main.RECIPES.items():
    for threat, entries in tables.items():
      for name, entry in entries.items():
        assert "arch" in entry or entry["unsupported"], name
        if "arch" in entry:
          assert entry["arch"] in models.MODELS, name
          fields = models.architecture_fields(entry["arch"])
          assert set(entry["kwargs"]) <= set(fields), (name, entry["kwargs"])
  # Entries both zoos have are built the same way by both, unless RobustBench changed them.
  for dataset, tables in zoo_recipes.RECIPES.items():
    for threat, entries in tables.items():
      for name, entry in entries.items():
        newer = zoo_recipes_main.RECIPES.get(dataset, {}).get(threat, {}).get(name)
        if newer and "arch" in entry and "arch" in newer:
          assert newer == entry, name
  # docs/port.md shows both zoos side by side, as the generator writes them.
  files = robustbench.generated_files("main", zoo_recipes_main.ROBUSTBENCH_VERSION,
                                      zoo_recipes_main.RECIPES)
  with open(os.path.join(ROOT, "docs", "port.md")) as f:
    assert f.read() == files[os.path.join(ROOT, "docs", "port.md")]


def test_the_main_branch_recipes_are_derived_from_its_checkout():
  source = os.environ.get("ROBUSTBENCH_SOURCE")
  if not source:
    pytest.skip("set ROBUSTBENCH_SOURCE to a checkout of RobustBench's main branch to derive "
                "mixacm_jax/port/zoo_recipes_main.py again (CI has no network)")
  code = ("import json, sys; from tools import robustbench_zoo as r; "
          "print(json.dumps([r.source_version(sys.argv[1]), repr(r.derive_recipes(sys.argv[1]))]))")
  out = subprocess.run([sys.executable, "-c", code, source], cwd=ROOT, capture_output=True,
                       text=True, timeout=600, check=True)  # its own process: its own zoo
  version, recipes = json.loads(out.stdout.strip().splitlines()[-1])
  assert version == zoo_recipes_main.ROBUSTBENCH_VERSION
  assert recipes == repr(zoo_recipes_main.RECIPES)


def test_an_entry_only_the_main_branch_has_loads_by_name(tmp_path, monkeypatch):
  """Wang2023Better_WRN-28-10 is not in robustbench==1.1.1: its recipe comes from the main
  branch's zoo, its file from RobustBench's layout (written here by our own export), and a
  missing file's message says which RobustBench fetches it."""
  name = "Wang2023Better_WRN-28-10"
  assert name not in zoo_recipes.RECIPES["cifar10"]["Linf"]
  version, found = zoo.lookup(name)
  assert version == zoo_recipes_main.ROBUSTBENCH_VERSION
  with pytest.raises(CheckpointError, match="with RobustBench installed from RobustBench's "
                                            "main branch"):
    zoo.load_entry(name, model_dir=str(tmp_path))
  found = dict(found, kwargs={**found["kwargs"], "depth": 10, "widen_factor": 1})  # tiny
  monkeypatch.setitem(zoo_recipes_main.RECIPES["cifar10"]["Linf"], name, found)
  model = zoo.create_model(found)
  variables = models.init_variables(model, jax.random.PRNGKey(3), (32, 32, 3))
  path = zoo.checkpoint_path(name, "cifar10", "Linf", str(tmp_path))
  os.makedirs(os.path.dirname(path))
  convert.export(variables, model, path)
  loaded, loaded_vars, info = zoo.load_entry(name, model_dir=str(tmp_path))
  assert info["robustbench_version"] == version
  x = np.random.default_rng(0).random((2, 32, 32, 3), np.float32)
  np.testing.assert_allclose(np.asarray(loaded.apply(loaded_vars, x)),
                             np.asarray(model.apply(variables, x)), atol=1e-5)
