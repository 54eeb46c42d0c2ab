"""Preemption: SIGTERM (how pods and schedulers stop a job) turned into a flag that a loop
checks, so that it commits its work before exiting."""
import signal


class SigtermFlag:
  """Turns SIGTERM (how pods preempt) into a flag the loop checks, to save before exiting."""

  def __init__(self):
    self.raised = False
    self._previous = None

  def __enter__(self):
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # not the main thread
      self._previous = None
    return self

  def _handle(self, *_):
    self.raised = True

  def __exit__(self, *_):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
