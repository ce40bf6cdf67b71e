"""Ctrl-C during training: stop at a safe point, exit 130, resume cleanly.

Python turns SIGINT into a ``KeyboardInterrupt`` wherever the main thread
happens to be; inside a garbage-collector callback (JAX's
``_xla_gc_callback``) it is printed as "Exception ignored" and lost, and a run
went on to finish with exit 0. So dicofun handles SIGINT itself:

* while a training loop runs (``deferred``), the first Ctrl-C only records
  the request; the loop stops at the next safe point — between two steps when
  the last completed epoch is already checkpointed (``between_steps``), else
  after saving the current epoch — by raising ``Interrupted``;
* a second Ctrl-C raises ``KeyboardInterrupt`` at once (the run resumes from
  its last complete checkpoint, as after a kill);
* outside a training loop a Ctrl-C raises ``KeyboardInterrupt`` at once, as
  usual, but is recorded too, so one that got lost is still seen at the next
  ``check`` and by the command line, which exits 130 (``dicofun.cli``).

Multi-process runs keep the plain behaviour: one process stopping at its own
safe point would leave the others waiting in a collective.
"""

from __future__ import annotations

import contextlib
import dataclasses
import signal
import threading
from typing import Iterator, Optional

from absl import logging

RESUME_HINT = "resume with the same command"


class Interrupted(KeyboardInterrupt):
  """Ctrl-C stopped the run at a safe point (its checkpoints are complete)."""


@dataclasses.dataclass
class _Deferral:
  """A training loop that stops at safe points (see ``deferred``)."""
  steps_may_stop: bool = False


@dataclasses.dataclass
class _State:
  requested: bool = False
  deferral: Optional[_Deferral] = None


_STATE = _State()


def _handler(signum, frame) -> None:
  del signum, frame
  first = not _STATE.requested
  _STATE.requested = True
  if first and _STATE.deferral is not None:
    logging.warning("Ctrl-C: stopping at the next checkpoint (press Ctrl-C "
                    "again to stop at once; the run then resumes from its "
                    "last complete checkpoint)")
    return
  raise KeyboardInterrupt


def install() -> bool:
  """Makes dicofun's SIGINT handler the process's (main thread only).

  Returns:
    Whether it is installed (False off the main thread).
  """
  if threading.current_thread() is not threading.main_thread():
    return False
  if signal.getsignal(signal.SIGINT) is not _handler:
    signal.signal(signal.SIGINT, _handler)
  return True


def requested() -> bool:
  """Whether a Ctrl-C arrived in this process."""
  return _STATE.requested


def reset() -> None:
  """Forgets a recorded Ctrl-C (tests)."""
  _STATE.requested = False


def check(message: str = "interrupted") -> None:
  """Raises ``Interrupted`` when a Ctrl-C was recorded."""
  if _STATE.requested:
    raise Interrupted(f"{message}; {RESUME_HINT}")


def between_steps() -> None:
  """A training step loop's safe point: stops there when nothing is lost.

  Called by a method's epoch function between its steps; raises
  ``Interrupted`` after a Ctrl-C when the enclosing loop has said that the
  last completed epoch is checkpointed (the partial epoch is then run again
  on resume, to the same result: epochs are pure functions of their number).
  """
  deferral = _STATE.deferral
  if deferral is not None and deferral.steps_may_stop:
    check("interrupted mid-epoch; the last complete checkpoint is kept")


@contextlib.contextmanager
def deferred(enabled: bool = True) -> Iterator[Optional[_Deferral]]:
  """The block (a training loop) stops at safe points on the first Ctrl-C.

  Args:
    enabled: False (e.g. a multi-process run, or off the main thread)
      leaves Ctrl-C as it is.

  Yields:
    The deferral, whose ``steps_may_stop`` the loop keeps up to date; None
    when not enabled.
  """
  if (not enabled or _STATE.deferral is not None
      or threading.current_thread() is not threading.main_thread()):
    yield None
    return
  previous = signal.getsignal(signal.SIGINT)
  install()
  _STATE.deferral = _Deferral()
  try:
    yield _STATE.deferral
  finally:
    _STATE.deferral = None
    if previous is not _handler and previous is not None:
      signal.signal(signal.SIGINT, previous)
