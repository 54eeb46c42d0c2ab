"""The report's last check on every attack: the returned points, evaluated again, agree with
the attack's robust/broken flags; points within their tie tolerance of the decision boundary
are counted, any other disagreement stops the evaluation (or is counted for a randomised
model)."""
import jax.numpy as jnp
import numpy as np
import pytest

from mixacm_jax.errors import AttackConstraintError
from mixacm_jax.evaluation import outcome as outcome_lib, programs
from mixacm_jax.evaluation.split import Split


def test_tie_tolerance_absolute_for_float32_on_cpu_relative_for_bfloat16():
  logits = np.array([[3.0, -40.0, 1.0], [0.5, 0.2, -0.1]], np.float32)
  np.testing.assert_allclose(programs.tie_tolerance(jnp.asarray(logits)),
                             [programs.TIE_MARGIN] * 2, rtol=1e-6)
  reduced = np.asarray(programs.tie_tolerance(jnp.asarray(logits, jnp.bfloat16)))
  expected = np.maximum(programs.TIE_MARGIN,
                        programs.TIE_RELATIVE * np.abs(logits).max(1))  # NumPy reference
  np.testing.assert_allclose(reduced, expected, rtol=1e-2)


def _verify(margin, tolerance, robust, strict=True):
  """Outcome.verify over 4 points whose re-evaluation gives these margins (the prediction is
  the label where the margin is positive)."""
  labels = np.array([0, 1, 2, 0])
  data = Split(np.zeros((4, 2, 2, 1)), labels, np.ones(4, bool), batch=4)
  out = outcome_lib.Outcome(data, np.ones(4, bool))

  def margins(_, x, y):
    m = jnp.asarray(margin, jnp.float32).reshape(y.shape)
    return jnp.where(m > 0, y, (y + 1) % 3), m, jnp.asarray(tolerance, jnp.float32).reshape(
        y.shape)

  return out.verify(margins, None, np.asarray(robust), "linf", "pgd", strict=strict)


def test_agreeing_points_pass_and_record_their_margins():
  checked = _verify([2.0, -1.0, 0.5, -3.0], [1e-4] * 4, [True, False, True, False])
  assert (checked.ties, checked.disagree) == (0, 0)
  np.testing.assert_array_equal(checked.margin, [2.0, -1.0, 0.5, -3.0])


def test_a_flip_within_the_tolerance_is_a_tie_outside_it_an_error():
  # Point 1 is flagged broken but classified correctly again, by 0.005.
  checked = _verify([2.0, 0.005, 0.5, -3.0], [1e-4, 0.01, 1e-4, 1e-4],
                    [True, False, True, False])
  assert (checked.ties, checked.disagree) == (1, 0)
  with pytest.raises(AttackConstraintError, match=r"1 returned points disagree.*\[1\]"):
    _verify([2.0, 0.005, 0.5, -3.0], [1e-4] * 4, [True, False, True, False])


def test_a_randomised_model_counts_disagreements_instead():
  checked = _verify([2.0, 0.5, -0.5, -3.0], [1e-4] * 4, [True, False, True, False],
                    strict=False)
  assert (checked.ties, checked.disagree) == (0, 2)


@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
def test_perturbation_norms_and_violations(norm):
  rng = np.random.RandomState(0)
  x = (0.05 + 0.9 * rng.rand(5, 3, 3, 2)).astype(np.float32)  # x + d stays in the box
  d = (0.01 * rng.randn(*x.shape)).astype(np.float32)
  flat = d.reshape(5, -1).astype(np.float64)
  expected = {"linf": np.abs(flat).max(1), "l2": np.sqrt((flat ** 2).sum(1)),
              "l1": np.abs(flat).sum(1)}[norm]
  np.testing.assert_allclose(outcome_lib.perturbation(x + d, x, norm), expected, rtol=1e-5)
  eps = float(np.median(expected))
  assert outcome_lib.violations(x + d, x, eps, norm) == int(np.sum(expected > eps + 1e-5))
