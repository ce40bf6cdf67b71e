"""Atomic file writes: a reader sees the old file or the new one, never half.

Every result file dicofun writes (``results.json``, ``metrics.md``, the score
CSVs, the sweep tables and cell records) goes through ``open_atomic``: the
content is written to a temporary file in the same directory, flushed and
fsynced, then renamed over the target with ``os.replace`` (atomic on POSIX
within one filesystem). If writing fails part-way — an exception, a full
disk, a killed process — the previous file is left untouched and the
temporary file is removed (a SIGKILL can leave a ``.<name>.tmp-*`` file
behind, never a truncated target).
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from typing import Any, Iterator, IO


def _temp_path(path: str) -> str:
  head, tail = os.path.split(os.path.abspath(path))
  return os.path.join(head, f".{tail}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")


@contextlib.contextmanager
def open_atomic(path: str, mode: str = "w", **kwargs: Any) -> Iterator[IO]:
  """Opens ``path`` for writing; the file appears only when the block ends.

  Usage::

    with fileio.open_atomic("out.csv", newline="") as f:
      csv.writer(f).writerows(rows)

  Args:
    path: the target file.
    mode: ``"w"`` (text) or ``"wb"`` (binary).
    **kwargs: passed to ``open`` (``newline``, ``encoding``).

  Yields:
    The open temporary file.

  Raises:
    ValueError: ``mode`` is not a write mode.
  """
  if mode not in ("w", "wb"):
    raise ValueError(f"open_atomic mode must be 'w' or 'wb', got {mode!r}")
  tmp = _temp_path(path)
  # "x": the temporary name is fresh; plain open (not mkstemp) keeps the
  # umask's permissions, as a direct open(path, "w") would.
  f = open(tmp, mode.replace("w", "x"), **kwargs)
  try:
    with f:
      yield f
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(OSError):
      os.remove(tmp)
    raise


def write_text_atomic(path: str, text: str) -> None:
  """Writes ``text`` to ``path`` atomically (see ``open_atomic``)."""
  with open_atomic(path) as f:
    f.write(text)


def write_json_atomic(path: str, obj: Any, **kwargs: Any) -> None:
  """``json.dump(obj, **kwargs)`` to ``path`` atomically.

  The object is serialised before the file is opened, so an object that is
  not JSON-able raises without touching ``path``.
  """
  write_text_atomic(path, json.dumps(obj, **kwargs))
