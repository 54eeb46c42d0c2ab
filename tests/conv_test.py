"""The convolution with chosen forms: every form equals XLA's forward and gradients, the
choice is measured once (as the devices run it) and cached, the switch forces one, and models
train the same."""
import json

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
import pytest

from mixacm_jax import models
from mixacm_jax.models import conv

SHAPES = [  # (x shape, kernel shape, strides, padding)
    ((16, 8, 8, 3), (3, 3, 3, 5), (1, 1), ((1, 1), (1, 1))),
    ((2, 9, 9, 4), (3, 3, 4, 6), (2, 2), ((1, 1), (1, 1))),
    ((2, 8, 8, 4), (3, 3, 4, 6), (2, 2), ((0, 1), (0, 1))),  # TF-'SAME', stride 2
    ((3, 8, 8, 6), (1, 1, 6, 4), (2, 2), ((0, 0), (0, 0))),  # a 1x1 shortcut
    ((2, 6, 6, 2), (5, 5, 2, 3), (1, 1), ((2, 2), (2, 2))),
    ((4, 7, 6, 2), (3, 2, 2, 3), (1, 1), ((0, 2), (1, 0))),  # uneven kernel and padding
]


def _arrays(x_shape, w_shape, seed=0):
  rng = np.random.RandomState(seed)
  return (jnp.asarray(rng.randn(*x_shape), jnp.float32),
          jnp.asarray(rng.randn(*w_shape), jnp.float32))


# Every form on the first shape (batch 16: groups of 2, 8 and all differ); on the others each
# code path (XLA's; rows, im2col; whole batch or grouped).
PATHS = ("xla", "rows", "rows/2", "im2col", "im2col/2")
ATTACKED = ("xla", "rows/2", "im2col")
CASES = ([(form,) + SHAPES[0] for form in conv.FORMS] +
         [(form,) + shape for shape in SHAPES[1:] for form in PATHS])


@pytest.mark.parametrize("form,x_shape,w_shape,strides,padding", CASES)
def test_every_form_gives_xlas_forward_and_gradients(monkeypatch, form, x_shape, w_shape,
                                                     strides, padding):
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
  ref = lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=dn)
  if form == "xla":
    np.testing.assert_array_equal(forward, ref)
  np.testing.assert_allclose(forward, ref, rtol=1e-5, atol=1e-5 * float(jnp.max(jnp.abs(ref))))


@pytest.mark.parametrize("form,strides,matmuls", [("rows/2", (1, 1), True),
                                                  ("rows/2", (2, 2), False),
                                                  ("xla", (1, 1), False)])
def test_the_input_gradient_takes_the_forward_form_at_stride_1(monkeypatch, form, strides,
                                                                 matmuls):
  monkeypatch.setenv(conv.ENV, form)
  x, w = _arrays((4, 8, 8, 3), (3, 3, 3, 5))
  dn = ("NHWC", "HWIO", "NHWC")
  jaxpr = str(jax.make_jaxpr(jax.grad(lambda x: jnp.sum(conv.conv_general_dilated(
      x, w, strides, ((1, 1), (1, 1)), dimension_numbers=dn))))(x))
  transposed = jaxpr.split("custom_vjp_call")[-1]  # the backward's part
  assert ("conv_general_dilated" not in transposed) == matmuls


def test_auto_measures_once_caches_on_disk_and_keeps_xla_unless_clearly_faster(
    tmp_path, monkeypatch):
  monkeypatch.setenv("MIXACM_JAX_CACHE", str(tmp_path))
  monkeypatch.setenv(conv.ENV, "auto")
  conv.reset_choices()
  calls = []
  fake = {"xla": 1.0, "rows/2": 0.5, "im2col": 0.95}
  monkeypatch.setattr(conv, "measure", lambda *a, **k: calls.append(a) or dict(fake))
  shape = ((64, 32, 32, 64), (3, 3, 64, 64), (1, 1), ((1, 1), (1, 1)), jnp.float32)
  small = ((2, 32, 32, 3), (3, 3, 3, 4), (1, 1), ((1, 1), (1, 1)), jnp.float32)
  assert conv.flops(*small[:4]) < conv.MIN_FLOPS <= conv.flops(*shape[:4])
  assert conv.form_for("forward", *small) == "xla" and not calls  # too small: unmeasured
  assert conv.form_for("weight_grad", *shape) == "rows/2"
  assert conv.form_for("weight_grad", *shape) == "rows/2" and len(calls) == 1  # once
  assert conv.form_for("forward", *shape) == "rows/2" and len(calls) == 2  # per pass
  table = json.load(open(conv.cache_path()))
  assert sorted(k.split("|")[4] for k in table) == ["forward", "weight_grad"]
  assert all(v["form"] == "rows/2" and v["seconds"] == fake for v in table.values())
  assert all("|2 devices|" in k for k in table)  # the tests run on two host devices
  conv.reset_choices()  # a new process: read back from the file, not measured again
  assert conv.form_for("weight_grad", *shape) == "rows/2" and len(calls) == 2
  # Within the 10 % margin XLA's own form stays.
  assert conv.pick({"xla": 1.0, "rows": 0.95, "im2col": 0.97}) == "xla"
  assert conv.pick({"xla": 1.0, "rows": 0.95, "im2col/8": 0.2}) == "im2col/8"
  monkeypatch.setenv(conv.ENV, "xla")  # the switch wins over the cache
  assert conv.form_for("weight_grad", *shape) == "xla"
  monkeypatch.setenv(conv.ENV, "fastest")
  with pytest.raises(ValueError, match="expected auto or one of xla, rows, rows/2"):
    conv.form_for("weight_grad", *shape)
  monkeypatch.setenv(conv.ENV, "auto")
  monkeypatch.setenv("MIXACM_CONV_BACKWARD", "xla")  # the old name is refused, not ignored
  with pytest.raises(ValueError, match="MIXACM_CONV_BACKWARD is now MIXACM_CONV"):
    conv.form_for("weight_grad", *shape)
  conv.reset_choices()


def test_an_xla_isa_cap_is_another_machine_in_the_cache_key(monkeypatch):
  native = conv.processor()
  try:
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=2 "
                                    "--xla_cpu_max_isa=AVX2")
    conv.processor.cache_clear()
    assert conv.processor() == native[:-1] + ", XLA capped at AVX2)"
  finally:
    monkeypatch.undo()
    conv.processor.cache_clear()
  assert conv.processor() == native and "capped" not in native


def test_candidates_time_each_distinct_grouping_once():
  assert conv.candidates(64, (3, 3, 8, 8)) == conv.FORMS
  assert conv.candidates(4, (3, 3, 8, 8)) == ("xla", "rows", "rows/2", "im2col", "im2col/2")
  assert conv.candidates(64, (1, 1, 8, 8)) == ("xla", "rows", "rows/2", "rows/8")


@pytest.mark.parametrize("pass_", conv.PASSES)
def test_measure_times_every_candidate_on_every_device_at_once(pass_):
  assert jax.local_device_count() == 2
  timings = conv.measure(pass_, (4, 8, 8, 3), (3, 3, 3, 4), (1, 1), ((1, 1), (1, 1)),
                         jnp.float32, repeats=1)
  assert tuple(timings) == conv.candidates(4, (3, 3, 3, 4))
  assert all(t > 0 for t in timings.values())


def test_a_model_trains_and_is_attacked_the_same_with_every_form(monkeypatch):
  """One ResNet's parameter gradients (convs of stride 1 and 2, 1x1 shortcuts) and a PGD
  attack on it (input gradients through every layer), per form."""
  from mixacm_jax.attacks import pgd  # pylint: disable=g-import-not-at-top
  model = models.create_model("resnet18", num_classes=10, base_width=4, stage_sizes=(1, 1))
  variables = models.init_variables(model, jax.random.PRNGKey(0), (8, 8, 1))
  x = jnp.asarray(np.random.RandomState(1).rand(8, 8, 8, 1), jnp.float32)
  y = jnp.arange(8) % 10

  def grads_and_attack(form):
    def loss(params):
      logits, _ = model.apply({**variables, "params": params}, x, train=True,
                              mutable=["batch_stats"])
      return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(8), y])
    attack = jax.jit(lambda x, y: pgd.pgd(lambda v: model.apply(variables, v), x, y,
                                          jax.random.PRNGKey(2), eps=0.1, step_size=0.05,
                                          steps=3)[0])
    return (jax.jit(jax.grad(loss))(variables["params"]),
            attack(x, y) if form in ATTACKED else None)
  per_form = {}
  for form in PATHS:
    monkeypatch.setenv(conv.ENV, form)
    per_form[form] = grads_and_attack(form)
  for form in PATHS[1:]:
    (grads, x_adv), (ref_grads, ref_adv) = per_form[form], per_form["xla"]
    for a, b in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(ref_grads)):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    # A PGD step moves each pixel by the sign of its gradient: rounding may flip a sign
    # where the gradient is ~0, nowhere else.
    if form in ATTACKED:
      assert np.mean(np.asarray(x_adv) == np.asarray(ref_adv)) > 0.99
