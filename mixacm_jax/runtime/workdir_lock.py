"""One writer per workdir: a run holds `<workdir>/.lock` (filelock's OS-level lock, released
by the OS when the process dies, so a killed run never leaves it stale) while it trains,
evaluates or converts there. A second run into the same workdir stops at once with one line
that names the process holding it."""
import contextlib
import json
import os
import socket
import sys
import time

import filelock
import jax

from mixacm_jax.errors import WorkdirBusyError
from mixacm_jax.runtime import storage

LOCK = ".lock"
OWNER = ".lock.owner"  # who holds the lock, for the message (the lock file itself stays empty)


def _names(workdir: str):
  # On several hosts each process locks its own file: they write one run together.
  suffix = f".host{jax.process_index()}" if jax.process_count() > 1 else ""
  return (os.path.join(workdir, LOCK + suffix), os.path.join(workdir, OWNER + suffix))


def _owner(path: str) -> str:
  try:
    with open(path) as f:
      o = json.load(f)
    return (f"process {o['pid']} on {o['host']} since {o['since']} "
            f"(`{' '.join(o['command'])[:120]}`)")
  except (OSError, ValueError, KeyError, TypeError):
    return "another process"


@contextlib.contextmanager
def hold(workdir: str):
  """Holds `workdir`'s lock for the block; raises WorkdirBusyError if another run has it."""
  lock_path, owner_path = _names(workdir)
  lock = filelock.FileLock(lock_path, timeout=0)
  with storage.writing("lock the workdir (to write in it) at", lock_path):
    os.makedirs(workdir, exist_ok=True)
    try:
      lock.acquire()
    except filelock.Timeout:
      raise WorkdirBusyError(
          f"workdir {workdir} is in use by {_owner(owner_path)}: wait for it to finish, stop "
          "it, or choose another --workdir") from None
  try:
    with storage.writing("write", owner_path):
      with open(owner_path, "w") as f:
        json.dump({"pid": os.getpid(), "host": socket.gethostname(), "command": sys.argv,
                   "since": time.strftime("%Y-%m-%d %H:%M:%S")}, f)
    yield
  finally:
    lock.release()
