"""Reader for VisA (Zou et al., 2022), read in place from the official download.

The download holds one folder per category and the split files::

  <root>/split_csv/1cls.csv            # object,split,label,image,mask
  <root>/<category>/Data/Images/{Normal,Anomaly}/*.JPG
  <root>/<category>/Data/Masks/Anomaly/*.png

Paths in the CSV are relative to ``<root>``. The one-class split has no defect
types, so anomalous records get defect "anomaly". Masks store per-region ids;
``images.load_mask`` treats any non-zero pixel as anomalous.
"""

from __future__ import annotations

import csv
import os
from typing import Optional

from absl import logging

from dicofun.data import errors
from dicofun.data import records as records_lib

Record = records_lib.Record

ANOMALY_DEFECT = "anomaly"
_COLUMNS = ("object", "split", "label", "image", "mask")
_LABELS = {"normal": records_lib.NORMAL, "anomaly": records_lib.ANOMALOUS}
_SPLITS = ("train", "test")


def _resolve_csv(root: str, split_csv: Optional[str]) -> str:
  if split_csv is None:
    return os.path.join(root, "split_csv", "1cls.csv")
  split_csv = os.path.expanduser(os.fspath(split_csv))
  if not os.path.isabs(split_csv) and not os.path.exists(split_csv):
    split_csv = os.path.join(root, split_csv)
  if os.path.isdir(split_csv):
    split_csv = os.path.join(split_csv, "1cls.csv")
  return split_csv


def read_split_csv(path: str) -> list[dict[str, str]]:
  """Rows of a VisA split CSV as dicts with the keys of _COLUMNS.

  Raises:
    DatasetNotFoundError: the file does not exist.
    DatasetError: a column is missing.
  """
  if not os.path.isfile(path):
    raise errors.DatasetNotFoundError(path, what="VisA split file")
  with open(path, newline="", encoding="utf-8-sig") as f:
    reader = csv.DictReader(f)
    fields = [c.strip() for c in (reader.fieldnames or [])]
    missing = [c for c in _COLUMNS if c not in fields]
    if missing:
      raise errors.DatasetError(
          f"VisA split file {path!r} lacks column(s) {missing}; found "
          f"{fields}")
    rows = []
    for row in reader:
      rows.append({k.strip(): (v or "").strip() for k, v in row.items()
                   if k is not None})
  return rows


def read_visa(root: str, category: str, *,
              split_csv: Optional[str] = None) -> list[Record]:
  """Reads one VisA category.

  Args:
    root: the VisA download folder (holding ``split_csv/`` and the category
      folders).
    category: e.g. "candle", "fryum", "pcb1".
    split_csv: the split CSV (default ``<root>/split_csv/1cls.csv``); a
      relative path is taken relative to ``root`` when it does not exist as
      given; a directory means its ``1cls.csv``.

  Returns:
    Train records, then test records; within a split normals first, each
    group sorted by image path.

  Raises:
    DatasetNotFoundError: ``root`` or the CSV does not exist.
    DatasetError: unknown category (the message lists the known ones), a
      listed image is missing on disk, or a row has an unknown split/label.
  """
  root = os.path.abspath(os.path.expanduser(os.fspath(root)))
  if not os.path.isdir(root):
    raise errors.DatasetNotFoundError(root, what="VisA root directory")
  csv_path = _resolve_csv(root, split_csv)
  rows = read_split_csv(csv_path)
  known = sorted({r["object"] for r in rows})
  rows = [r for r in rows if r["object"] == category]
  if not rows:
    raise errors.DatasetError(
        f"VisA category {category!r} is not in {csv_path!r}; known "
        f"categories: {known}")
  out: list[Record] = []
  missing_masks: list[str] = []
  for r in rows:
    split, label_name = r["split"].lower(), r["label"].lower()
    if split not in _SPLITS or label_name not in _LABELS:
      raise errors.DatasetError(
          f"{csv_path!r}: row {r} has split {r['split']!r} / label "
          f"{r['label']!r}; expected split in {_SPLITS} and label in "
          f"{sorted(_LABELS)}")
    image = os.path.join(root, r["image"])
    if not os.path.isfile(image):
      raise errors.DatasetError(
          f"image {image!r} listed in {csv_path!r} does not exist; is {root!r} "
          f"the complete VisA download? ({errors.VISA_URL})")
    label = _LABELS[label_name]
    mask = None
    if label == records_lib.ANOMALOUS:
      if r["mask"] and os.path.isfile(os.path.join(root, r["mask"])):
        mask = os.path.join(root, r["mask"])
      else:
        missing_masks.append(image)
    out.append(Record(
        image_path=image, mask_path=mask, label=label,
        defect=ANOMALY_DEFECT if label else records_lib.GOOD, split=split,
        category=category))
  if missing_masks:
    logging.warning("VisA %s: %d anomalous image(s) have no mask on disk "
                    "(first: %s)", category, len(missing_masks),
                    missing_masks[0])
  out.sort(key=lambda x: (_SPLITS.index(x.split), x.label, x.image_path))
  return out
