"""The contamination protocol of SoftPatch / FUN-AD (METHODS §4).

``int(ratio · |train normals|)`` test anomalies, chosen by a seeded
permutation, are moved into the training set. They keep their true label 1
(the methods never read labels of training records; the transductive view of
the evaluation does). Unless ``overlap=True`` they leave the test set.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

from absl import logging
import numpy as np

from dicofun.data import records as records_lib

Record = records_lib.Record


@dataclasses.dataclass(frozen=True)
class ContaminationResult:
  """Outcome of ``contaminate``.

  Attributes:
    train: the training records, original ones first, then the moved
      anomalies (with split "train").
    test: the test records (without the moved anomalies unless overlap).
    moved: the moved anomalies, as they appear in ``train``.
    ratio: the requested ratio.
    seed: the seed of the draw.
    overlap: whether the moved anomalies were kept in ``test``.
  """

  train: list[Record]
  test: list[Record]
  moved: list[Record]
  ratio: float = 0.0
  seed: int = 0
  overlap: bool = False

  def to_json(self) -> dict[str, Any]:
    """A JSON-ready summary (for ``results.json``)."""
    return {
        "ratio": float(self.ratio),
        "seed": int(self.seed),
        "overlap": bool(self.overlap),
        "num_train": len(self.train),
        "num_test": len(self.test),
        "num_moved": len(self.moved),
        "moved": [r.image_path for r in self.moved],
    }


def contaminate(records: Sequence[Record], *, ratio: float, seed: int = 0,
                overlap: bool = False) -> ContaminationResult:
  """Moves test anomalies into the training set.

  Args:
    records: records of both splits (e.g. from ``read_mvtec``).
    ratio: number of moved anomalies as a fraction of the training normals,
      in [0, 1).
    seed: seed of ``np.random.default_rng``; the permutation runs over the
      test anomalies sorted by image path, so the draw does not depend on the
      order of ``records``.
    overlap: keep the moved anomalies in the test set too (with split
      "test"), as in InReaCh's protocol.

  Returns:
    A ContaminationResult. When fewer test anomalies exist than needed, all
    are moved and a warning is logged.

  Raises:
    ValueError: ``ratio`` outside [0, 1).
  """
  if not 0.0 <= ratio < 1.0:
    raise ValueError(f"contamination ratio must be in [0, 1), got {ratio}")
  train = [r for r in records if r.split == "train"]
  test = [r for r in records if r.split == "test"]
  n_normal = sum(r.label == records_lib.NORMAL for r in train)
  n = int(ratio * n_normal)
  anomalies = sorted((r for r in test if r.label == records_lib.ANOMALOUS),
                     key=lambda r: r.image_path)
  if n > len(anomalies):
    logging.warning(
        "contamination %.3g needs %d anomalies but the test set has only %d; "
        "moving all of them", ratio, n, len(anomalies))
    n = len(anomalies)
  if n == 0:
    return ContaminationResult(train=train, test=test, moved=[], ratio=ratio,
                               seed=seed, overlap=overlap)
  perm = np.random.default_rng(seed).permutation(len(anomalies))
  chosen = [anomalies[i] for i in perm[:n]]
  chosen_paths = {r.image_path for r in chosen}
  moved = [dataclasses.replace(r, split="train") for r in chosen]
  if not overlap:
    test = [r for r in test if not (r.label == records_lib.ANOMALOUS
                                    and r.image_path in chosen_paths)]
  logging.info("contamination %.3g (seed %d): moved %d of %d test anomalies "
               "into %d training images", ratio, seed, n, len(anomalies),
               len(train))
  return ContaminationResult(train=train + moved, test=test, moved=moved,
                             ratio=ratio, seed=seed, overlap=overlap)
