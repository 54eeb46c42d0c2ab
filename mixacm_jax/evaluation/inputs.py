"""What the evaluation is given, checked before any work: images (NHWC, real numbers in
[0, 1], finite), labels (one class index per image, within the model's classes) and the
model itself (it must accept the images). Each problem is one ConfigError that says what to
do, never a number computed from the wrong input."""
from typing import Any, Callable

import jax
import numpy as np

from mixacm_jax.errors import ConfigError, first_line

CHANNELS = (1, 3)  # grey, RGB: a side this small is a channel axis


def images(x: Any) -> np.ndarray:
  """`x` as float32 NHWC in [0, 1], or a ConfigError naming the problem and the fix."""
  try:
    a = np.asarray(x)
  except Exception as e:  # pylint: disable=broad-except
    raise ConfigError(f"images must be an array, got {type(x).__name__} ({e})") from None
  if a.dtype == bool or not np.issubdtype(a.dtype, np.number) or np.iscomplexobj(a):
    raise ConfigError(f"images must be real numbers in [0, 1], got dtype {a.dtype}")
  if a.ndim != 4:
    hint = (": one image? add a batch axis, x[None]" if a.ndim == 3 and a.shape[-1] in CHANNELS
            else ": add a channel axis, x[..., None]" if a.ndim == 3 else "")
    raise ConfigError(f"images must be a batch of shape (N, height, width, channels) (NHWC), "
                      f"got shape {a.shape}{hint}")
  if a.shape[0] == 0:
    raise ConfigError("images is empty: give at least one image")
  if a.shape[1] in CHANNELS and a.shape[-1] not in CHANNELS:
    raise ConfigError(f"images of shape {a.shape} look channels-first (NCHW); the models take "
                      "NHWC: pass x.transpose(0, 2, 3, 1)")
  if np.issubdtype(a.dtype, np.integer):
    raise ConfigError(f"images of dtype {a.dtype} (0-255?): the attacks work in [0, 1]; pass "
                      "x.astype('float32') / 255")
  a = a.astype(np.float32)
  finite = np.isfinite(a)
  if not finite.all():
    raise ConfigError(f"images hold {int((~finite).sum())} NaN or inf values (first in image "
                      f"{int(np.argwhere(~finite)[0][0])})")
  lo, hi = float(a.min()), float(a.max())
  if lo < 0.0 or hi > 1.0:
    hint = ("divide by 255" if hi > 1.0 and lo >= 0.0 else
            "undo the normalisation and put it inside the model (model.mean / model.std)")
    raise ConfigError(f"images must be in [0, 1], the box the attacks keep to; found values "
                      f"in [{lo:.4g}, {hi:.4g}]: {hint}")
  return a


def labels(y: Any, count: int) -> np.ndarray:
  """`y` as int32 class indices, one per image, or a ConfigError."""
  if y is None:
    raise ConfigError("labels are needed: one class index per image (labels=...)")
  a = np.asarray(y)
  if a.ndim == 2 and a.shape[0] == count and a.shape[1] > 1:
    raise ConfigError(f"labels of shape {a.shape} look one-hot; pass class indices, "
                      "labels.argmax(-1)")
  if a.ndim != 1 or len(a) != count:
    raise ConfigError(f"labels must be one class index per image, shape ({count},), got shape "
                      f"{a.shape}")
  if a.dtype == bool or not np.issubdtype(a.dtype, np.number):
    raise ConfigError(f"labels must be integer class indices, got dtype {a.dtype}")
  if not np.all(np.isfinite(a)) or not np.array_equal(a, np.round(a)):
    raise ConfigError("labels must be integer class indices; some are fractional, NaN or inf")
  return a.astype(np.int32)


def within_classes(y: np.ndarray, num_classes: int) -> None:
  if len(y) and (y.min() < 0 or y.max() >= num_classes):
    raise ConfigError(f"labels must be in [0, {num_classes}) for a model with {num_classes} "
                      f"outputs, found [{int(y.min())}, {int(y.max())}]")


def output_classes(apply: Callable, x: np.ndarray) -> int:
  """The number of classes of `apply` (a logits function of a batch), read off its output's
  shape without running it; a model that cannot take `x` is one line."""
  try:
    out = jax.eval_shape(apply, x[:1])
  except Exception as e:  # pylint: disable=broad-except
    raise ConfigError(f"the model cannot take images of shape {x.shape[1:]} (NHWC): "
                      f"{first_line(e, 300)}") from None
  shape = getattr(out, "shape", None)
  if shape is None or len(shape) != 2 or shape[0] != 1 or shape[1] < 2:
    raise ConfigError(f"the model must return logits of shape (batch, classes >= 2), got "
                      f"{shape} for one image")
  return int(shape[1])
