"""Reading PyTorch weight files without executing anything in them, and normalising what real
checkpoints contain (nesting as RobustBench's files have it, DataParallel and wrapper prefixes,
BN counters, fp16, mean/std buffers, non-tensor entries beside the weights).

`.safetensors` files are read with safetensors' NumPy API; `.pt`/`.pth` files with
`torch_file` (no torch needed), which rebuilds tensors and plain containers and turns every
other pickled name into an inert placeholder: nothing in the file is imported or called.
"""
import os
import pickle
import struct
import zipfile
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

from mixacm_jax.errors import CheckpointError, first_line
from mixacm_jax.port import torch_file

# Where real checkpoints keep their weights (RobustBench's loader: 'last' for the Kireev and
# Andriushchenko entries, 'state_dict' for most others).
NESTED_KEYS = ("state_dict", "model_state_dict", "last", "net", "model")
# Prefixes left by wrappers: nn.DataParallel (`module.`), a model held as `self.model`.
PREFIXES = ("module.", "model.")
# Buffers some RobustBench models carry for input normalisation (Rice et al.: mu / sigma).
NORMALISATION_KEYS = {"mu": "mean", "sigma": "std", "mean": "mean", "std": "std"}


def read_weight_file(path: str, nested_keys: Sequence[str] = NESTED_KEYS
                     ) -> Dict[str, np.ndarray]:
  """The raw {key: array} of a .safetensors or .pt/.pth file; a nested checkpoint is opened
  at the first of `nested_keys` it has."""
  if not os.path.isfile(path):
    raise CheckpointError(f"weight file not found: {path}")
  size = os.path.getsize(path)
  if path.endswith(".safetensors"):
    from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
    try:
      return dict(load_file(path))
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointError(f"{path} is not a readable safetensors file ({size} bytes): "
                            f"{first_line(e, 160)}") from None
  try:
    obj, placeholders = torch_file.load(path)
  except torch_file.NotACheckpoint as e:
    raise CheckpointError(
        f"{path} is {e} ({size} bytes), not a PyTorch checkpoint: the download did not "
        "complete (a failed Google Drive download leaves an HTML page); download it again"
        ) from None
  except (pickle.UnpicklingError, zipfile.BadZipFile, EOFError, KeyError, ValueError,
          IndexError, struct.error) as e:
    raise CheckpointError(
        f"{path} is truncated or corrupt: not a complete PyTorch weight file ({size} bytes; "
        f"{first_line(e, 160)}); download or save it again") from None
  return _unwrap(obj, path, placeholders, nested_keys)


def _tensors(obj) -> Dict[str, np.ndarray]:
  return {k: v for k, v in obj.items() if isinstance(v, np.ndarray)} if isinstance(obj, dict) \
      else {}


def _unwrap(obj, path, placeholders=(), nested_keys=NESTED_KEYS):
  """The weights inside a checkpoint: the first nested dict of NESTED_KEYS until one holds
  tensors; entries that are not tensors (epoch counters, optimizer state, argparse
  namespaces, all inert here) are dropped."""
  for _ in range(4):
    if not isinstance(obj, dict) or _tensors(obj):
      break
    inner = next((obj[k] for k in nested_keys if isinstance(obj.get(k), dict)), None)
    if inner is None:
      break
    obj = inner
  tensors = _tensors(obj)
  if not tensors:
    what = type(obj).__name__ if not isinstance(obj, torch_file.Inert) else obj.qualname
    keys = f" (keys: {', '.join(map(str, list(obj)[:8]))})" if isinstance(obj, dict) else ""
    named = (f"; it names {', '.join(sorted(placeholders)[:5])}, none of which was run"
             if placeholders else "")
    raise CheckpointError(f"{path} holds no tensors: a {what}{keys}{named}. Expected a "
                          "state_dict (or a dict holding one under "
                          f"{', '.join(NESTED_KEYS)})")
  return tensors


def clean_state_dict(raw: Dict[str, np.ndarray]) -> Tuple[Dict[str, np.ndarray],
                                                        Dict[str, Optional[tuple]]]:
  """Strips wrapper prefixes (`module.`, and `model.` when every key has it), drops
  `num_batches_tracked`, casts floats to float32 and takes out mean/std buffers. Returns
  (state_dict, {"mean": ..., "std": ...})."""
  state, norm = {}, {"mean": None, "std": None}
  for prefix in PREFIXES:
    if prefix != "module." and not all(k.startswith(prefix) for k in raw):
      continue
    raw = {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in raw.items()}
  for key, value in raw.items():
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
