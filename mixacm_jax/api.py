"""The library in one call each: bring PyTorch weights, evaluate any Flax model's robustness.

    model, variables = mixacm_jax.load_pytorch("model.pt", "wrn34_10")
    model, variables = mixacm_jax.load_robustbench("Zhang2019Theoretically")
    report = mixacm_jax.evaluate(model, variables, x, labels=y, eps=8 / 255)
    x_adv, robust_after = mixacm_jax.run_autoattack(logits_fn, x, y, key, eps=8 / 255)

and `mixacm_jax.mixacm_loss` for a training step of your own.
"""
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import ml_collections
import numpy as np

from mixacm_jax.configs import checks as config_checks
from mixacm_jax.evaluation.defaults import eval_config  # noqa: F401  (public: mixacm_jax.eval_config)
from mixacm_jax.evaluation import inputs, robustness
from mixacm_jax.port import convert, zoo


def load_pytorch(path: str, arch: str, *, num_classes: int = 0,
                 image_shape: Sequence[int] = (32, 32, 3), dtype: str = "float32",
                 **arch_kwargs) -> Tuple[Any, Dict[str, Any]]:
  """(Flax model, {"params", "batch_stats"}) from a PyTorch checkpoint (.pt / .pth, read
  without executing anything in it, or .safetensors). `arch` is a registered architecture
  (`mixacm_jax.models.MODELS`), `arch_kwargs` its fields (e.g. depth=22, widen_factor=2);
  input normalisation found in the file (mu / sigma buffers) goes inside the model."""
  model, variables, _ = convert.load_pytorch_weights(
      path, arch, num_classes=num_classes, image_shape=tuple(image_shape), dtype=dtype,
      **arch_kwargs)
  return model, variables


def load_robustbench(name: str, dataset: str = "cifar10", threat_model: str = "Linf",
                     model_dir: str = "./models", dtype: str = "float32"
                     ) -> Tuple[Any, Dict[str, Any]]:
  """(Flax model, {"params", "batch_stats"}) of RobustBench's zoo entry `name`, read offline
  from `<model_dir>/<dataset>/<threat_model>/<name>.pt`, the file RobustBench's `load_model`
  writes. The model takes NHWC images in [0, 1] and normalises them inside, as RobustBench's
  module does; the recipe (architecture, normalisation) comes from RobustBench's own zoo."""
  return zoo.load_robustbench(name, dataset, threat_model, model_dir, dtype)


def evaluate(model, variables, data: Union[str, np.ndarray], *, labels=None,
             split: str = "test", data_dir: Optional[str] = None, seed: int = 0,
             verbose: bool = False, **eval_kwargs) -> Dict[str, Any]:
  """The robustness report of any Flax `model` (taking NHWC inputs in [0, 1]) with its
  `variables`: clean accuracy and each attack's robust accuracy (AutoAttack per stage).

  `data` is a dataset name (`digits`, or a prepared TFDS dataset in `data_dir`) or an array of
  images with `labels`. `eval_kwargs` go to `eval_config` (attacks, eps, norm, step_size,
  version, mode, batch_size, num_examples)."""
  eval_cfg = eval_config(**eval_kwargs)
  config_checks.validate_eval(eval_cfg)
  if isinstance(data, str):
    data_cfg = ml_collections.ConfigDict({
        "name": data, "data_dir": data_dir, "train_split": "train", "eval_split": split})
    return robustness.report_on_split(model, variables, data_cfg, eval_cfg, seed=seed,
                                      verbose=verbose)
  images = inputs.images(data)
  labels = inputs.labels(labels, len(images))
  n = eval_cfg.num_examples or len(images)
  return robustness.report_on_arrays(model, variables, images[:n], labels[:n],
                                     eval_cfg, seed=seed, verbose=verbose)
