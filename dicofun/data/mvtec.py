"""Reader for the MVTec AD folder layout.

One category directory::

  <category_dir>/train/good/*.png
  <category_dir>/test/good/*.png
  <category_dir>/test/<defect>/*.png
  <category_dir>/ground_truth/<defect>/<stem>_mask.png

Any extension of ``images.IMAGE_EXTENSIONS`` (any case) is accepted for
images and masks, so MVTec-layout re-packagings of other datasets (magnetic
tile: ``.jpg`` images, ``.png`` masks) read unchanged. The synthetic generator
writes this layout too.
"""

from __future__ import annotations

import os
from typing import Optional

from absl import logging

from dicofun.data import errors
from dicofun.data import images
from dicofun.data import records as records_lib

Record = records_lib.Record


def list_images(directory: str) -> list[str]:
  """Sorted image file names (not paths) of ``directory``; hidden files skipped."""
  if not os.path.isdir(directory):
    return []
  return sorted(
      n for n in os.listdir(directory)
      if not n.startswith(".") and images.is_image_file(n)
      and os.path.isfile(os.path.join(directory, n)))


def _subdirs(directory: str) -> list[str]:
  if not os.path.isdir(directory):
    return []
  return sorted(n for n in os.listdir(directory)
                if not n.startswith(".")
                and os.path.isdir(os.path.join(directory, n)))


def mask_index(mask_dir: str) -> dict[str, str]:
  """Maps image stem → mask path for one defect's ground-truth folder.

  ``<stem>_mask.<ext>`` is the MVTec naming; a bare ``<stem>.<ext>`` is
  accepted as a fallback **(ours)**. The ``_mask`` name wins on conflict.
  """
  index: dict[str, str] = {}
  bare: dict[str, str] = {}
  for name in list_images(mask_dir):
    stem = os.path.splitext(name)[0]
    path = os.path.join(mask_dir, name)
    if stem.endswith("_mask"):
      index.setdefault(stem[:-len("_mask")], path)
    else:
      bare.setdefault(stem, path)
  for stem, path in bare.items():
    index.setdefault(stem, path)
  return index


def expected_mask_path(image_path: str) -> Optional[str]:
  """Where the MVTec layout puts the mask of a test image, or None.

  Args:
    image_path: ``.../test/<defect>/<stem>.<ext>``.

  Returns:
    ``.../ground_truth/<defect>/<stem>_mask.png`` when ``image_path`` follows
    the layout, else None. Used only to make error messages concrete.
  """
  defect_dir, name = os.path.split(image_path)
  test_dir, defect = os.path.split(defect_dir)
  root, test = os.path.split(test_dir)
  if test != "test" or not defect:
    return None
  stem = os.path.splitext(name)[0]
  return os.path.join(root, "ground_truth", defect, f"{stem}_mask.png")


def read_mvtec(category_dir: str, *, category: str = "") -> list[Record]:
  """Reads one category in the MVTec AD layout.

  Args:
    category_dir: the category folder (holding ``train/`` and ``test/``).
    category: name stored in every record (default: the folder's name).

  Returns:
    Train records (``train/good``), then test records (``good`` first, then
    the defect types alphabetically), each folder sorted by file name. Anomalous test images whose mask is missing get
    ``mask_path=None`` (logged as a warning; the pipeline raises
    ``MissingMaskError`` for them unless missing masks are allowed).

  Raises:
    DatasetNotFoundError: ``category_dir`` does not exist.
    EmptyCategoryError: no train or no test images.
  """
  category_dir = os.path.abspath(os.path.expanduser(os.fspath(category_dir)))
  if not os.path.isdir(category_dir):
    raise errors.DatasetNotFoundError(category_dir,
                                      what="MVTec-layout category directory")
  category = category or os.path.basename(category_dir)
  out: list[Record] = []

  train_dir = os.path.join(category_dir, "train")
  others = [d for d in _subdirs(train_dir) if d != records_lib.GOOD]
  if others:
    logging.warning("%s: ignoring train sub-folders %s (only train/good is "
                    "read)", category_dir, others)
  good_dir = os.path.join(train_dir, records_lib.GOOD)
  for name in list_images(good_dir):
    out.append(Record(image_path=os.path.join(good_dir, name), mask_path=None,
                      label=records_lib.NORMAL, defect=records_lib.GOOD,
                      split="train", category=category))
  if not out:
    raise errors.EmptyCategoryError(category_dir, "train",
                                    expected=f"images in {good_dir}")

  test_dir = os.path.join(category_dir, "test")
  gt_dir = os.path.join(category_dir, "ground_truth")
  n_test = 0
  missing: list[str] = []
  defects = _subdirs(test_dir)
  # test/good first, then the defect types alphabetically.
  defects.sort(key=lambda d: (d != records_lib.GOOD, d))
  for defect in defects:
    ddir = os.path.join(test_dir, defect)
    names = list_images(ddir)
    if defect == records_lib.GOOD:
      for name in names:
        out.append(Record(image_path=os.path.join(ddir, name), mask_path=None,
                          label=records_lib.NORMAL, defect=records_lib.GOOD,
                          split="test", category=category))
    else:
      masks = mask_index(os.path.join(gt_dir, defect))
      for name in names:
        mask = masks.get(os.path.splitext(name)[0])
        if mask is None:
          missing.append(os.path.join(ddir, name))
        out.append(Record(image_path=os.path.join(ddir, name), mask_path=mask,
                          label=records_lib.ANOMALOUS, defect=defect,
                          split="test", category=category))
    n_test += len(names)
  if n_test == 0:
    raise errors.EmptyCategoryError(
        category_dir, "test", expected=f"images in {test_dir}/<defect>/")
  if missing:
    logging.warning(
        "%s: %d anomalous test image(s) have no mask under %s (first: %s, "
        "expected %s)", category_dir, len(missing), gt_dir, missing[0],
        expected_mask_path(missing[0]))
  return out
