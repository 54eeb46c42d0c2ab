"""MixACM (Awais et al., NeurIPS 2021): the frozen robust teacher and the student see the same
mixup batch; the student minimises

    w_ce * mixup_CE(S(x), y_i, y_j, lam)
  + w_kd * tau^2 * KL(softmax(T(x)/tau) || softmax(S(x)/tau))
  + w_acm * sum_l  weight_l * ACM_loss(g_c(F_T^l(x)), transform_l(g_c(F_S^l(x))))

No adversarial examples are made. `cfg` below is `config.objective.mixacm`. Ablations are
switches: w_ce/w_kd/w_acm = 0 drop a term, mixup_alpha = 0 trains on clean inputs. (`kd`,
Hinton's KD on clean inputs, is objectives/kd.py; `mixup`, mixup training alone, is
objectives/mixup.py.)
"""
from typing import Any, Dict, List, Tuple

import jax
import jax.numpy as jnp

from mixacm_jax.errors import ConfigError
from mixacm_jax.objectives.common import distillation_passes, kl_divergence
from mixacm_jax.objectives import mixup
from mixacm_jax.objectives.mixacm import acm


def stage_pairs(cfg) -> List[Tuple[str, str, str, float]]:
  """(key, student name, teacher name, weight) for each matched block. A stage spec is `name`
  (same name in both models) or `student_name:teacher_name`; the key names the pair's
  transformation and metric (`name`, or `student__teacher` when they differ), so one student
  block may be matched to several teacher blocks."""
  stages = list(cfg.acm.stages)
  weights = list(cfg.acm.stage_weights) or [1.0] * len(stages)
  if len(weights) != len(stages):
    raise ConfigError(f"objective.mixacm.acm.stage_weights has {len(weights)} entries for "
                      f"{len(stages)} stages {stages}")
  pairs = []
  for spec, w in zip(stages, weights):
    student, _, teacher = spec.partition(":")
    teacher = teacher or student
    # The pair's name in params and metrics; a member's stage (robust/stage1) without its '/'.
    key = student if teacher == student else f"{student}__{teacher}".replace("/", ".")
    if any(key == p[0] for p in pairs):
      raise ConfigError(f"objective.mixacm.acm.stages matches {student!r} to {teacher!r} twice: "
                        f"{stages}")
    pairs.append((key, student, teacher, float(w)))
  return pairs


def check_settings(cfg) -> None:
  """Raises ConfigError for a MixACM setting that cannot work, before any work."""
  stage_pairs(cfg)
  acm.get_mapping(cfg.acm.mapping)
  if cfg.acm.activation not in acm.ACTIVATIONS:
    raise ConfigError(f"unknown objective.mixacm.acm.activation {cfg.acm.activation!r}; "
                      f"known: {', '.join(sorted(acm.ACTIVATIONS))}")
  if cfg.acm.transform not in acm.TRANSFORMS:
    raise ConfigError(f"unknown ACM transform {cfg.acm.transform!r}; known: "
                      f"{', '.join(acm.TRANSFORMS)}")


def feature_names(cfg) -> Tuple[Tuple[str, ...], Tuple[str, ...]]:
  if not cfg.w_acm:
    return (), ()
  pairs = stage_pairs(cfg)
  return tuple(dict.fromkeys(p[1] for p in pairs)), tuple(dict.fromkeys(p[2] for p in pairs))


def init_params(rng, cfg, student_shapes: Dict, teacher_shapes: Dict) -> Dict:
  """One transformation per matched pair, on the student's g_c output."""
  if not cfg.w_acm:
    return {}
  _, per_channel = acm.get_mapping(cfg.acm.mapping)
  params = {}
  for i, (key, s, t, _) in enumerate(stage_pairs(cfg)):
    s_shape, t_shape = student_shapes[s], teacher_shapes[t]
    if per_channel:
      params[key] = acm.init_transform(jax.random.fold_in(rng, i), s_shape[-1], t_shape[-1],
                                       cfg.acm.transform)
    elif s_shape[1:3] != t_shape[1:3]:
      raise ConfigError(f"ACM mapping {cfg.acm.mapping!r} compares spatial maps, but student "
                        f"{s!r} is {s_shape[1:3]} and teacher {t!r} is {t_shape[1:3]}")
  return params


def acm_terms(transforms, cfg, student_feats, teacher_feats) -> Dict[str, jnp.ndarray]:
  """Weighted ACM loss of each matched pair; `transforms` = the pairs' transformations."""
  a = cfg.acm
  gc = lambda v: acm.channel_map(v, a.mapping, a.activation, a.p)
  return {key: w * acm.acm_loss(gc(teacher_feats[t]),
                                acm.transform(gc(student_feats[s]), transforms.get(key)))
          for key, s, t, w in stage_pairs(cfg)}


def mixacm_loss(student_logits, student_feats, teacher_logits, teacher_feats, labels,
                partner_labels, lam, transforms, cfg) -> Tuple[jnp.ndarray, Dict[str, Any]]:
  """The MixACM loss of one mixed batch, for use in any training step.

  student_logits / teacher_logits: (N, classes) on the same mixed inputs
  x = lam * x_i + (1 - lam) * x_partner; student_feats / teacher_feats: {block name:
  (N, H, W, C) activation} for the blocks of `cfg.acm.stages`; labels / partner_labels: (N,)
  int labels of x_i and of its partner; lam: scalar or (N,); transforms: the learned ACM
  transformations, {pair key: {"kernel": (C_s, C_t)}} (see `init_params`; {} for none);
  cfg: `config.objective.mixacm` (w_ce, w_kd, w_acm, temperature, acm.*).
  Returns (loss, metrics) with the terms `ce`, `kd`, `acm`, `acm_<pair>` and `accuracy`.
  """
  ce = mixup.mixup_cross_entropy(student_logits, labels, partner_labels, lam)
  kd = cfg.temperature ** 2 * kl_divergence(teacher_logits, student_logits, cfg.temperature)
  terms = acm_terms(transforms, cfg, student_feats, teacher_feats) if cfg.w_acm else {}
  acm_total = sum(terms.values()) if terms else jnp.zeros(())
  loss = cfg.w_ce * ce + cfg.w_kd * kd + cfg.w_acm * acm_total
  return loss, {"loss": loss, "ce": ce, "kd": kd, "acm": acm_total,
                "accuracy": mixup.mixup_accuracy(student_logits, labels, partner_labels, lam),
                **{f"acm_{k}": v for k, v in terms.items()}}


def loss_fn(params, ctx, batch):
  cfg = ctx.cfg
  student_names, teacher_names = feature_names(cfg)
  x, y_partner, lam = mixup.mix_batch(batch, jax.random.fold_in(ctx.rng, 1), cfg.mixup_alpha,
                                      per_example=cfg.mixup_per_example,
                                      example_offset=ctx.example_offset)
  t_logits, t_feats = ctx.teacher(x, teacher_names)
  s_logits, s_feats, batch_stats = ctx.forward(params, ctx.batch_stats, x, True, student_names)
  loss, metrics = mixacm_loss(s_logits, s_feats, t_logits, t_feats, batch["label"], y_partner,
                              lam, params["objective"], cfg)
  metrics["teacher_agreement"] = jnp.mean(
      jnp.argmax(s_logits, -1) == jnp.argmax(t_logits, -1))
  return loss, (batch_stats, metrics)


passes = distillation_passes
