"""Dataset tables: the one record type every reader returns.

A dataset split is a plain ``list[Record]``. Readers (MVTec AD, VisA, a user's
folders, the synthetic generator) all produce it; protocols (contamination)
transform it; the input pipeline consumes it. Keeping the table as data makes
every run's inputs inspectable and serialisable into ``results.json``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Optional

NORMAL = 0
ANOMALOUS = 1
GOOD = "good"


@dataclasses.dataclass(frozen=True)
class Record:
  """One image of a dataset split.

  Attributes:
    image_path: absolute or root-relative path of the image file.
    mask_path: path of the ground-truth mask, or None (normal images, or an
      anomalous image whose mask is missing).
    label: 0 = normal, 1 = anomalous (the *true* label, kept even when a
      protocol hides it from a method, e.g. contaminated training images).
    defect: defect type ("good" for normal images).
    split: "train" or "test".
    category: dataset category, e.g. "bottle" or "candle".
  """

  image_path: str
  mask_path: Optional[str]
  label: int
  defect: str
  split: str
  category: str = ""

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> "Record":
    return cls(**d)


def count_by(records: Iterable[Record], *fields: str) -> dict[tuple, int]:
  """Counts records grouped by the given attribute names."""
  out: dict[tuple, int] = {}
  for r in records:
    key = tuple(getattr(r, f) for f in fields)
    out[key] = out.get(key, 0) + 1
  return out
