"""Reading figures back: pixels of known content (issue 25 weak tests)."""

import matplotlib
import numpy as np
from PIL import Image

# matplotlib's first and second line colours ("tab:blue", "tab:orange").
C0 = np.array(matplotlib.colors.to_rgb("C0"))
C1 = np.array(matplotlib.colors.to_rgb("C1"))


def read_rgb(path) -> np.ndarray:
  """(H, W, 3) float RGB in [0, 1] of a PNG."""
  with Image.open(path) as im:
    return np.asarray(im.convert("RGB"), np.float64) / 255.0


def colour_mask(rgb: np.ndarray, colour, tol: float = 0.06) -> np.ndarray:
  return np.abs(rgb - np.asarray(colour)).max(-1) < tol


def roc_area(rgb: np.ndarray, colour=C0) -> float:
  """The area under a ROC curve drawn in ``colour``, read from its pixels.

  A ROC curve runs from (0, 0) to (1, 1), so the bounding box of its
  pixels is the unit square; the TPR at each pixel column is its topmost
  pixel of the colour (the legend's sample line sits below the curve).
  """
  ys, xs = np.nonzero(colour_mask(rgb, colour))
  assert len(xs) > 100, "no curve drawn"
  x0, x1, y0, y1 = xs.min(), xs.max(), ys.min(), ys.max()
  assert x1 - x0 > 100 and y1 - y0 > 100, (x0, x1, y0, y1)
  top = np.full(x1 - x0 + 1, y1)
  np.minimum.at(top, xs - x0, ys)
  return float(np.mean((y1 - top) / (y1 - y0)))
