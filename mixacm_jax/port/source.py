"""A frozen model by checkpoint or by RobustBench name, checked against the data it will
see: the teacher of the distillation objectives and the source of transfer attacks. Its
config section has `checkpoint` (a workdir or checkpoint dir, with `model` the architecture
and `step`, 0 for the latest) or `robustbench` (an entry, with `dataset`, `threat_model` and
`model_dir`, the folder RobustBench's `load_model` fills)."""
from typing import Any, Dict, NamedTuple, Optional, Sequence

from mixacm_jax import models
from mixacm_jax.errors import CheckpointError, ConfigError
from mixacm_jax.port import zoo
from mixacm_jax.runtime import checkpoint as ckpt_lib


class Loaded(NamedTuple):
  model: Any
  variables: Dict[str, Any]  # {"params", "batch_stats"}, host arrays
  source: str  # the checkpoint's path, or the zoo file's


def is_given(cfg) -> bool:
  """Whether the section names a model to load (a checkpoint or a RobustBench entry)."""
  return bool(cfg.get("checkpoint") or cfg.get("robustbench"))


def load(cfg, num_classes: int, image_shape: Sequence[int], *, role: str,
         path: Optional[str] = None) -> Loaded:
  """The model at `path`, else at `cfg.checkpoint` (with `cfg.model`'s architecture), else
  RobustBench's `cfg.robustbench` entry (with its own architecture). `role` names it in
  errors ("the teacher", "the transfer source")."""
  path = path or cfg.get("checkpoint")
  if not path and cfg.get("robustbench"):
    return _robustbench(cfg, num_classes, image_shape, role)
  if not path:
    raise ConfigError(f"{role} is not given: set its checkpoint or its robustbench entry")
  model = models.create_model_from_config(cfg.model, num_classes)
  try:
    variables = ckpt_lib.load_variables(model, image_shape, path, cfg.get("step") or None,
                                        cfg.get("weights", "raw"))
  except CheckpointError as e:  # name whose checkpoint, and where its architecture is set
    raise CheckpointError(f"{role}: {e}") from None
  return Loaded(model, variables, path)


def _robustbench(cfg, num_classes: int, image_shape: Sequence[int], role: str) -> Loaded:
  model, variables, info = zoo.load_entry(cfg.robustbench, cfg.dataset, cfg.threat_model,
                                          cfg.model_dir, cfg.model.get("dtype", "float32"))
  entry = f"RobustBench's {info['robustbench']} ({info['dataset']} {info['threat_model']})"
  if info["num_classes"] != num_classes:
    raise ConfigError(f"{role}, {entry}, has {info['num_classes']} classes and the data "
                      f"{num_classes}: pick an entry of the data's dataset")
  # ImageNet entries (a preprocessing named) trained on crops of many sizes take other crop
  # sizes too (e.g. 160 for 224), but not thumbnails; a ViT's position embeddings fix its.
  side, entry_side = min(image_shape[:2]), min(info["image_shape"][:2])
  resizable = (info.get("preprocessing") and not isinstance(model, models.VisionTransformer)
               and info["image_shape"][2:] == tuple(image_shape)[2:] and side >= entry_side // 2)
  if tuple(info["image_shape"]) != tuple(image_shape) and not resizable:
    raise ConfigError(f"{role}, {entry}, takes {tuple(info['image_shape'])} images and "
                      f"the data has {tuple(image_shape)}")
  return Loaded(model, variables, info["source"])
