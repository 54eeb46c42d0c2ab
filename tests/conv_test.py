"""The convolution with a chosen weight-gradient form: every form equals XLA's gradient, the
choice is measured once and cached, the switch forces one, and models train the same."""
import json

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
import pytest

from mixacm_jax import models
from mixacm_jax.models import conv

SHAPES = [  # (x shape, kernel shape, strides, padding)
    ((4, 8, 8, 3), (3, 3, 3, 5), (1, 1), ((1, 1), (1, 1))),
    ((2, 9, 9, 4), (3, 3, 4, 6), (2, 2), ((1, 1), (1, 1))),
    ((2, 8, 8, 4), (3, 3, 4, 6), (2, 2), ((0, 1), (0, 1))),  # TF-'SAME', stride 2
    ((3, 8, 8, 6), (1, 1, 6, 4), (2, 2), ((0, 0), (0, 0))),  # a 1x1 shortcut
    ((2, 6, 6, 2), (5, 5, 2, 3), (1, 1), ((2, 2), (2, 2))),
]


def _arrays(x_shape, w_shape, seed=0):
  rng = np.random.RandomState(seed)
  return (jnp.asarray(rng.randn(*x_shape), jnp.float32),
          jnp.asarray(rng.randn(*w_shape), jnp.float32))


@pytest.mark.parametrize("form", conv.FORMS)
@pytest.mark.parametrize("x_shape,w_shape,strides,padding", SHAPES)
def test_every_form_gives_xlas_gradients(monkeypatch, form, x_shape, w_shape, strides, padding):
  monkeypatch.setenv(conv.ENV, form)
  x, w = _arrays(x_shape, w_shape)
  dn = lax.conv_dimension_numbers(x.shape, w.shape, ("NHWC", "HWIO", "NHWC"))

  def loss(f):
    return lambda x, w: jnp.sum(jnp.sin(f(x, w, strides, padding, dimension_numbers=dn)))
  ours = jax.jit(jax.grad(loss(conv.conv_general_dilated), argnums=(0, 1)))(x, w)
  ref = jax.jit(jax.grad(loss(lax.conv_general_dilated), argnums=(0, 1)))(x, w)
  for a, b in zip(ours, ref):
    assert a.shape == b.shape
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * float(jnp.max(jnp.abs(b))))
  forward = conv.conv_general_dilated(x, w, strides, padding, dimension_numbers=dn)
  np.testing.assert_array_equal(forward, lax.conv_general_dilated(x, w, strides, padding,
                                                                  dimension_numbers=dn))


def test_auto_measures_once_caches_on_disk_and_keeps_xla_unless_clearly_faster(
    tmp_path, monkeypatch):
  monkeypatch.setenv("MIXACM_JAX_CACHE", str(tmp_path))
  monkeypatch.setenv(conv.ENV, "auto")
  conv.reset_choices()
  calls = []
  fake = {"xla": 1.0, "shifted": 0.5, "im2col": 0.95}
  monkeypatch.setattr(conv, "measure", lambda *a, **k: calls.append(a) or dict(fake))
  shape = ((2, 16, 16, 3), (3, 3, 3, 4), (1, 1), ((1, 1), (1, 1)), jnp.float32)
  small = ((2, 8, 8, 3), (3, 3, 3, 4), (1, 1), ((1, 1), (1, 1)), jnp.float32)
  assert conv.backward_form(*small) == "xla" and not calls  # below 16x16: XLA's, unmeasured
  assert conv.backward_form(*shape) == "shifted"
  assert conv.backward_form(*shape) == "shifted" and len(calls) == 1  # once per process
  table = json.load(open(conv.cache_path()))
  (entry,) = table.values()
  assert entry["form"] == "shifted" and entry["seconds"] == fake
  conv.reset_choices()  # a new process: read back from the file, not measured again
  assert conv.backward_form(*shape) == "shifted" and len(calls) == 1
  # Within the 10 % margin XLA's own form stays.
  assert conv.pick({"xla": 1.0, "shifted": 0.95, "im2col": 0.97}) == "xla"
  assert conv.pick({"xla": 1.0, "shifted": 0.95, "im2col": 0.2}) == "im2col"
  monkeypatch.setenv(conv.ENV, "xla")  # the switch wins over the cache
  assert conv.backward_form(*shape) == "xla"
  monkeypatch.setenv(conv.ENV, "fastest")
  with pytest.raises(ValueError, match="expected auto or one of xla, shifted, im2col"):
    conv.backward_form(*shape)
  conv.reset_choices()


def test_measure_times_every_form_on_the_real_shape():
  timings = conv.measure((2, 8, 8, 3), (3, 3, 3, 4), (1, 1), ((1, 1), (1, 1)), jnp.float32,
                         repeats=1)
  assert set(timings) == set(conv.FORMS) and all(t > 0 for t in timings.values())


def test_a_model_trains_the_same_with_every_form(monkeypatch):
  """One ResNet's parameter gradients (convs of stride 1 and 2, 1x1 shortcuts) per form."""
  model = models.create_model("resnet18", num_classes=10, base_width=4, stage_sizes=(1, 1))
  variables = models.init_variables(model, jax.random.PRNGKey(0), (8, 8, 1))
  x = jnp.asarray(np.random.RandomState(1).rand(8, 8, 8, 1), jnp.float32)
  y = jnp.arange(8) % 10

  def grads():
    def loss(params):
      logits, _ = model.apply({**variables, "params": params}, x, train=True,
                              mutable=["batch_stats"])
      return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(8), y])
    return jax.jit(jax.grad(loss))(variables["params"])
  per_form = {}
  for form in conv.FORMS:
    monkeypatch.setenv(conv.ENV, form)
    per_form[form] = grads()
  for form in ("shifted", "im2col"):
    for a, b in zip(jax.tree_util.tree_leaves(per_form[form]),
                    jax.tree_util.tree_leaves(per_form["xla"])):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
