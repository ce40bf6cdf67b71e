"""VisA reader on a fixture built from the official 1cls.csv split.

The split CSV comes from ../shared/data (or a stand-in: see conftest.py).
"""

import csv
import os
import shutil

import numpy as np
from PIL import Image
import pytest

from dicofun.data import errors
from dicofun.data import images
from dicofun.data import records as records_lib
from dicofun.data import visa

CATEGORY = "fryum"


def _csv_rows(split_csv, category=CATEGORY):
  with open(split_csv, newline="") as f:
    return [r for r in csv.DictReader(f) if r["object"] == category]


@pytest.fixture(name="visa_root")
def fixture_visa_root(tmp_path, visa_split_csv):
  """A VisA-layout root holding tiny images for one category only."""
  os.makedirs(tmp_path / "split_csv")
  shutil.copy(visa_split_csv, tmp_path / "split_csv" / "1cls.csv")
  rng = np.random.default_rng(0)
  for r in _csv_rows(visa_split_csv):
    path = tmp_path / r["image"]
    os.makedirs(path.parent, exist_ok=True)
    # The names end in .JPG; PIL picks the format from the extension.
    Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(
        path)
    if r["mask"]:
      m = np.zeros((8, 8), np.uint8)
      m[2:5, 3:6] = 1  # VisA masks hold small region ids, not 255.
      mpath = tmp_path / r["mask"]
      os.makedirs(mpath.parent, exist_ok=True)
      Image.fromarray(m).save(mpath)
  return tmp_path


def test_csv_counts_of_fryum(visa_split_csv):
  rows = _csv_rows(visa_split_csv)
  counts = {}
  for r in rows:
    counts[(r["split"], r["label"])] = counts.get((r["split"], r["label"]), 0) + 1
  assert counts == {("train", "normal"): 450, ("test", "normal"): 50,
                    ("test", "anomaly"): 100}


def test_read_visa_split_counts_equal_csv(visa_root):
  recs = visa.read_visa(str(visa_root), CATEGORY)
  rows = _csv_rows(visa_root / "split_csv" / "1cls.csv")
  want = {}
  for r in rows:
    key = (r["split"], 1 if r["label"] == "anomaly" else 0)
    want[key] = want.get(key, 0) + 1
  assert records_lib.count_by(recs, "split", "label") == want
  assert records_lib.count_by(recs, "split", "defect") == {
      ("train", "good"): 450, ("test", "good"): 50, ("test", "anomaly"): 100}
  assert {r.category for r in recs} == {CATEGORY}
  # Paths resolved under the root; every anomaly has its mask.
  assert {r.image_path for r in recs} == {
      os.path.join(str(visa_root), r["image"]) for r in rows}
  for r in recs:
    assert os.path.isfile(r.image_path)
    assert (r.mask_path is not None) == (r.label == 1)
  assert [r.split for r in recs] == ["train"] * 450 + ["test"] * 150
  assert recs == visa.read_visa(str(visa_root), CATEGORY)


def test_explicit_split_csv_and_mask_values(visa_root):
  recs = visa.read_visa(str(visa_root), CATEGORY,
                        split_csv=str(visa_root / "split_csv" / "1cls.csv"))
  anomalous = next(r for r in recs if r.label == 1)
  assert images.load_mask(anomalous.mask_path).sum() == 9


def test_unknown_category_lists_known(visa_root):
  with pytest.raises(errors.DatasetError) as e:
    visa.read_visa(str(visa_root), "bottle")
  msg = str(e.value)
  assert "bottle" in msg
  for known in ("candle", "fryum", "pcb4", "pipe_fryum", "macaroni2"):
    assert known in msg


def test_missing_root_and_csv(tmp_path):
  with pytest.raises(errors.DatasetNotFoundError) as e:
    visa.read_visa(str(tmp_path / "nope"), CATEGORY)
  assert str(tmp_path / "nope") in str(e.value)
  assert "https://github.com/amazon-science/spot-diff" in str(e.value)
  with pytest.raises(errors.DatasetNotFoundError, match="1cls.csv"):
    visa.read_visa(str(tmp_path), CATEGORY)


def test_listed_image_missing_on_disk_names_it(visa_root):
  row = _csv_rows(visa_root / "split_csv" / "1cls.csv")[7]
  os.remove(visa_root / row["image"])
  with pytest.raises(errors.DatasetError) as e:
    visa.read_visa(str(visa_root), CATEGORY)
  assert row["image"] in str(e.value)
  assert not isinstance(e.value, errors.DatasetNotFoundError)
