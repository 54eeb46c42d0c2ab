"""The docs run as written: every Python block of README.md and docs/*.md, and every documented
command of this project parsed by its real parser; plus the one-call API's checks against the
pieces it is made of."""
import ast
import glob
import os
import re
import shlex

import jax
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


DOCS = ["README.md"] + sorted(os.path.relpath(p, ROOT)
                              for p in glob.glob(os.path.join(ROOT, "docs", "*.md")))
DOCS += ["experiments/results/README.md"]


def _blocks(doc: str, language: str):
  return re.findall(rf"```{language}\n(.*?)```", open(os.path.join(ROOT, doc)).read(), re.S)


def _library_snippets():
  return _blocks("docs/library.md", "python")


@pytest.mark.parametrize("doc", [d for d in DOCS if d != "docs/library.md"
                                 and _blocks(d, "python")])
def test_every_python_block_of_the_docs_runs_as_written(doc, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  namespace = {}
  for code in _blocks(doc, "python"):  # one namespace per page, in order
    exec(compile(code, doc, "exec"), namespace)  # pylint: disable=exec-used
  if doc == "README.md":
    assert set(namespace["robust_after"]) == {"apgd-ce", "apgd-t"}
    assert 0 <= namespace["report"]["attacks"]["pgd20"]["robust_accuracy"] <= \
        namespace["report"]["clean_accuracy"] <= 1
  if doc == "docs/attacks.md":
    # BPDA breaks the quantised model that plain PGD cannot, which raised the gradient flag.
    plain, broken = namespace["plain"], namespace["broken"]
    assert plain["clean_accuracy"] == broken["clean_accuracy"] == 1
    assert broken["attacks"]["pgd20"]["robust_accuracy"] < 0.5 < \
        plain["attacks"]["pgd20"]["robust_accuracy"]
    assert any("all-zero or non-finite input gradient" in w for w in plain["warnings"])
    assert not any("gradient" in w for w in broken["warnings"])


def _commands(doc: str):
  """This project's commands in a page: lines of its bash blocks (continuations joined) and
  inline `python run.py ...` / `mixacm ...` / `python experiments/...` spans."""
  text = open(os.path.join(ROOT, doc)).read()
  lines = []
  for block in re.findall(r"```bash\n(.*?)```", text, re.S):
    lines += [c.split(" #")[0].strip() for c in block.replace("\\\n", " ").splitlines()]
  lines += re.findall(r"`((?:python run\.py|mixacm|python experiments/\S+) --[^`]*)`",
                      text.replace("\n", " "))
  ours = ("python run.py", "mixacm ", "python experiments/")
  return [c for c in lines if c.startswith(ours) and "<" not in c and "..." not in c]


def _script_flags(path: str):
  """The flags an experiment script defines (its own and experiments/common.py's)."""
  names = set()
  for source in (path, os.path.join(ROOT, "experiments", "common.py")):
    for node in ast.walk(ast.parse(open(source).read())):
      if (isinstance(node, ast.Call) and getattr(node.func, "attr", "").startswith("DEFINE")
          and node.args and isinstance(node.args[0], ast.Constant)):
        names.add(node.args[0].value)
  return names


def test_every_documented_command_parses_with_the_real_parser(monkeypatch):
  """Flags and `--config.*` overrides of each command go through absl and ml_collections as
  the command would parse them (config files loaded, keys and value types checked); the
  experiment scripts' flags are checked against the flags they define."""
  from absl import flags  # pylint: disable=g-import-not-at-top

  from mixacm_jax.cli import main  # pylint: disable=g-import-not-at-top
  monkeypatch.chdir(ROOT)
  checked = 0
  assert ("python run.py --config=configs/default_mixacm.py --workdir=workdirs/mixacm "
          "--mode=pipeline") in _commands("README.md")
  for doc in DOCS:
    for command in _commands(doc):
      argv = shlex.split(command)
      if argv[0] == "python" and argv[1].startswith("experiments/"):
        defined = _script_flags(os.path.join(ROOT, argv[1]))
        used = {a[2:].split("=")[0] for a in argv[2:] if a.startswith("--")}
        assert used <= defined, (doc, command, used - defined)
      else:
        args = argv[2:] if argv[0] == "python" else argv[1:]
        fv = flags.FlagValues()
        try:
          main.define_flags(fv, sys_argv=["mixacm"] + args)
          fv(["mixacm"] + args)
          _ = fv.config.keys()  # loads the config file and applies the overrides
        except Exception as e:  # pylint: disable=broad-except
          raise AssertionError(f"{doc}: {command}: {type(e).__name__}: {e}") from None
        assert fv.workdir, (doc, command)
      checked += 1
  assert checked >= 9


@pytest.mark.slow
def test_docs_library_page_runs_as_written(tmp_path, monkeypatch, capsys):
  torch = pytest.importorskip("torch", reason="the PyTorch-weights snippet needs torch "
                                              "(the `port` extra)")
  from tools import robustbench_zoo as robustbench  # pylint: disable=g-import-not-at-top
  snippets = _library_snippets()
  assert len(snippets) == 3
  # The file the weights snippet loads: RobustBench's WRN-16-2 with random weights.
  net = robustbench.randomise_batchnorm(
      robustbench.architecture_module("wide_resnet").WideResNet(depth=16, widen_factor=2), 0)
  torch.save(net.state_dict(), str(tmp_path / "wrn.pt"))
  # ... and the zoo entry the by-name line reads, where RobustBench keeps it.
  entry = robustbench.zoo_entries("cifar10")["Linf"]["Sehwag2021Proxy_R18"]
  r18 = robustbench.randomise_batchnorm(entry["model"](), 1)
  os.makedirs(tmp_path / "models" / "cifar10" / "Linf")
  torch.save(r18.state_dict(), str(tmp_path / "models" / "cifar10" / "Linf" /
                                   "Sehwag2021Proxy_R18.pt"))
  monkeypatch.chdir(tmp_path)
  namespace = {}
  for code in snippets:  # one namespace: later snippets use the names of earlier ones
    exec(compile(code, "README.md", "exec"), namespace)  # pylint: disable=exec-used
  out = capsys.readouterr().out.splitlines()
  clean, robust = map(float, out[0].split())
  assert 0 <= robust <= clean <= 1
  assert set(namespace["robust_after"]) == {"apgd-ce", "apgd-t"}
  with torch.no_grad():
    ref = net.eval()(torch.zeros(1, 3, 32, 32)).numpy()
  np.testing.assert_allclose(np.asarray(namespace["logits"]), ref, atol=1e-4)
  x = np.random.RandomState(1).rand(2, 32, 32, 3).astype(np.float32)
  with torch.no_grad():
    ref = r18(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
  ours = namespace["r18"].apply(namespace["r18_variables"], x)
  np.testing.assert_allclose(np.asarray(ours), ref, atol=1e-4)
  loss, metrics = namespace["loss"], namespace["metrics"]
  assert np.isfinite(float(loss)) and float(metrics["acm"]) > 0
  assert set(metrics) >= {"ce", "kd", "acm", "acm_stage1", "acm_stage2", "accuracy"}


def test_evaluate_on_arrays_equals_evaluate_on_the_dataset(tiny_resnet):
  import mixacm_jax  # pylint: disable=g-import-not-at-top
  from mixacm_jax.data import digits  # pylint: disable=g-import-not-at-top
  model, variables = tiny_resnet
  x, y = digits.arrays("test")
  kwargs = dict(attacks="clean,fgsm", eps=0.1, batch_size=64, num_examples=100)
  by_name = mixacm_jax.evaluate(model, variables, "digits", **kwargs)
  by_arrays = mixacm_jax.evaluate(model, variables, x, labels=y, **kwargs)
  assert by_name["num_examples"] == by_arrays["num_examples"] == 100
  assert by_name["clean_accuracy"] == by_arrays["clean_accuracy"]
  assert by_name["attacks"]["fgsm"] == by_arrays["attacks"]["fgsm"]
  from mixacm_jax.errors import ConfigError  # pylint: disable=g-import-not-at-top
  with pytest.raises(ConfigError, match="one class index per image"):
    mixacm_jax.evaluate(model, variables, x)
  with pytest.raises(ConfigError, match="unknown attack 'pgdx'"):
    mixacm_jax.evaluate(model, variables, x, labels=y, attacks="pgdx")


def test_run_autoattack_keeps_the_first_adversarial_and_runs_stages_on_what_is_left():
  """A linear model on 2-D points: APGD-CE breaks those near the boundary, and each later
  stage sees only what is left (checked by counting the points each stage receives). A
  third class that never wins, since the DLR losses need 3."""
  import functools  # pylint: disable=g-import-not-at-top
  from mixacm_jax.attacks import autoattack  # pylint: disable=g-import-not-at-top
  import mixacm_jax  # pylint: disable=g-import-not-at-top
  w = np.array([[1.0, -1.0, -5.0], [-1.0, 1.0, -5.0]], np.float32)
  logits_fn = lambda v: v.reshape(v.shape[0], -1)[:, :2] @ w
  rng = np.random.RandomState(0)
  x = rng.rand(32, 2, 1, 1).astype(np.float32)
  y = np.asarray(logits_fn(x).argmax(-1))
  seen = {}
  real = autoattack.STAGES["apgd-t"]

  def counting(f, a, b, k, **kw):
    if int(kw["target_rank"]) == 2:  # its first target class, over every device's shard
      seen["apgd-t"] = seen.get("apgd-t", 0) + a.shape[0]
    return real(f, a, b, k, **kw)
  with pytest.MonkeyPatch.context() as mp:
    # A partial with the stage's own keywords, so it is still known as a targeted stage.
    mp.setitem(autoattack.STAGES, "apgd-t", functools.partial(counting, **real.keywords))
    x_adv, after = mixacm_jax.run_autoattack(logits_fn, x, y, jax.random.PRNGKey(0), eps=0.1,
                                             version="apgd",
                                             overrides={"apgd-ce": {"n_iter": 10},
                                                        "apgd-t": {"n_iter": 10}})
  margin = np.abs(x[:, 0, 0, 0] - x[:, 1, 0, 0])
  # Points within 2*eps (in the L-inf sense) of the boundary x0 = x1 can be flipped.
  assert np.all(after["apgd-ce"][margin > 0.2 + 1e-6])
  assert not np.any(after["apgd-ce"][margin < 0.15])
  # What is left, padded to at most the next power of two (few shapes to compile).
  left = int(after["apgd-ce"].sum())
  assert 0 < left < len(y) and left <= seen["apgd-t"] < 2 * left
  broken = ~after["apgd-t"]
  assert np.all(np.asarray(logits_fn(x_adv).argmax(-1))[broken] != y[broken])
  np.testing.assert_array_equal(x_adv[~broken], x[~broken])
  assert np.abs(x_adv - x).max() <= 0.1 + 1e-6
  with pytest.raises(ValueError, match="needs at least 3 classes; the model has 2"):
    mixacm_jax.run_autoattack(lambda v: logits_fn(v)[:, :2], x, y, jax.random.PRNGKey(0),
                              eps=0.1, version="apgd")


def test_importing_the_library_leaves_jax_unconfigured():
  """No module makes a device array at import, so a user can still configure JAX after
  `import mixacm_jax` (e.g. `jax.config.update("jax_num_cpu_devices", 4)`)."""
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  code = (
      "import pkgutil, importlib, mixacm_jax\n"
      "from jax._src import xla_bridge\n"
      "names = [m.name for m in pkgutil.walk_packages(mixacm_jax.__path__, 'mixacm_jax.')]\n"
      "for name in names:\n"
      "  importlib.import_module(name)\n"
      "  assert not xla_bridge.backends_are_initialized(), name\n"
      "import jax\n"
      "jax.config.update('jax_num_cpu_devices', 3)\n"
      "print(len(names), jax.device_count())\n")
  out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       env=dict(os.environ, JAX_PLATFORMS="cpu"), timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  modules, devices = map(int, out.stdout.split())
  files = glob.glob(os.path.join(ROOT, "mixacm_jax", "**", "*.py"), recursive=True)
  assert modules == len(files) - 1 and devices == 3  # every module but mixacm_jax/__init__
