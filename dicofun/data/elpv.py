"""Reader of the ELPV solar-cell dataset (Buerhop-Lutz et al., 2018).

ELPV holds 2,624 electroluminescence images of solar cells, 300×300 8-bit
grey, each with a defect probability in {0, 1/3, 2/3, 1} (the raters'
confidence that the cell is defective) and a cell type ``mono`` or ``poly``.
There are no masks: ELPV is an image-level benchmark, so pixel metrics are
absent from its results. The images come with the ``elpv-dataset`` package
(``pip install elpv-dataset``, or the ``dicofun[elpv]`` extra; ~90 MB, not a
core dependency): ``elpv_dataset/data/labels.csv`` lists
``images/cellNNNN.png  <probability>  <type>`` one image a line, and the
records point at those files (nothing is copied). A ``root`` folder with the
same layout (``labels.csv`` + ``images/``) may be given instead.

Labels **(ours)**:

* normal = defect probability 0;
* anomalous = probability >= ``min_defect_probability`` (default 2/3);
* cells in between (by default the 295 cells at 1/3) are left out of both
  splits. A 1/3 cell is one the raters were unsure about: most look
  functional, so calling it anomalous adds label noise to the test
  anomalies, and calling it normal puts suspected defects into the clean
  normals that the contamination ratio is measured against. Set
  ``min_defect_probability=1/3`` to count any rater suspicion as a defect.

Category = the cell type: ``mono`` (588 normals, 369 anomalies at the default
threshold), ``poly`` (920, 452) or ``all`` (1,508, 821; the default: both
types, the most images: more test anomalies than either type alone).

Split (seeded, the same on every machine):

* ``round(test_fraction · n)`` of the n normals (sorted by path) go to the
  test split, chosen as ``folder.split_normals`` chooses them;
* every anomaly goes to the test split. As on magnetic tile, the
  contamination protocol (``data.contamination``, METHODS §4) then moves
  ``int(ratio · |train normals|)`` of them into training, so
  ``contamination=0.1`` means the same on both datasets;
* ``max_train_normals > 0`` keeps that many of the remaining normals for
  training (a seeded draw; the rest are unused) **(ours)**. The config
  default, 760, is magnetic tile's training size (761), so a CPU FUN-AD run
  takes about as long as there; 0 keeps all (1,206 with ``all``).

Record fields: ``category`` is the cell's type, ``defect`` is ``good`` or the
probability as ``p67`` / ``p100`` (``p33`` when 1/3 cells are anomalies).
"""

from __future__ import annotations

import importlib
import os

from absl import logging
import numpy as np

from dicofun.data import errors
from dicofun.data import folder
from dicofun.data import records as records_lib

Record = records_lib.Record

PACKAGE = "elpv_dataset"
PIP_COMMAND = "pip install elpv-dataset"
LABELS_FILE = "labels.csv"
CATEGORIES = ("all", "mono", "poly")
# The raters' probabilities are thirds written as decimals (0.3333333333).
_TOLERANCE = 1e-6


def package_root() -> str:
  """The ``data`` folder of the installed ``elpv_dataset`` package.

  Raises:
    DatasetPackageMissingError: the package is not installed (the message
      names it and the pip command).
  """
  try:
    module = importlib.import_module(PACKAGE)
  except ModuleNotFoundError as e:
    raise errors.DatasetPackageMissingError(
        PACKAGE, pip_command=PIP_COMMAND,
        hint=(f"(or `pip install dicofun[elpv]`), or set config.dataset.root "
              f"to a folder holding {LABELS_FILE} and images/")) from e
  return os.path.join(os.path.dirname(os.path.abspath(module.__file__)),
                      "data")


def read_labels(root: str) -> list[tuple[str, float, str]]:
  """(absolute image path, defect probability, cell type) of ``labels.csv``.

  Raises:
    DatasetNotFoundError: ``root/labels.csv`` does not exist.
    DatasetError: a line is not ``path probability type``.
  """
  path = os.path.join(root, LABELS_FILE)
  if not os.path.isfile(path):
    raise errors.DatasetNotFoundError(path, what="ELPV labels file")
  out = []
  with open(path) as f:
    for n, line in enumerate(f, 1):
      parts = line.split()
      if not parts:
        continue
      try:
        name, prob, kind = parts
        prob = float(prob)
      except ValueError as e:
        raise errors.DatasetError(
            f"{path}:{n}: expected 'images/<file>.png <probability> "
            f"<mono|poly>', got {line.strip()!r}") from e
      out.append((os.path.join(root, name), prob, kind))
  return out


def defect_name(prob: float) -> str:
  """``p33``, ``p67`` or ``p100``: the probability in percent."""
  return f"p{int(round(100 * prob))}"


def read_elpv(root: str = "", *, category: str = "all",
              min_defect_probability: float = 2 / 3,
              test_fraction: float = 0.2, max_train_normals: int = 0,
              seed: int = 0) -> list[Record]:
  """ELPV as train/test records (labels and split: module docstring).

  Args:
    root: folder with ``labels.csv`` and ``images/``; "" = the installed
      ``elpv_dataset`` package.
    category: ``all``, ``mono`` or ``poly``.
    min_defect_probability: lowest probability counted as anomalous, in
      (0, 1]; cells above 0 and below it are left out.
    test_fraction: fraction of the normals held out for testing, in [0, 1).
    max_train_normals: at most this many training normals (0 = all).
    seed: seed of the normals' test split and of the training subsample.

  Returns:
    Train records (sorted by path), then test normals, then test anomalies.

  Raises:
    DatasetNotFoundError: no package / labels file.
    EmptyCategoryError: the category holds no normal image.
    ValueError: an argument out of range.
  """
  if category not in CATEGORIES:
    raise ValueError(f"ELPV category must be one of {list(CATEGORIES)}, got "
                     f"{category!r}")
  if not 0.0 < min_defect_probability <= 1.0:
    raise ValueError("min_defect_probability must be in (0, 1], got "
                     f"{min_defect_probability}")
  if not 0.0 <= test_fraction < 1.0:
    raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
  if max_train_normals < 0:
    raise ValueError(f"max_train_normals must be >= 0, got {max_train_normals}")
  root = root or package_root()
  rows = sorted(r for r in read_labels(root)
                if category == "all" or r[2] == category)
  normals = [r for r in rows if r[1] <= _TOLERANCE]
  anomalies = [r for r in rows
               if r[1] >= min_defect_probability - _TOLERANCE]
  if not normals:
    raise errors.EmptyCategoryError(os.path.join(root, LABELS_FILE),
                                    f"normal ({category})")
  is_test = folder.split_normals(len(normals), test_fraction=test_fraction,
                                 seed=seed)
  train_idx = np.flatnonzero(~is_test)
  if 0 < max_train_normals < len(train_idx):
    keep = np.random.default_rng(seed).permutation(len(train_idx))
    train_idx = np.sort(train_idx[keep[:max_train_normals]])
  left_out = len(rows) - len(normals) - len(anomalies)
  logging.info(
      "ELPV %s: %d train normals (%d unused), %d test normals, %d anomalies "
      "(probability >= %.3g); %d cells in between left out", category,
      len(train_idx), int(np.sum(~is_test)) - len(train_idx),
      int(np.sum(is_test)), len(anomalies), min_defect_probability, left_out)

  def record(row, label, split):
    path, prob, kind = row
    return Record(image_path=path, mask_path=None, label=label,
                  defect=records_lib.GOOD if label == records_lib.NORMAL
                  else defect_name(prob), split=split, category=kind)

  train = [record(normals[i], records_lib.NORMAL, "train") for i in train_idx]
  test = [record(r, records_lib.NORMAL, "test")
          for r, t in zip(normals, is_test) if t]
  test += [record(r, records_lib.ANOMALOUS, "test") for r in anomalies]
  return train + test
