"""Reading PyTorch's `.pt`/`.pth` files without torch and without executing anything in them.

torch.save writes a pickle (a zip archive with `data.pkl` and one raw file per storage since
torch 1.6; before that, a sequence of pickles and the raw storages). A pickle can name any
Python global and call it; this reader resolves no global at all: the names that rebuild
tensors (`torch._utils._rebuild_tensor_v2`, the storage types, `collections.OrderedDict`) map
to functions here that build NumPy arrays and dicts, and every other name becomes an inert
placeholder that records its name and arguments and does nothing. Nothing is imported, nothing
of the file is called, so a file that pickles `argparse.Namespace`, NumPy scalars or an
optimizer's state beside its weights still gives its tensors, and a file whose pickle names
`os.system` gives a placeholder that never runs.
"""
import io
import pickle
import struct
import zipfile
from typing import Any, Dict, Tuple

import numpy as np

# torch storage type -> NumPy dtype (bfloat16 is read as its 16 bits and widened to float32).
STORAGE_DTYPES = {
    "DoubleStorage": np.float64, "FloatStorage": np.float32, "HalfStorage": np.float16,
    "BFloat16Storage": "bfloat16", "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}
_LEGACY_MAGIC = 0x1950a86a20f9469cfc6c


class NotACheckpoint(ValueError):
  """The bytes are not a PyTorch file at all (an HTML page, an empty file, ...)."""


class Inert:
  """What every global the reader does not know becomes: it takes any arguments and state,
  keeps them for the curious, and does nothing else."""
  qualname = "?"

  def __init__(self, *args, **kwargs):
    self.args, self.kwargs, self.state = args, kwargs, None

  def __setstate__(self, state):
    self.state = state

  def __setitem__(self, key, value):  # pickled dict subclasses set their items
    self.__dict__.setdefault("items", {})[key] = value

  def append(self, value):  # ... and list subclasses their elements
    self.__dict__.setdefault("elements", []).append(value)

  def extend(self, values):
    for v in values:
      self.append(v)

  def __repr__(self):
    return f"<inert {self.qualname}>"


def _inert(module: str, name: str):
  return type(name, (Inert,), {"qualname": f"{module}.{name}"})


class _StorageType:
  def __init__(self, name):
    self.name, self.dtype = name, STORAGE_DTYPES[name]


def _to_numpy(raw: bytes, dtype) -> np.ndarray:
  if isinstance(dtype, str):  # bfloat16: the high half of a float32
    bits = np.frombuffer(raw, np.uint16).astype(np.uint32) << 16
    return bits.view(np.float32)
  return np.frombuffer(raw, dtype)


def _rebuild_tensor(storage, offset, size, stride, *unused):
  """torch._utils._rebuild_tensor_v2: a strided view of a storage, as a NumPy array."""
  del unused
  if isinstance(storage, _Lazy):  # a legacy file: its bytes come after the pickle
    return _LazyTensor(storage, (offset, size, stride))
  flat, size, stride = storage, tuple(size), tuple(stride)
  if not size:
    return np.array(flat[offset])
  itemsize = flat.itemsize
  view = np.lib.stride_tricks.as_strided(flat[offset:], shape=size,
                                         strides=[s * itemsize for s in stride])
  return np.array(view)  # a copy: contiguous, writable, independent of the file's buffer


def _rebuild_parameter(data, *unused):
  del unused
  return data


class _Dict(dict):
  """collections.OrderedDict as a plain dict that takes attributes: torch sets the
  state_dict's `_metadata` on it when unpickling."""


def _ordered_dict(*args):
  return _Dict(*args)


# (module, name) -> what it is rebuilt as; nothing else of the file's globals is resolved.
_KNOWN = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("collections", "OrderedDict"): _ordered_dict,
    ("builtins", "set"): set, ("builtins", "frozenset"): frozenset,
    ("builtins", "slice"): slice, ("builtins", "complex"): complex,
}


class _Unpickler(pickle.Unpickler):
  def __init__(self, file, load_storage):
    super().__init__(file)
    self._load_storage = load_storage
    self.placeholders = set()

  def find_class(self, module, name):
    if (module, name) in _KNOWN:
      return _KNOWN[(module, name)]
    if module == "torch" and name in STORAGE_DTYPES:
      return _StorageType(name)
    if module == "torch" and name in ("float32", "float16", "bfloat16", "float64", "int64"):
      return name  # a dtype named in the storage's metadata (UntypedStorage)
    self.placeholders.add(f"{module}.{name}")
    return _inert(module, name)

  def persistent_load(self, pid):
    if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
      raise pickle.UnpicklingError(f"unknown persistent id {pid!r:.80}")
    if self._load_storage is None:
      raise pickle.UnpicklingError("a tensor storage outside torch.save's layout")
    storage_type, key = pid[1], str(pid[2])
    if not isinstance(storage_type, _StorageType):
      raise pickle.UnpicklingError(f"storage of unknown type {storage_type!r:.80}")
    return self._load_storage(key, storage_type.dtype)


def _looks_like(head: bytes) -> str:
  """A name for bytes that are clearly not a PyTorch file, or ''."""
  text = head.lstrip()[:64].lower()
  if not head:
    return "an empty file"
  if text.startswith((b"<!doctype html", b"<html", b"<head", b"<?xml")):
    return "an HTML page"
  if head.startswith(b"\x89HDF"):
    return "an HDF5 file (a Keras/TensorFlow checkpoint?)"
  if head.startswith(b"\x93NUMPY"):
    return "a NumPy .npy array"
  return ""


def load(path: str) -> Tuple[Any, set]:
  """(the file's object with tensors as NumPy arrays, names of the globals it named that
  became placeholders). Raises NotACheckpoint or pickle.UnpicklingError / zipfile errors."""
  with open(path, "rb") as f:
    head = f.read(512)
  kind = _looks_like(head)
  if kind:
    raise NotACheckpoint(kind)
  if zipfile.is_zipfile(path):
    return _load_zip(path)
  return _load_legacy(path)


def _load_zip(path):
  with zipfile.ZipFile(path) as archive:
    names = archive.namelist()
    pkl = next((n for n in names if n.endswith("/data.pkl") or n == "data.pkl"), None)
    if pkl is None:
      raise NotACheckpoint("a zip archive without data.pkl")
    prefix = pkl[:-len("data.pkl")]
    cache: Dict[str, np.ndarray] = {}

    def storage(key, dtype):
      if key not in cache:
        cache[key] = _to_numpy(archive.read(f"{prefix}data/{key}"), dtype)
      return cache[key]
    unpickler = _Unpickler(io.BytesIO(archive.read(pkl)), storage)
    return unpickler.load(), unpickler.placeholders


def _load_legacy(path):
  """torch.save(..., _use_new_zipfile_serialization=False): magic number, protocol version and
  system info pickles, the object's pickle, the storage keys' pickle, then each storage's
  element count (8 bytes) and its bytes in that order."""
  with open(path, "rb") as f:
    data = f.read()
  stream = io.BytesIO(data)
  meta = _Unpickler(stream, None)
  first = meta.load()
  if isinstance(first, Inert) or first != _LEGACY_MAGIC:  # a plain pickle, not torch.save's
    return first, meta.placeholders
  meta.load()  # protocol version
  meta.load()  # system info
  pending = {}

  def storage(key, dtype):  # filled in once the raw storages have been read
    pending.setdefault(key, [dtype, None])
    return _Lazy(pending, key)
  unpickler = _Unpickler(stream, storage)
  obj = unpickler.load()
  keys = _Unpickler(stream, None).load()
  for key in keys:
    (count,) = struct.unpack("<q", stream.read(8))
    dtype = pending.get(key, [np.float32])[0]
    itemsize = 2 if isinstance(dtype, str) else np.dtype(dtype).itemsize
    raw = stream.read(count * itemsize)
    if len(raw) < count * itemsize:
      raise pickle.UnpicklingError("truncated storage data")
    if key in pending:
      pending[key][1] = _to_numpy(raw, dtype)
  return _resolve(obj, pending), unpickler.placeholders


class _Lazy:
  """A legacy storage whose bytes come after the object's pickle."""

  def __init__(self, table, key):
    self.table, self.key = table, key


def _resolve(obj, table):
  """Legacy files: tensors were built from _Lazy storages; rebuild them now."""
  if isinstance(obj, _LazyTensor):
    return obj.build(table)
  if isinstance(obj, dict):
    return {k: _resolve(v, table) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return type(obj)(_resolve(v, table) for v in obj)
  return obj


class _LazyTensor:
  def __init__(self, storage, args):
    self.storage, self.args = storage, args

  def build(self, table):
    return _rebuild_tensor(table[self.storage.key][1], *self.args)
