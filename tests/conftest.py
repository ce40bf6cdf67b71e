"""The shared data some tests read, or a stand-in built for them.

Tests that read ``../shared/data`` (the magnetic tile dataset, the VisA split
CSV) get it through the fixtures below and never skip:

* the data is there: the fixture returns its path;
* the data is missing and the ``CI`` environment variable is set: the test
  fails (CI must provide the data; a green run that skipped them proves
  nothing);
* the data is missing otherwise: the fixture builds a stand-in with the same
  layout and the same counts in the session's tmp dir (tiny images), so the
  reader and protocol tests still run.

``DICOFUN_TEST_SHARED_DATA`` replaces the ``../shared/data`` location (e.g.
an empty directory, to exercise the stand-ins or the CI failure).
"""

import csv
import os

import numpy as np
from PIL import Image
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.environ.get("DICOFUN_TEST_SHARED_DATA") or os.path.join(
    os.path.dirname(REPO), "shared", "data")

# The magnetic tile dataset as shipped in shared/data (MVTec layout).
MAGNETIC_TILE_COUNTS = {"good_train": 761, "good": 191, "blowhole": 115,
                        "break": 85, "crack": 57, "fray": 32, "uneven": 103}
VISA_CATEGORIES = ("candle", "capsules", "cashew", "chewinggum", "fryum",
                   "macaroni1", "macaroni2", "pcb1", "pcb2", "pcb3", "pcb4",
                   "pipe_fryum")
# fryum's rows of the official 1cls.csv: (split, label) → count.
VISA_FRYUM_COUNTS = {("train", "normal"): 450, ("test", "normal"): 50,
                     ("test", "anomaly"): 100}


def shared_or_standin(path: str) -> bool:
  """True when ``path`` exists; fails under CI, False (build one) otherwise."""
  if os.path.exists(path):
    return True
  if os.environ.get("CI"):
    pytest.fail(f"{path} is missing; CI must provide ../shared/data (tests "
                "that read it may not pass by skipping)")
  return False


def _write_magnetic_tile(root: str) -> None:
  rng = np.random.default_rng(0)
  serial = iter(range(10 ** 6))

  def image(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    # Grayscale JPEGs, as the real dataset's.
    Image.fromarray(rng.integers(0, 255, (8, 12), dtype=np.uint8)).save(path)

  for split, defect in (("train", "good"), ("test", "good")):
    n = MAGNETIC_TILE_COUNTS["good_train" if split == "train" else "good"]
    for _ in range(n):
      k = next(serial)
      image(os.path.join(root, split, defect, f"exp{k % 2}_num_{k}.jpg"))
  for defect, n in MAGNETIC_TILE_COUNTS.items():
    if defect.startswith("good"):
      continue
    for _ in range(n):
      k = next(serial)
      stem = f"exp{k % 2}_num_{k}"
      image(os.path.join(root, "test", defect, stem + ".jpg"))
      mask = np.zeros((8, 12), np.uint8)
      mask[2:5, 3:7] = 255
      mpath = os.path.join(root, "ground_truth", defect, stem + "_mask.png")
      os.makedirs(os.path.dirname(mpath), exist_ok=True)
      Image.fromarray(mask).save(mpath)


def _write_visa_csv(path: str) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  rows = []
  for category in VISA_CATEGORIES:
    counts = (VISA_FRYUM_COUNTS if category == "fryum" else
              {("train", "normal"): 2, ("test", "normal"): 1,
               ("test", "anomaly"): 1})
    normal = anomaly = 0
    for (split, label), n in counts.items():
      for _ in range(n):
        if label == "normal":
          rows.append([category, split, label,
                       f"{category}/Data/Images/Normal/{normal:04d}.JPG", ""])
          normal += 1
        else:
          rows.append([category, split, label,
                       f"{category}/Data/Images/Anomaly/{anomaly:03d}.JPG",
                       f"{category}/Data/Masks/Anomaly/{anomaly:03d}.png"])
          anomaly += 1
  with open(path, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["object", "split", "label", "image", "mask"])
    w.writerows(rows)


@pytest.fixture(scope="session")
def magnetic_tile_dir(tmp_path_factory) -> str:
  """shared/data/magnetic_tile, or a stand-in with its layout and counts."""
  real = os.path.join(SHARED_DATA, "magnetic_tile")
  if shared_or_standin(real):
    return real
  root = str(tmp_path_factory.mktemp("standin") / "magnetic_tile")
  _write_magnetic_tile(root)
  return root


@pytest.fixture(scope="session")
def visa_split_csv(tmp_path_factory) -> str:
  """shared/data/visa/split_csv/1cls.csv, or a stand-in with fryum's counts."""
  real = os.path.join(SHARED_DATA, "visa", "split_csv", "1cls.csv")
  if shared_or_standin(real):
    return real
  path = str(tmp_path_factory.mktemp("standin") / "split_csv" / "1cls.csv")
  _write_visa_csv(path)
  return path
