"""Errors a user can cause and fix; the CLI prints them as one line, without a traceback."""


def first_line(error: BaseException, limit: int = 200) -> str:
  """`Type: first line of the message`, to quote another library's error inside one line."""
  text = str(error).strip()
  return f"{type(error).__name__}: {text.splitlines()[0][:limit]}" if text else type(error).__name__


class MixACMError(Exception):
  """Base class of every error that run.py reports as a one-line message."""


class ConfigError(MixACMError, ValueError):
  """A config value that cannot work (unknown name, bad range, indivisible batch...)."""


class DataError(MixACMError):
  """A dataset that is missing, unprepared or empty."""


class CheckpointError(MixACMError):
  """A checkpoint that is missing, corrupt or of another model."""


class NonFiniteLossError(MixACMError):
  """Training produced a NaN or inf loss, or a state (weights, statistics) that is not finite."""


class StorageError(MixACMError):
  """A file could not be written or read: a full disk, a read-only or forbidden path."""


class WorkdirBusyError(MixACMError):
  """Another run holds the workdir."""


class AttackConstraintError(MixACMError):
  """An attack returned points outside the eps-ball or the [0, 1] box."""
