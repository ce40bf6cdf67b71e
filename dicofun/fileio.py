"""Atomic file writes: a reader sees the old file or the new one, never half.

Every result file dicofun writes (``results.json``, ``metrics.md``, the score
CSVs, the sweep tables and cell records) goes through ``open_atomic``: the
content is written to a temporary file in the same directory, flushed and
fsynced, then renamed over the target with ``os.replace`` (atomic on POSIX
within one filesystem). If writing fails part-way — an exception, a full
disk, a killed process — the previous file is left untouched and the
temporary file is removed (a SIGKILL can leave a ``.<name>.tmp-*`` file
behind, never a truncated target).

Output folders (``replacing_dir``): dicofun never deletes or overwrites what
it did not write. Every output folder it makes carries ``MARKER``
(``.dicofun-output``, JSON: the command and each path it wrote); a run's
results are written into a fresh hidden sibling folder and swapped in by
renames at the end, so an output folder holds the old run or the new one,
never a mix. A non-empty folder without the marker is refused.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import uuid
from typing import Any, Iterator, IO, Optional

from dicofun import user_errors


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


# ------------------------------------------------------------ output folders
#
# dicofun never deletes or overwrites what it did not write. Each output
# folder it makes carries MARKER, a small JSON file naming the command and
# every path it wrote there; a later run may replace such a folder, and only
# when nothing else has been put into it since. A non-empty folder without
# the marker is the user's: it is refused, never written into.

MARKER = ".dicofun-output"


class OutputFolderError(user_errors.UserError, ValueError):
  """An output folder dicofun must not write into: it holds the user's
  files, overlaps the input, or names a file."""


def read_marker(path: str) -> Optional[dict[str, Any]]:
  """The marker of the folder ``path`` (a dict), or None if it has none."""
  try:
    with open(os.path.join(path, MARKER), encoding="utf-8") as f:
      info = json.load(f)
  except (OSError, ValueError):
    return None
  return info if isinstance(info, dict) else None


def foreign_entries(path: str) -> list[str]:
  """Paths under the marked folder ``path`` that dicofun did not write.

  A sub-folder with a marker of its own (``dicofun predict``'s
  ``predictions/`` in an inspect folder) is checked by its own marker.

  Returns:
    Sorted paths relative to ``path``; all of them when ``path`` has no
    marker.
  """
  info = read_marker(path)
  owned = set(info.get("files", [])) if info else set()
  out = []
  for root, dirs, files in os.walk(path):
    rel_root = os.path.relpath(root, path)
    keep = []
    for d in sorted(dirs):
      rel = os.path.normpath(os.path.join(rel_root, d))
      full = os.path.join(root, d)
      if not os.path.islink(full) and read_marker(full) is not None:
        out += [os.path.join(rel, x) for x in foreign_entries(full)]
      elif rel not in owned:
        out.append(rel)
      else:
        keep.append(d)
    dirs[:] = keep
    for f in files:
      rel = os.path.normpath(os.path.join(rel_root, f))
      if rel != MARKER and rel not in owned:
        out.append(rel)
  return sorted(out)


def check_output_dir(path: str, *, flag: str = "--out") -> None:
  """Raises unless dicofun may (re)place the folder ``path``.

  Allowed: a path that does not exist, an empty folder, or a folder with
  dicofun's marker holding nothing but what dicofun wrote there.

  Raises:
    OutputFolderError: ``path`` is a file, or a non-empty folder without the
      marker, or a marked folder holding files dicofun did not write (the
      message names the folder and what to do).
  """
  if os.path.lexists(path) and not os.path.isdir(path):
    raise OutputFolderError(
        f"{flag}={path!r} is a file, not a folder; name a new or empty "
        "folder")
  if not os.path.isdir(path) or not os.listdir(path):
    return
  if read_marker(path) is None:
    raise OutputFolderError(
        f"{flag}={path!r} is not empty and was not made by dicofun (no "
        f"{MARKER} file in it); dicofun never deletes or overwrites files it "
        f"did not write: name a new or empty folder with {flag}")
  foreign = foreign_entries(path)
  if foreign:
    raise OutputFolderError(
        f"{flag}={path!r} holds {len(foreign)} file(s) dicofun did not write "
        f"(first: {foreign[0]!r}); dicofun will not replace that folder: move "
        f"them out or name another folder with {flag}")


def check_disjoint(input_dir: str, output_dir: str, *,
                   input_flag: str = "FOLDER", output_flag: str = "--out"
                   ) -> None:
  """Raises unless neither folder is inside the other (nor the same).

  An output folder inside the input would have its thumbnails scored as
  input by the next run; an input inside the output would be replaced.

  Raises:
    OutputFolderError: the folders overlap (after resolving symlinks).
  """
  src, dst = os.path.realpath(input_dir), os.path.realpath(output_dir)
  if src == dst or dst.startswith(src.rstrip(os.sep) + os.sep):
    raise OutputFolderError(
        f"{output_flag}={output_dir!r} is inside the input folder "
        f"{input_flag}={input_dir!r}{' (the same folder)' if src == dst else ''}"
        f"; the next run would read its outputs as input: name an "
        f"{output_flag} folder outside {src}")
  if src.startswith(dst.rstrip(os.sep) + os.sep):
    raise OutputFolderError(
        f"the input folder {input_flag}={input_dir!r} is inside "
        f"{output_flag}={output_dir!r}, which dicofun replaces: name an "
        f"{output_flag} folder outside {src}")


def _owned_paths(path: str) -> list[str]:
  """Every file and folder under ``path``, relative to it, sorted."""
  out = []
  for root, dirs, files in os.walk(path):
    rel_root = os.path.relpath(root, path)
    out += [os.path.normpath(os.path.join(rel_root, n)) for n in dirs + files]
  return sorted(p for p in out if p != MARKER)


def write_marker(path: str, *, command: str, **info: Any) -> None:
  """Marks ``path`` as dicofun's, listing everything now in it as its own."""
  write_json_atomic(os.path.join(path, MARKER), dict(
      command=command, **info, files=_owned_paths(path)), indent=1)


@contextlib.contextmanager
def replacing_dir(path: str, *, command: str, flag: str = "--out",
                  info: Optional[dict[str, Any]] = None) -> Iterator[str]:
  """A fresh folder whose content replaces ``path`` all at once, at the end.

  Usage::

    with fileio.replacing_dir(out, command="inspect") as tmp:
      ...write every result into tmp...

  The folder is a hidden sibling of ``path`` (same filesystem). When the
  block ends without an error it is marked (``write_marker``) and renamed
  to ``path``; an old ``path`` (checked by ``check_output_dir``, before and
  again at the end) is renamed aside first and then deleted. When the block
  raises (a full disk, Ctrl-C), the new folder is deleted and ``path`` is
  left exactly as it was.

  Args:
    path: the output folder.
    command: the dicofun command, recorded in the marker.
    flag: the flag that named ``path``, for messages.
    info: more JSON-able facts for the marker.

  Yields:
    The temporary folder to write into.

  Raises:
    OutputFolderError: see ``check_output_dir``.
  """
  path = os.path.realpath(path)
  check_output_dir(path, flag=flag)
  parent, name = os.path.split(path)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=f".{name}.dicofun-new-", dir=parent)
  keep_tmp = False
  try:
    yield tmp
    write_marker(tmp, command=command, **(info or {}))
    try:
      check_output_dir(path, flag=flag)
    except OutputFolderError as e:
      keep_tmp = True  # Someone wrote into it meanwhile: keep both.
      raise OutputFolderError(f"{e}; this run's results are in {tmp}") from e
    _swap_in(tmp, path)
  finally:
    if not keep_tmp and os.path.isdir(tmp):
      shutil.rmtree(tmp, ignore_errors=True)


def _swap_in(new: str, path: str) -> None:
  """Renames ``new`` to ``path``; an old ``path`` (already checked) goes."""
  if not os.path.isdir(path) or not os.listdir(path):
    os.replace(new, path)  # Also over an empty folder.
    return
  parent, name = os.path.split(path)
  old = os.path.join(parent, f".{name}.dicofun-old-{uuid.uuid4().hex[:8]}")
  os.rename(path, old)
  try:
    os.rename(new, path)
  except BaseException:
    os.rename(old, path)
    raise
  shutil.rmtree(old, ignore_errors=True)  # Marked and checked: all ours.
