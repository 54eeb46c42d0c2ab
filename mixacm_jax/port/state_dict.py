"""Reading PyTorch weight files without executing pickled code, and normalising what real
checkpoints contain (DataParallel prefixes, nested dicts, BN counters, fp16, mean/std buffers).

`.safetensors` files are read with safetensors' NumPy API and need no torch; `.pt`/`.pth`
files need torch and are read with `torch.load(..., weights_only=True)` only.
"""
import os
import pickle
from typing import Dict, Optional, Tuple

import numpy as np

from mixacm_jax.errors import CheckpointError

NESTED_KEYS = ("state_dict", "model_state_dict", "net", "model")
# Buffers some RobustBench models carry for input normalisation (Rice et al.: mu / sigma).
NORMALISATION_KEYS = {"mu": "mean", "sigma": "std", "mean": "mean", "std": "std"}


def read_weight_file(path: str) -> Dict[str, np.ndarray]:
  """The raw {key: array} of a .safetensors or .pt/.pth file."""
  if not os.path.isfile(path):
    raise CheckpointError(f"weight file not found: {path}")
  if path.endswith(".safetensors"):
    from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
    try:
      return dict(load_file(path))
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointError(f"{path} is not a readable safetensors file: {e}") from None
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise CheckpointError(f"reading {path} needs torch (pip install torch==2.13.0), or "
                          "convert the file to .safetensors") from None
  try:
    obj = torch.load(path, map_location="cpu", weights_only=True)
  except pickle.UnpicklingError as e:  # torch's weights-only unpickler met a disallowed global
    raise CheckpointError(
        f"refusing to load {path}: it cannot be read with torch.load(weights_only=True), so it "
        f"holds more than tensors (pickled code or objects), and this tool never unpickles "
        f"untrusted files. Re-save only the state_dict, or convert it to .safetensors. "
        f"({_first_line(e)})") from None
  except Exception as e:  # pylint: disable=broad-except
    raise CheckpointError(
        f"{path} is truncated or corrupt: not a complete PyTorch weight file "
        f"({os.path.getsize(path)} bytes; {_first_line(e)})") from None
  return _unwrap(obj, path)


def _first_line(error: Exception) -> str:
  text = str(error).strip()
  return f"{type(error).__name__}: {text.splitlines()[0][:160]}" if text else type(error).__name__


def _unwrap(obj, path):
  import torch  # pylint: disable=g-import-not-at-top
  for _ in range(3):
    if isinstance(obj, dict) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
      inner = next((obj[k] for k in NESTED_KEYS if k in obj and isinstance(obj[k], dict)), None)
      if inner is None:
        break
      obj = inner
  if not isinstance(obj, dict):
    raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a state_dict")
  out = {}
  for k, v in obj.items():
    if isinstance(v, torch.Tensor):
      out[k] = v.detach().to(torch.float32).numpy() if v.is_floating_point() else v.numpy()
  return out


def clean_state_dict(raw: Dict[str, np.ndarray]) -> Tuple[Dict[str, np.ndarray],
                                                        Dict[str, Optional[tuple]]]:
  """Strips `module.` prefixes, drops `num_batches_tracked`, casts floats to float32 and
  takes out mean/std buffers. Returns (state_dict, {"mean": ..., "std": ...})."""
  state, norm = {}, {"mean": None, "std": None}
  for key, value in raw.items():
    while key.startswith("module."):
      key = key[len("module."):]
    if key.endswith("num_batches_tracked"):
      continue
    value = np.asarray(value)
    if np.issubdtype(value.dtype, np.floating):
      value = value.astype(np.float32)
    if key in NORMALISATION_KEYS:
      norm[NORMALISATION_KEYS[key]] = tuple(float(x) for x in value.reshape(-1))
      continue
    state[key] = value
  return state, norm
