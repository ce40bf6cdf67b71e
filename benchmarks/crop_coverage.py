r"""How much of each anomalous mask a crop choice keeps in the frame.

For every category of the suite that has masks, and for each input choice —
the whole image squashed to S×S (``crop=1.0``), squashed to round(S/0.875)
and centre-cropped to S (``crop=0.875``, the MVTec AD habit), and an
aspect-preserving centre square (side min(H, W), what a "resize the short
side, centre-crop" pipeline keeps) — it reports the share of anomalous test
images whose whole mask stays in the frame, the share that keep any of it,
and the mean fraction of mask pixels kept. Geometry only: the crop box is
mapped back onto the original mask, so nothing is resampled.

Run::

  python benchmarks/crop_coverage.py   # writes results/crop_coverage.json

The suite (benchmarks/suite.py, ``CATEGORY_CROP``) uses these numbers to
state each category's crop.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
from PIL import Image

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, _HERE)
sys.path.insert(0, os.path.dirname(_HERE))

import _shared  # pylint: disable=wrong-import-position
import _speed  # pylint: disable=wrong-import-position
from dicofun.data import mvtec  # pylint: disable=wrong-import-position
from dicofun.data import pipeline  # pylint: disable=wrong-import-position

CATEGORIES = ("magnetic_tile", "mvtec_ad/screw", "kolektorsdd/kolektorsdd",
              "bsdata/ball_screw")
SIZE = 224  # the crop box is the same fraction of the frame at 256.
CHOICES = ("crop=1.0", "crop=0.875", "centre_square")


def crop_box(height: int, width: int, choice: str) -> tuple[float, ...]:
  """(top, left, bottom, right) in original pixel coordinates."""
  if choice == "centre_square":
    side = min(height, width)
    top, left = (height - side) / 2, (width - side) / 2
    return top, left, top + side, left + side
  frac = float(choice.split("=")[1])
  pre = pipeline.Preprocess(image_size=SIZE, crop_fraction=frac)
  r = pre.resize_size
  off = (r - SIZE) // 2
  return (off / r * height, off / r * width, (off + SIZE) / r * height,
          (off + SIZE) / r * width)


def kept_fraction(mask: np.ndarray, box: tuple[float, ...]) -> float:
  """Share of the mask's pixels whose centres lie inside ``box``."""
  ys, xs = np.nonzero(mask)
  if not len(ys):
    return 1.0
  top, left, bottom, right = box
  cy, cx = ys + 0.5, xs + 0.5
  inside = (cy >= top) & (cy <= bottom) & (cx >= left) & (cx <= right)
  return float(inside.mean())


def measure(category_dir: str) -> dict:
  records = [r for r in mvtec.read_mvtec(category_dir)
             if r.split == "test" and r.label == 1 and r.mask_path]
  kept = {c: [] for c in CHOICES}
  for r in records:
    mask = np.asarray(Image.open(r.mask_path).convert("L")) > 127
    h, w = mask.shape
    for c in CHOICES:
      kept[c].append(kept_fraction(mask, crop_box(h, w, c)))
  out = {"anomalous_with_mask": len(records)}
  for c in CHOICES:
    k = np.asarray(kept[c])
    out[c] = {"whole_mask_kept": round(float(np.mean(k >= 1.0 - 1e-9)), 4),
              "any_of_mask_kept": round(float(np.mean(k > 0)), 4),
              "mean_mask_fraction_kept": round(float(k.mean()), 4)}
  return out


def main() -> None:
  root = _shared.SHARED_DATA
  rows = []
  for cat in CATEGORIES:
    m = measure(os.path.join(root, cat))
    rows.append({"category": cat, **m})
    print(cat, json.dumps(m))
  out = {"commit": _speed.commit(), "command": _speed.command(),
         "image_size": SIZE, "rows": rows}
  with open(os.path.join(_HERE, "results", "crop_coverage.json"), "w") as f:
    json.dump(out, f, indent=1)
    f.write("\n")


if __name__ == "__main__":
  main()
