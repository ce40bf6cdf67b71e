"""User errors: bad input or configuration, reported as one line.

Every exception dicofun raises for something the user can fix — a missing
dataset, a bad config value, a checkpoint of another config, a workdir in use
by another process, an output path that names a file — derives from
``UserError``. The command line (``dicofun.cli``) turns one into a single line
``error: <message>`` on stderr and exit status ``EXIT_USER_ERROR`` (2), without
a traceback; any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import os

EXIT_USER_ERROR = 2  # As argparse and absl usage errors.
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for Ctrl-C.


class UserError(Exception):
  """Base of the errors the user can fix; the message says how."""


class OutputPathError(UserError):
  """An output folder flag (``--workdir``, ``--out``) names something else."""


def check_not_a_file(path: str, *, flag: str) -> None:
  """Raises ``OutputPathError`` when ``path`` exists and is not a folder.

  Args:
    path: the folder a flag names.
    flag: the flag, for the message (``--workdir``, ``--out``).
  """
  if os.path.lexists(path) and not os.path.isdir(path):
    raise OutputPathError(
        f"{flag}={path!r} is a file, not a folder; name a new folder or an "
        "existing one (dicofun will not replace a file)")


def one_line(message: object) -> str:
  """``message`` on one line (newlines become spaces)."""
  return " ".join(str(message).split("\n")).strip()
