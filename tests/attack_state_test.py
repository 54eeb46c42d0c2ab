"""The attacks' typed loop state and constants, and the label checks at their entry points."""
import inspect
import re

import jax
import jax.numpy as jnp
import pytest

from mixacm_jax.attacks import apgd, fab, pgd, square

N = 4
X = jnp.full((N, 4, 4, 3), 0.5)
Y = jnp.arange(N) % 3


def _net(v):
  return v.reshape(v.shape[0], -1)[:, :3]


# name -> attack(x, y, y_target): each public attack on a few steps (the checks come first).
ATTACKS = {
    "apgd": lambda x, y, t: apgd.apgd(_net, x, y, jax.random.PRNGKey(0), eps=0.1, n_iter=2,
                                      y_target=t, loss="ce" if t is None else "dlr_targeted"),
    "apgd_targeted": lambda x, y, t: apgd.apgd_targeted(_net, x, y, jax.random.PRNGKey(0),
                                                        eps=0.1, n_iter=2, n_target_classes=1),
    "square": lambda x, y, t: square.square(_net, x, y, jax.random.PRNGKey(0), eps=0.1,
                                            n_queries=2),
    "fab": lambda x, y, t: fab.fab(_net, x, y, (y + 1) % 3 if t is None else t, eps=0.1,
                                   n_iter=2),
    "fab_targeted": lambda x, y, t: fab.fab_targeted(_net, x, y, None, eps=0.1, n_iter=2,
                                                     n_target_classes=1),
    "pgd": lambda x, y, t: pgd.pgd(_net, x, y, jax.random.PRNGKey(0), eps=0.1, step_size=0.05,
                                   steps=2),
    "fgsm": lambda x, y, t: pgd.fgsm(_net, x, y, eps=0.1),
}
BAD_LABELS = {"short": Y[:-1], "float": Y.astype(jnp.float32), "one_hot": jax.nn.one_hot(Y, 3)}


@pytest.mark.parametrize("traced", [False, True], ids=["arrays", "jit"])
@pytest.mark.parametrize("bad", sorted(BAD_LABELS))
@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_labels_that_do_not_fit_x_are_refused_with_the_attacks_name(name, bad, traced):
  """A y of the wrong length, dtype or rank fails at once (also while tracing, before any
  compilation), saying which attack and what it expected."""
  attack = ATTACKS[name]
  run = jax.jit(lambda x, y: attack(x, y, None)) if traced else lambda x, y: attack(x, y, None)
  with pytest.raises(AssertionError, match=re.escape(f"{name}: y must be integer labels")):
    run(X, BAD_LABELS[bad])


@pytest.mark.parametrize("name", ["apgd", "fab"])
def test_a_target_that_does_not_fit_y_is_refused(name):
  with pytest.raises(AssertionError, match=re.escape(f"{name}: y_target must be integer")):
    ATTACKS[name](X, Y, Y[:-1])
  with pytest.raises(AssertionError, match=re.escape(f"{name}: y_target must be integer")):
    ATTACKS[name](X, Y, Y.astype(jnp.float32))


TYPES = [apgd.ApgdConsts, apgd.ApgdState, square.SquareConsts, square.SquareState,
         fab.FabConsts, fab.FabState]


@pytest.mark.parametrize("cls", TYPES, ids=lambda c: c.__name__)
def test_state_and_constants_are_named_tuples_that_document_every_field(cls):
  assert issubclass(cls, tuple) and cls._fields, cls
  documented = re.findall(r"^(\w+): ", inspect.cleandoc(cls.__doc__), re.MULTILINE)
  assert documented == list(cls._fields), (cls.__name__, documented)


def test_each_programs_init_gives_its_state_type_with_the_examples_leading():
  """The typed state is what `init` builds (traced only: nothing runs)."""
  key = jax.random.PRNGKey(0)
  eps = jnp.float32(0.1)
  f = jax.tree_util.Partial(_net)
  cases = [
      (apgd._program("ce", "linf", 4, 0.75, 1),  # pylint: disable=protected-access
       apgd.ApgdConsts(f, X, Y, None, key, eps), apgd.ApgdState),
      (square._program("linf", 4, 0.8, False),  # pylint: disable=protected-access
       square.SquareConsts(f, X, Y, jax.random.split(key, N), eps), square.SquareState),
      (fab._program("linf", 0.1, 1.05, 0.9),  # pylint: disable=protected-access
       fab.FabConsts(f, X, Y, (Y + 1) % 3, eps), fab.FabState),
  ]
  for program, consts, state_type in cases:
    state = jax.eval_shape(program.init, consts)
    assert type(state) is state_type  # pylint: disable=unidiomatic-typecheck
    assert all(leaf.shape[0] == N for leaf in jax.tree_util.tree_leaves(state)), state
    stepped = jax.eval_shape(lambda s, c, p=program: p.step(0, s, c), state, consts)
    assert jax.tree_util.tree_structure(stepped) == jax.tree_util.tree_structure(state)
