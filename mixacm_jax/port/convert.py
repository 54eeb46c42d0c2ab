"""Converting a PyTorch state_dict into Flax variables (strictly), and back."""
from typing import Any, Dict, Optional, Sequence, Tuple

from flax import traverse_util
import jax
import numpy as np

from mixacm_jax import models
from mixacm_jax.errors import CheckpointError, ConfigError
from mixacm_jax.port import rules as rules_lib, state_dict as sd_lib
from mixacm_jax.runtime import checkpoint as ckpt_lib

CLASSIFIER_KEYS = ("fc.weight", "linear.weight", "logits.weight")


def layouts_for(model):
  """The PyTorch layouts (rule tables) `model` reads; the first is the one it writes."""
  key = (type(model).__name__, rules_lib.style(model))
  if key not in rules_lib.RULES:
    raise ConfigError(f"no PyTorch weight rules for {key[0]}; ported architectures: "
                      f"{', '.join(sorted({k[0] for k in rules_lib.RULES}))}")
  return rules_lib.RULES[key]


def rules_for(model):
  return layouts_for(model)[0]


def torch_to_flax(state_dict: Dict[str, np.ndarray], model, image_shape: Sequence[int],
                  shapes: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
  """{params, batch_stats} for `model`; any missing, unexpected or wrongly shaped entry
  raises one CheckpointError that lists each. Of the layouts the model reads, the one whose
  rules name the most keys is used. `shapes`: the variables' shapes, for a part that does not
  take images (else found by building the model for `image_shape`)."""
  rules = max(layouts_for(model), key=lambda r: sum(
      rules_lib.to_flax(k, v, r) is not None for k, v in state_dict.items()))
  expected = traverse_util.flatten_dict(shapes or jax.eval_shape(
      lambda: models.init_variables(model, jax.random.PRNGKey(0), image_shape)))
  converted, sources, unmapped = {}, {}, []
  for key, value in state_dict.items():
    mapped = rules_lib.to_flax(key, value, rules)
    if mapped is None:
      unmapped.append(key)
    elif mapped[0]:
      converted[mapped[0]], sources[mapped[0]] = mapped[1], key
  name = lambda path: "/".join(path)
  missing, unexpected, wrong = ckpt_lib.compare_shapes(
      {p: v.shape for p, v in expected.items()}, {p: v.shape for p, v in converted.items()})
  missing = [name(p) for p in missing]
  unexpected = unmapped + [sources[p] for p in unexpected]
  wrong = [f"{sources[p]} {tuple(converted[p].shape)} -> {name(p)} {tuple(expected[p].shape)}"
           for p in wrong]
  if missing or unexpected or wrong:
    show = lambda xs: ckpt_lib.short_list(xs, 8)
    parts = [f"{len(missing)} missing Flax entries: {show(missing)}" if missing else "",
             f"{len(unexpected)} unexpected PyTorch keys: {show(unexpected)}" if unexpected else "",
             f"{len(wrong)} shape mismatches: {show(wrong)}" if wrong else ""]
    raise CheckpointError(f"the weights do not fit {type(model).__name__}: " +
                          "; ".join(p for p in parts if p) + ". Nothing was written.")
  return traverse_util.unflatten_dict({p: converted[p] for p in expected})


def flax_to_torch(variables: Dict[str, Any], model) -> Dict[str, np.ndarray]:
  """A PyTorch state_dict (NumPy arrays) that the RobustBench class loads with strict=True."""
  rules = rules_for(model)
  flat = traverse_util.flatten_dict({k: jax.device_get(variables[k])
                                     for k in ("params", "batch_stats") if k in variables})
  out = {}
  for path, value in flat.items():
    mapped = rules_lib.to_torch(path, np.asarray(value), rules)
    if mapped is None:
      raise CheckpointError(f"no PyTorch name for Flax entry {'/'.join(path)}")
    out[mapped[0]] = np.ascontiguousarray(mapped[1], dtype=np.float32)
  for key in [k for k in out if k.endswith(".running_mean")]:
    out[key.replace(".running_mean", ".num_batches_tracked")] = np.zeros((), np.int64)
  return out


def infer_num_classes(state_dict: Dict[str, np.ndarray]) -> int:
  for key in CLASSIFIER_KEYS:
    if key in state_dict:
      return int(state_dict[key].shape[0])
  raise CheckpointError(f"cannot tell the number of classes: none of {CLASSIFIER_KEYS} in the "
                        "weights; set --config.convert.num_classes")


def load_pytorch_weights(source: str, arch: str, *, num_classes: int = 0,
                         image_shape: Sequence[int] = (32, 32, 3), dtype: str = "float32",
                         **model_kwargs) -> Tuple[Any, Dict[str, Any], Dict[str, Optional[tuple]]]:
  """(Flax model, variables, normalisation found in the file) from a PyTorch weight file."""
  state_dict, norm = sd_lib.clean_state_dict(sd_lib.read_weight_file(source))
  num_classes = num_classes or infer_num_classes(state_dict)
  model = models.create_model(arch, num_classes=num_classes, mean=norm["mean"],
                              std=norm["std"], dtype=dtype, **model_kwargs)
  return model, torch_to_flax(state_dict, model, image_shape), norm


def export(variables: Dict[str, Any], model, path: str) -> None:
  """Writes a PyTorch state_dict as .safetensors (no torch needed) or .pt (torch.save)."""
  state = flax_to_torch(variables, model)
  if path.endswith(".safetensors"):
    from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
    save_file({k: np.asarray(v) for k, v in state.items()}, path)
    return
  import torch  # pylint: disable=g-import-not-at-top
  torch.save({k: torch.from_numpy(np.array(v)) for k, v in state.items()}, path)
