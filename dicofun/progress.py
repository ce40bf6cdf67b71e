"""Progress reporting for long loops.

``progress`` wraps an iterable. It always logs through absl at a bounded rate
(so logs of batch jobs show where a run is), and additionally draws a tqdm bar
when stderr is an interactive terminal and tqdm is installed.
"""

from __future__ import annotations

import sys
import time
from typing import Iterable, Iterator, Optional, TypeVar

from absl import logging

T = TypeVar("T")


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
             desc: str = "", every_s: float = 10.0) -> Iterator[T]:
  """Yields the items of ``iterable`` while reporting progress.

  Args:
    iterable: the items.
    total: number of items (taken from ``len(iterable)`` when it has one).
    desc: label shown in front of the counts.
    every_s: minimum seconds between two log lines (a final line is always
      logged when the iterable is exhausted).

  Yields:
    The items of ``iterable``, unchanged.
  """
  if total is None:
    try:
      total = len(iterable)  # type: ignore[arg-type]
    except TypeError:
      total = None
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
      logging.info(_message(desc, i, total, now - start))
  logging.info(_message(desc, i, total, time.monotonic() - start))
