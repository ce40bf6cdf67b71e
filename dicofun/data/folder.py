"""Readers for a user's own images.

``read_folder``: a folder of normals, optionally abnormals. Layout (only the
top level of each folder is read)::

  normal_dir/*.png     defect-free (or unlabeled) images; split train/test
  abnormal_dir/*.png   known anomalies; all go to the test split
  mask_dir/<stem>.png or <stem>_mask.png   masks of the abnormal images

The train/test split of the normals is a seeded permutation, so it is the same
on every machine and run with the same seed **(ours)**.

``folder_labels`` / ``unlabelled_records``: one unlabelled folder (any depth),
as ``dicofun inspect`` reads it. Labels are optional and never shown to a
method; they only add the ROC curve and AUROC to the report:

* from folder names: when any folder under the root is named ``good`` or
  ``ok`` (any case), images with such a folder in their path are normal,
  images in any other sub-folder are anomalous, and loose files at the top
  level stay unlabelled;
* from a CSV (``--labels``): columns ``file`` (relative to the root, or
  absolute) and ``label``: ``0``/``good``/``ok``/``normal`` are normal, an
  empty cell is unlabelled, anything else is anomalous. The CSV replaces the
  folder names.
"""

from __future__ import annotations

import csv
import os
from typing import Optional

from absl import logging
import numpy as np

from dicofun.data import errors
from dicofun.data import mvtec
from dicofun.data import records as records_lib

Record = records_lib.Record

ABNORMAL_DEFECT = "anomaly"
UNLABELLED = -1
NORMAL_NAMES = ("good", "ok", "normal")


def _check_dir(path: str, what: str) -> str:
  path = os.path.abspath(os.path.expanduser(os.fspath(path)))
  if not os.path.isdir(path):
    raise errors.DatasetNotFoundError(path, what=what)
  return path


def split_normals(n: int, *, test_fraction: float, seed: int) -> np.ndarray:
  """Boolean vector: which of ``n`` sorted normal images go to the test split.

  ``round(test_fraction * n)`` images, chosen by
  ``np.random.default_rng(seed).permutation(n)``; at least one image stays in
  training.
  """
  n_test = min(int(round(test_fraction * n)), max(n - 1, 0))
  is_test = np.zeros(n, bool)
  is_test[np.random.default_rng(seed).permutation(n)[:n_test]] = True
  return is_test


def read_folder(normal_dir: str, *, abnormal_dir: Optional[str] = None,
                mask_dir: Optional[str] = None, test_fraction: float = 0.2,
                seed: int = 0, category: str = "custom") -> list[Record]:
  """Reads a user's folders into train/test records.

  Args:
    normal_dir: folder of normal (or unlabeled) images.
    abnormal_dir: optional folder of anomalous images (test split only).
    mask_dir: optional folder of masks for the abnormal images, matched by
      file stem (``<stem>.<ext>`` or ``<stem>_mask.<ext>``).
    test_fraction: fraction of the normals held out for testing, in [0, 1).
    seed: seed of the train/test split of the normals.
    category: name stored in the records.

  Returns:
    Train records, then test normals, then test abnormals (each sorted by
    path). Abnormal images without a mask get ``mask_path=None``.

  Raises:
    DatasetNotFoundError: a given folder does not exist.
    EmptyCategoryError: ``normal_dir`` (or a given ``abnormal_dir``) holds
      no images.
    ValueError: ``test_fraction`` outside [0, 1).
  """
  if not 0.0 <= test_fraction < 1.0:
    raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
  normal_dir = _check_dir(normal_dir, "normal image folder")
  names = mvtec.list_images(normal_dir)
  if not names:
    raise errors.EmptyCategoryError(normal_dir, "normal")
  is_test = split_normals(len(names), test_fraction=test_fraction, seed=seed)
  train, test = [], []
  for name, t in zip(names, is_test):
    rec = Record(image_path=os.path.join(normal_dir, name), mask_path=None,
                 label=records_lib.NORMAL, defect=records_lib.GOOD,
                 split="test" if t else "train", category=category)
    (test if t else train).append(rec)

  if abnormal_dir:
    abnormal_dir = _check_dir(abnormal_dir, "abnormal image folder")
    ab_names = mvtec.list_images(abnormal_dir)
    if not ab_names:
      raise errors.EmptyCategoryError(abnormal_dir, "abnormal")
    masks: dict[str, str] = {}
    if mask_dir:
      masks = mvtec.mask_index(_check_dir(mask_dir, "mask folder"))
    missing = 0
    for name in ab_names:
      mask = masks.get(os.path.splitext(name)[0])
      missing += mask is None
      test.append(Record(image_path=os.path.join(abnormal_dir, name),
                         mask_path=mask, label=records_lib.ANOMALOUS,
                         defect=ABNORMAL_DEFECT, split="test",
                         category=category))
    if missing:
      logging.warning(
          "%d of %d abnormal images have no mask%s; pixel metrics need "
          "config.dataset.allow_missing_masks=True", missing, len(ab_names),
          f" in {mask_dir}" if mask_dir else " (no mask_dir given)")
  elif mask_dir:
    logging.warning("mask_dir %s is ignored: no abnormal_dir given", mask_dir)
  return train + test


def _parts(path: str, root: str) -> list[str]:
  return os.path.relpath(path, root).replace(os.sep, "/").split("/")


def folder_labels(root: str, paths: list[str], *,
                  labels_csv: Optional[str] = None) -> np.ndarray:
  """(len(paths),) int labels: 0 normal, 1 anomalous, -1 unlabelled.

  See the module docstring for the two rules.

  Raises:
    DatasetError: the CSV lacks a ``file``/``label`` column.
  """
  if labels_csv:
    return _csv_labels(root, paths, labels_csv)
  parts = [_parts(p, root) for p in paths]
  has_normal_dir = any(d.lower() in NORMAL_NAMES[:2]
                       for ps in parts for d in ps[:-1])
  out = np.full(len(paths), UNLABELLED, np.int64)
  if not has_normal_dir:
    return out
  for i, ps in enumerate(parts):
    if any(d.lower() in NORMAL_NAMES[:2] for d in ps[:-1]):
      out[i] = records_lib.NORMAL
    elif len(ps) > 1:
      out[i] = records_lib.ANOMALOUS
  return out


def _csv_labels(root: str, paths: list[str], labels_csv: str) -> np.ndarray:
  with open(labels_csv, newline="") as f:
    rows = list(csv.DictReader(f))
  if rows and not {"file", "label"} <= set(rows[0]):
    raise errors.DatasetError(
        f"--labels={labels_csv!r} needs the columns 'file' and 'label', got "
        f"{sorted(rows[0])}")
  by_path = {}
  for row in rows:
    f = (row["file"] or "").strip()
    full = os.path.normpath(f if os.path.isabs(f) else os.path.join(root, f))
    v = (row["label"] or "").strip().lower()
    by_path[full] = (UNLABELLED if not v else records_lib.NORMAL
                     if v in ("0",) + NORMAL_NAMES else records_lib.ANOMALOUS)
  out = np.array([by_path.get(os.path.normpath(p), UNLABELLED) for p in paths],
                 np.int64)
  missing = int(np.sum(out == UNLABELLED))
  if missing:
    logging.warning("--labels=%s: %d of %d images have no label", labels_csv,
                    missing, len(paths))
  return out


def unlabelled_records(paths: list[str], *,
                       category: str = "inspect") -> list[Record]:
  """Training records of an inspected folder: label 0, defect "unknown".

  Known labels (``folder_labels``) stay with the caller, out of the
  records, so no method or pipeline warning ever acts on them.
  """
  return [Record(image_path=p, mask_path=None, label=records_lib.NORMAL,
                 defect="unknown", split="train", category=category)
          for p in paths]
