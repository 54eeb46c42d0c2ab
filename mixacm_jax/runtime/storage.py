"""Storage failures (a full disk, a read-only or forbidden path), from whichever layer they
come (the OS, tensorstore under orbax), as one line that names the action and the path."""
import contextlib
import errno
import os

from mixacm_jax.errors import StorageError, first_line


FULL = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)
READ_ONLY = (errno.EROFS, errno.EACCES, errno.EPERM)


def errno_of(e: BaseException):
  """The errno of a failed write: the OSError's, or read off a backend's message."""
  if isinstance(e, OSError) and e.errno:
    return e.errno
  text = str(e).lower()
  for code in FULL + READ_ONLY:
    if os.strerror(code).lower() in text or f"os_error_code='{code}'" in text:
      return code
  return None


def reason(e: BaseException) -> str:
  """The cause of a failed write in a few words, and what to do about it."""
  code = errno_of(e)
  if code is not None:
    what = os.strerror(code)
  else:  # tensorstore wraps the OS error in a ValueError of many lines
    what = first_line(e)
  if code in READ_ONLY:
    return f"{what}; make it writable or choose another --workdir"
  return f"{what}; free space, then run the same command again"


@contextlib.contextmanager
def writing(what: str, path: str):
  """Turns an OSError in the block into a StorageError: 'could not <what> <path>: <why>'."""
  try:
    yield
  except OSError as e:
    raise StorageError(f"could not {what} {path}: {reason(e)}") from None
