"""What every objective receives, and the pieces several of them share."""
import dataclasses
from typing import Any, Callable, Dict, Optional, Sequence

import jax
import jax.numpy as jnp
import optax

from mixacm_jax.attacks import keys, loop
from mixacm_jax.attacks.pgd import ce_loss, project

# forward(params, batch_stats, x, train, names) -> (logits, {name: activation}, new_batch_stats)
ForwardFn = Callable[..., Any]


@dataclasses.dataclass(frozen=True)
class ObjectiveContext:
  forward: ForwardFn            # the student (or the model being trained)
  batch_stats: Any              # its BatchNorm running statistics
  rng: jax.Array                # this step's key, identical on every device
  cfg: Any                      # the method's settings, config.objective.<name>
  example_offset: Any = 0       # global index of this device's first example
  teacher: Optional[Callable[[jnp.ndarray, Sequence[str]], Any]] = None  # frozen, eval mode
  attack_params: Any = None     # the weights the inner maximisation attacks (None: params)
  progress: Any = 0.0           # the fraction of training done before this step, in [0, 1)
  state: Any = None             # the objective's own state (`Objective.init_state`)
  teachers: Any = None          # {role: frozen forward} of an objective's further teachers

  def example_keys(self, n: int, salt: int = 0) -> jax.Array:
    """One key per example, from its global index: the same on 1 device or N."""
    return keys.of_points(jax.random.fold_in(self.rng, salt), self.example_offset + jnp.arange(n))

  def eval_logits_fn(self, params) -> Callable[[jnp.ndarray], jnp.ndarray]:
    """The model in eval mode (running BatchNorm statistics), as attacks need it; at
    `attack_params` when set (AWP perturbs the trained weights, not the attacked ones)."""
    if self.attack_params is not None:
      params = jax.lax.stop_gradient(self.attack_params)
    return lambda x: self.forward(params, self.batch_stats, x, False, ())[0]


def cross_entropy(logits: jnp.ndarray, labels: jnp.ndarray) -> jnp.ndarray:
  """The batch mean of the per-example cross-entropy the attacks use."""
  return jnp.mean(ce_loss(logits, labels))


def accuracy(logits: jnp.ndarray, labels: jnp.ndarray) -> jnp.ndarray:
  return jnp.mean(jnp.argmax(logits, -1) == labels)


def kl_per_example(target_logits: jnp.ndarray, logits: jnp.ndarray,
                   temperature: float = 1.0) -> jnp.ndarray:
  """KL(softmax(target/T) || softmax(logits/T)) for each example (optax's)."""
  return optax.losses.kl_divergence_with_log_targets(
      jax.nn.log_softmax(logits / temperature), jax.nn.log_softmax(target_logits / temperature))


def kl_divergence(target_logits: jnp.ndarray, logits: jnp.ndarray,
                  temperature: float = 1.0) -> jnp.ndarray:
  """Batch mean of KL(softmax(target/T) || softmax(logits/T))."""
  return jnp.mean(kl_per_example(target_logits, logits, temperature))


def kl_adversarial_examples(params, ctx, x: jnp.ndarray, target):
  """TRADES' / RSLAD's inner maximisation: from x + 0.001 N(0, 1), sign-gradient steps on
  KL(target || model(x_adv)) in eval mode, projected to the eps-ball and [0, 1]. `target`
  is fixed logits, or a function of x_adv whose input gradient counts too (AdaAD's teacher
  at the same point, SAAD's linearised teacher)."""
  a = ctx.cfg.attack
  logits_fn = ctx.eval_logits_fn(jax.lax.stop_gradient(params))
  if callable(target):
    target_at = target
  else:
    fixed = jax.lax.stop_gradient(target)
    target_at = lambda _: fixed
  noise = jax.vmap(lambda k, v: jax.random.normal(k, v.shape, v.dtype))(
      ctx.example_keys(x.shape[0]), x)
  x_adv = project(x + 0.001 * noise, x, a.eps, a.norm)

  def body(_, x_adv):
    g = jax.grad(lambda v: jnp.sum(kl_per_example(target_at(v), logits_fn(v))))(x_adv)
    return project(x_adv + a.step_size * jnp.sign(g), x, a.eps, a.norm)

  return jax.lax.stop_gradient(loop.fori(a.steps, lambda i, v, _: body(i, v), x_adv, None,
                                           unroll_short=True))


def metrics_of(loss: jnp.ndarray, logits: jnp.ndarray, labels: jnp.ndarray,
               **terms: jnp.ndarray) -> Dict[str, jnp.ndarray]:
  return {"loss": loss, "accuracy": accuracy(logits, labels), **terms}


def distillation_passes(cfg) -> Dict[str, int]:
  """Per example and step: one student forward and backward, one teacher forward."""
  del cfg
  return {"forward": 1, "backward": 1, "teacher_forward": 1}
