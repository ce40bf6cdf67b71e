"""One dicofun process per output folder: an advisory lock that names its owner.

Two ``dicofun run`` into one workdir (or two ``inspect``/``predict`` into one
``--out``) would interleave their checkpoints and results, and each would
report metrics whose files the other overwrote. ``folder_lock`` takes an
exclusive ``fcntl.flock`` on a lock file before any work; it holds the owner's
pid, host, start time and command line, so a second process stops at once
with ``FolderInUseError`` naming the first. The kernel drops a flock when its
process dies (a crash, SIGKILL), so a lock file left behind never blocks a
later run; a clean exit removes it.

Where the lock file lives: a run's workdir lasts (checkpoints, resume), so its
lock is ``<workdir>/.dicofun.lock``; an ``--out`` folder is replaced as a whole
at the end of ``inspect``/``predict`` (``fileio.replacing_dir``), so its lock is
a sibling, ``<parent>/.<name>.dicofun.lock``, which the swap leaves alone.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import shlex
import socket
import sys
from typing import Any, Iterator, Optional

from dicofun import user_errors

LOCK_NAME = ".dicofun.lock"  # Inside a workdir.


class FolderInUseError(user_errors.UserError):
  """Another live process holds the folder's lock.

  Attributes:
    owner: what the other process wrote in the lock file (``pid``, ``host``,
      ``since``, ``command``), empty if it had not written it yet.
  """

  def __init__(self, message: str, owner: dict[str, Any]):
    super().__init__(message)
    self.owner = owner


def workdir_lock_path(workdir: str) -> str:
  """The lock file of a run's workdir (inside it)."""
  return os.path.join(workdir, LOCK_NAME)


def sibling_lock_path(folder: str) -> str:
  """The lock file of a folder replaced as a whole (beside it)."""
  parent, name = os.path.split(os.path.abspath(folder))
  return os.path.join(parent, f".{name}{LOCK_NAME}")


def _command_line() -> str:
  """This process's command as a person typed it (``dicofun run ...``)."""
  if not sys.argv:
    return ""
  prog = os.path.basename(sys.argv[0])
  if prog == "__main__.py":  # python -m <package>
    prog = f"python -m {os.path.basename(os.path.dirname(sys.argv[0]))}"
  return " ".join([prog] + [shlex.quote(a) for a in sys.argv[1:]])


def _owner() -> dict[str, Any]:
  return {"pid": os.getpid(), "host": socket.gethostname(),
          "since": datetime.datetime.now().astimezone().isoformat(
              timespec="seconds"),
          "command": _command_line()}


def _read_owner(fd: int) -> dict[str, Any]:
  try:
    os.lseek(fd, 0, os.SEEK_SET)
    return json.loads(os.read(fd, 1 << 16).decode() or "{}")
  except (OSError, ValueError):
    return {}


def _describe(owner: dict[str, Any]) -> str:
  if not owner:
    return "another process (it has not written its details yet)"
  return (f"pid {owner.get('pid')} on {owner.get('host')}, running since "
          f"{owner.get('since')}: {owner.get('command')}")


def _acquire(lock_path: str, *, folder: str, flag: str) -> int:
  """An open, flocked descriptor of ``lock_path`` (created if needed)."""
  while True:
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      owner = _read_owner(fd)
      os.close(fd)
      raise FolderInUseError(
          f"{flag}={folder!r} is in use by another dicofun process "
          f"({_describe(owner)}); wait for it to end or use another "
          f"{flag} (lock file {lock_path})", owner) from None
    except BaseException:
      os.close(fd)
      raise
    # The holder we waited for may have removed the file as it released it:
    # then our lock is on a deleted file, and we try again on a fresh one.
    try:
      same = os.stat(lock_path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
      same = False
    if same:
      return fd
    os.close(fd)


@contextlib.contextmanager
def folder_lock(folder: str, *, flag: str = "--workdir",
                lock_path: Optional[str] = None) -> Iterator[dict[str, Any]]:
  """Holds the exclusive lock of ``folder`` for the block.

  Usage::

    with locking.folder_lock(workdir):
      ...train, write the results...

  Args:
    folder: the output folder (for the message; created with the lock file's
      parent when ``lock_path`` is inside it).
    flag: the flag that named ``folder``, for the message.
    lock_path: the lock file (default ``workdir_lock_path(folder)``).

  Yields:
    What this process wrote in the lock file (pid, host, since, command).

  Raises:
    FolderInUseError: another live process holds the lock (checked at once,
      never waited for).
    user_errors.OutputPathError: ``folder`` is an existing file.
  """
  user_errors.check_not_a_file(folder, flag=flag)
  lock_path = lock_path or workdir_lock_path(folder)
  os.makedirs(os.path.dirname(os.path.abspath(lock_path)), exist_ok=True)
  fd = _acquire(lock_path, folder=folder, flag=flag)
  owner = _owner()
  try:
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(owner).encode(), 0)
    yield owner
  finally:
    # Removed while still held, so no other process can be holding it.
    with contextlib.suppress(OSError):
      os.remove(lock_path)
    os.close(fd)
