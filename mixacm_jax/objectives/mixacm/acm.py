"""Activated channel maps (ACM) and the ACM loss of MixACM (Awais et al., NeurIPS 2021).

For a block's activation A (N, H, W, C), a mapping function g_c summarises each channel:

    default  'mean_act':  a = mean_{h,w} act(A)          -> (N, C)
             'mean_pow':  a = mean_{h,w} |A|^p           -> (N, C)
             'max':       a = max_{h,w} act(A)           -> (N, C)
             'attention': a = mean_c |A|^p, flattened    -> (N, H*W)   (attention transfer)

Each example's vector is normalised to unit L2 norm. The student's vector first passes through a
learned linear transformation (identity-initialised when the widths match, required when they
differ). The loss of one block is the batch mean of ||t_hat - s_hat||^2, and block losses are
summed with a weight each.
"""
from typing import Callable, Dict, Mapping, Optional, Tuple

import jax
import jax.numpy as jnp

from mixacm_jax.errors import ConfigError
from mixacm_jax.models.layers import ACTIVATIONS, activation as activation_fn


def _mean_act(a, *, act, p):
  del p
  return jnp.mean(act(a), axis=(1, 2))


def _mean_pow(a, *, act, p):
  del act
  return jnp.mean(jnp.abs(a) ** p, axis=(1, 2))


def _max(a, *, act, p):
  del p
  return jnp.max(act(a), axis=(1, 2))


def _attention(a, *, act, p):
  del act
  return jnp.mean(jnp.abs(a) ** p, axis=-1).reshape(a.shape[0], -1)


# name -> (g_c, whether its output has one value per channel)
MAPPINGS: Dict[str, Tuple[Callable, bool]] = {
    "mean_act": (_mean_act, True),
    "mean_pow": (_mean_pow, True),
    "max": (_max, True),
    "attention": (_attention, False),
}


def get_mapping(name: str) -> Tuple[Callable, bool]:
  if name not in MAPPINGS:
    raise ConfigError(f"unknown ACM mapping {name!r}; known: {', '.join(MAPPINGS)}")
  return MAPPINGS[name]


def channel_map(activation: jnp.ndarray, mapping: str = "mean_act", act: str = "relu",
                p: float = 2.0) -> jnp.ndarray:
  """g_c(A): the un-normalised map of an (N, H, W, C) activation, in float32."""
  fn, _ = get_mapping(mapping)
  return fn(activation.astype(jnp.float32), act=activation_fn(act), p=p)


def l2_normalize(v: jnp.ndarray, eps: float = 1e-12) -> jnp.ndarray:
  return v / jnp.sqrt(jnp.sum(v * v, axis=-1, keepdims=True) + eps)


def acm_loss(teacher_map: jnp.ndarray, student_map: jnp.ndarray) -> jnp.ndarray:
  """Batch mean of the squared L2 distance of the unit-normalised maps (in [0, 4])."""
  diff = l2_normalize(teacher_map) - l2_normalize(student_map)
  return jnp.mean(jnp.sum(diff * diff, axis=-1))


def transform(student_map: jnp.ndarray, params: Optional[Mapping[str, jnp.ndarray]]) -> jnp.ndarray:
  """The learned linear map on the student's channel vector (none: identity)."""
  if not params:
    return student_map
  return student_map @ params["kernel"]


TRANSFORMS = ("linear", "none")


def init_transform(rng: jax.Array, student_dim: int, teacher_dim: int,
                   kind: str) -> Dict[str, jnp.ndarray]:
  """`linear`: a (C_s, C_t) matrix, the identity when C_s == C_t, else scaled Gaussian;
  `none`: no parameters (only possible when the widths match)."""
  if kind == "none":
    if student_dim != teacher_dim:
      raise ConfigError(f"ACM transform 'none' needs equal widths, got student {student_dim} "
                        f"vs teacher {teacher_dim}; use objective.mixacm.acm.transform='linear'")
    return {}
  if kind != "linear":
    raise ConfigError(f"unknown ACM transform {kind!r}; known: {', '.join(TRANSFORMS)}")
  if student_dim == teacher_dim:
    return {"kernel": jnp.eye(student_dim, dtype=jnp.float32)}
  return {"kernel": jax.random.normal(rng, (student_dim, teacher_dim), jnp.float32)
                    / jnp.sqrt(student_dim)}
