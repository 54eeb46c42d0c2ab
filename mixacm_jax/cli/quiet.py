"""The command's output without the libraries' noise (unless --verbosity asks for it): a
failed checkpoint save is reported by the command in one line, naming the step and the path,
so the tracebacks orbax and tensorstore print for it from their own threads are dropped."""
import logging
import os
import re
import sys
import threading
import warnings

from absl import logging as absl_logging

from mixacm_jax.runtime import storage

# What tensorstore's threads print, once per write still in flight, after a failed save has
# closed orbax's event loop.
LOOP_CLOSED = "RuntimeError: Event loop is closed"
_LAST_LINE = re.compile(r"^[A-Za-z_.]+(Error|Exception|Interrupt)\b.*$")


class _NotFromOrbax(logging.Filter):
  """Drops orbax's own records, and asyncio's reports of the other writes of a failed save
  (tasks and futures whose failure nobody read, reported when they are collected, up to the
  process's end): the command has reported the save in one line."""

  def filter(self, record):
    if "/orbax/" in record.pathname.replace(os.sep, "/"):
      return False
    if record.name != "asyncio" or "exception was never retrieved" not in record.getMessage():
      return True
    error = record.exc_info[1] if record.exc_info else None
    return not ("/orbax/" in record.getMessage().replace(os.sep, "/")
                or storage.errno_of(error) in storage.FULL + storage.READ_ONLY)


# What threading calls a thread that Python did not start (one of a C++ library's own).
_FOREIGN = threading._DummyThread  # pylint: disable=protected-access


class _ForeignThreadFilter:
  """stderr, with each traceback written by a thread that Python did not start (a library's
  own) held until its last line, and dropped when that line is LOOP_CLOSED."""

  def __init__(self, stream):
    self._stream = stream
    self._held = {}
    self._lock = threading.Lock()

  def write(self, text: str) -> int:
    if not isinstance(threading.current_thread(), _FOREIGN):
      return self._stream.write(text)
    with self._lock:
      key = threading.get_ident()
      held = self._held.get(key, "") + text
      if not held.startswith("Traceback"):
        self._held.pop(key, None)
        return self._stream.write(held) and len(text)
      lines = held.rstrip("\n").splitlines()
      if held.endswith("\n") and _LAST_LINE.match(lines[-1]):
        self._held.pop(key, None)
        if lines[-1].strip() != LOOP_CLOSED:
          self._stream.write(held)
      else:
        self._held[key] = held
    return len(text)

  def __getattr__(self, name):
    return getattr(self._stream, name)


def quiet_libraries() -> None:
  """Orbax's logs off (every save and restore at INFO; a failed save's tracebacks from each of
  its threads and tasks at ERROR), the loop-closed tracebacks of tensorstore's threads dropped, and
  JAX's warnings about cache entries it could not write or read (a full disk, a truncated
  entry: it compiles instead) ignored."""
  absl_logging.set_verbosity(absl_logging.ERROR)
  absl_logging.get_absl_handler().addFilter(_NotFromOrbax())
  warnings.filterwarnings("ignore", message="Error (reading|writing) persistent compilation "
                          "cache entry")
  if not isinstance(sys.stderr, _ForeignThreadFilter):
    sys.stderr = _ForeignThreadFilter(sys.stderr)
