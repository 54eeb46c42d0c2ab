"""The package's plan (docs/design.md) against its code: which part imports which, no cycles,
the public API, and an installed package that claims no top-level name but its own."""
import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "mixacm_jax")

# docs/design.md, "Who may import whom": part -> the parts it may import.
BASE = {"errors"}
ALLOWED = {
    "errors": set(),
    "models": BASE, "data": BASE,
    "runtime": BASE | {"models"},
    "attacks": BASE | {"runtime"},
    "port": BASE | {"models", "runtime"},
    "objectives": BASE | {"attacks", "models", "runtime"},
    "configs": BASE | {"models", "objectives", "attacks"},
    "evaluation": BASE | {"models", "data", "runtime", "attacks", "port", "objectives",
                          "configs"},
    "training": BASE | {"models", "data", "runtime", "attacks", "port", "objectives", "configs",
                        "evaluation"},
}
TOP_LEVEL = {"api", "cli", "__init__"}  # may import every part


def _modules():
  for folder, _, files in os.walk(PACKAGE):
    for name in files:
      if name.endswith(".py"):
        path = os.path.join(folder, name)
        rel = os.path.relpath(path, PACKAGE)[:-3].replace(os.sep, ".")
        yield rel.removesuffix(".__init__"), path


def _imports(path):
  """Dotted names of the package's modules that `path` imports (at any depth)."""
  tree = ast.parse(open(path).read())
  out = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mixacm_jax"):
      base = node.module[len("mixacm_jax"):].lstrip(".")
      for alias in node.names:
        out.add(f"{base}.{alias.name}".strip("."))
    elif isinstance(node, ast.Import):
      out |= {a.name[len("mixacm_jax."):] for a in node.names
              if a.name.startswith("mixacm_jax.")}
  return out


def _part(dotted: str) -> str:
  return dotted.split(".")[0]


def test_every_import_follows_the_design_table():
  wrong = []
  for module, path in _modules():
    part = _part(module)
    if part in TOP_LEVEL:
      continue
    for target in _imports(path):
      other = _part(target)
      if other != part and other not in ALLOWED[part]:
        wrong.append(f"{module} imports {target}")
  assert not wrong, wrong


def test_no_import_cycles_between_parts():
  graph = {}
  for module, path in _modules():
    if _part(module) in TOP_LEVEL:
      continue
    graph.setdefault(_part(module), set()).update(
        _part(t) for t in _imports(path) if _part(t) != _part(module))

  def reaches(start, goal, seen=()):
    return any(n == goal or (n not in seen and reaches(n, goal, seen + (n,)))
               for n in graph.get(start, ()))
  assert not [p for p in graph if reaches(p, p)]


def test_every_public_name_imports():
  import mixacm_jax  # pylint: disable=g-import-not-at-top
  assert set(mixacm_jax.__all__) >= {"evaluate", "eval_config", "load_pytorch",
                                     "run_autoattack", "mixacm_loss"}
  for name in mixacm_jax.__all__:
    assert callable(getattr(mixacm_jax, name)), name
  with pytest.raises(AttributeError):
    getattr(mixacm_jax, "no_such_name")


def test_the_installed_package_claims_no_top_level_configs():
  """pyproject packages only mixacm_jax*, and what the command needs by default ships in it."""
  text = open(os.path.join(ROOT, "pyproject.toml")).read()
  assert 'include = ["mixacm_jax*"]' in text
  assert not os.path.exists(os.path.join(ROOT, "configs", "__init__.py"))
  from mixacm_jax.cli import main  # pylint: disable=g-import-not-at-top
  assert main.DEFAULT_CONFIG.startswith(PACKAGE) and os.path.isfile(main.DEFAULT_CONFIG)
