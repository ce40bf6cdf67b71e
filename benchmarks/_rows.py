"""Helpers for benchmark rows that read a finished run's own outputs."""

import os
import statistics

from dicofun import summary


def tensorboard_images_per_s(cell: str):
  """Median training images/s of a cell's epochs (its TensorBoard
  ``speed/images_per_second``, first epoch left out), for runs whose
  results.json predates ``train_images_per_s``; None without one."""
  tb = os.path.join(cell, summary.TENSORBOARD_DIR)
  if not os.path.isdir(tb):
    return None
  values = [v for _, v in summary.read_scalars(tb).get(
      "speed/images_per_second", [])]
  values = values[1:] or values
  return float(statistics.median(values)) if values else None


def _key(row: dict) -> tuple:
  return (row.get("method"), row.get("args"), float(row.get("contamination")))


def merge_rows(old: list, new: list) -> list:
  """``old`` rows not measured again in ``new`` (same method, args and
  contamination), then ``new``: a results file can collect the cells of
  several invocations, each row keeping the command and commit that measured
  it."""
  fresh = {_key(r) for r in new}
  return [r for r in old if _key(r) not in fresh] + list(new)


def replace_block(path: str, begin: str, end: str, body: str) -> None:
  """Writes ``begin``, ``body`` and ``end`` over the block between those
  markers in the file at ``path`` (a generated table in BENCHMARKS.md),
  or appends the block when the markers are not there yet."""
  with open(path) as f:
    text = f.read()
  block = f"{begin}\n{body}{end}"
  if begin in text:
    start, stop = text.index(begin), text.index(end) + len(end)
    text = text[:start] + block + text[stop:]
  else:
    text = text.rstrip("\n") + "\n\n" + block + "\n"
  with open(path, "w") as f:
    f.write(text)
