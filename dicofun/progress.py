"""Progress reporting for long loops.

``progress`` wraps an iterable. On an interactive terminal (stderr a tty,
tqdm installed) it draws a tqdm bar with the rate and the ETA; otherwise it
logs a line with the count, the rate and the ETA through absl every
``every_s`` seconds (default ``DICOFUN_PROGRESS_SECONDS``, else 10), so logs of
batch jobs show where a run is. Either way a final line is logged when the
iterable is exhausted.

The records of those lines carry ``RECORD_ATTR``: the command line
(``dicofun.cli``) shows them even where it keeps other INFO lines off. The
final line of a loop shorter than ``every_s`` (one with nothing to wait for)
is not tagged: it is an ordinary INFO line.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Iterable, Iterator, Optional, TypeVar

from absl import logging

T = TypeVar("T")

RECORD_ATTR = "dicofun_progress"  # Set on the log records of progress lines.
_TAG = {"extra": {RECORD_ATTR: True}}


def default_every_s() -> float:
  """Seconds between two progress log lines (``DICOFUN_PROGRESS_SECONDS``)."""
  try:
    return float(os.environ.get("DICOFUN_PROGRESS_SECONDS", "10"))
  except ValueError:
    return 10.0


def _fmt_seconds(s: float) -> str:
  s = max(0, int(round(s)))
  h, rem = divmod(s, 3600)
  m, sec = divmod(rem, 60)
  return f"{h}:{m:02d}:{sec:02d}" if h else f"{m:02d}:{sec:02d}"


def _message(desc: str, i: int, total: Optional[int], elapsed: float) -> str:
  rate = i / elapsed if elapsed > 0 else 0.0
  prefix = f"{desc}: " if desc else ""
  if total:
    eta = (total - i) / rate if rate > 0 else 0.0
    return f"{prefix}{i}/{total} ({rate:.1f} it/s, ETA {_fmt_seconds(eta)})"
  return f"{prefix}{i} ({rate:.1f} it/s)"


def _tqdm_or_none():
  try:
    if not sys.stderr.isatty():
      return None
  except (AttributeError, ValueError):  # Replaced or closed stderr.
    return None
  try:
    import tqdm  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  return tqdm.tqdm


def progress(iterable: Iterable[T], *, total: Optional[int] = None,
             desc: str = "", every_s: Optional[float] = None
             ) -> Iterator[T]:
  """Yields the items of ``iterable`` while reporting progress.

  Args:
    iterable: the items.
    total: number of items (taken from ``len(iterable)`` when it has one).
    desc: label shown in front of the counts.
    every_s: minimum seconds between two log lines (default
      ``default_every_s()``; a final line is always logged when the iterable
      is exhausted).

  Yields:
    The items of ``iterable``, unchanged.
  """
  if total is None:
    try:
      total = len(iterable)  # type: ignore[arg-type]
    except TypeError:
      total = None
  if every_s is None:
    every_s = default_every_s()
  bar_cls = _tqdm_or_none()
  if bar_cls is not None:
    # Interactive: the bar replaces the periodic log lines; one summary line
    # still goes to the log.
    start = time.monotonic()
    i = 0
    with bar_cls(iterable, total=total, desc=desc or None, leave=False) as bar:
      for item in bar:
        yield item
        i += 1
    logging.info(_message(desc, i, total, time.monotonic() - start))
    return
  start = time.monotonic()
  last = start
  i = 0
  for item in iterable:
    yield item
    i += 1
    now = time.monotonic()
    if now - last >= every_s:
      last = now
      logging.info(_message(desc, i, total, now - start), **_TAG)
  elapsed = time.monotonic() - start
  logging.info(_message(desc, i, total, elapsed),
               **(_TAG if elapsed >= every_s else {}))
