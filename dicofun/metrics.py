"""Anomaly-detection metrics (METHODS §4), pure numpy.

Image-level metrics (a few hundred scores) call scikit-learn directly.
Pixel-level metrics see every test pixel at the evaluation size (tens of
millions for a VisA category), so they are computed here from one sort of all
pixel scores, walked in fixed-size chunks from the highest score down:

* ``pixel_auroc``: trapezoidal area under the ROC curve through every distinct
  score (tied scores form one point), as ``sklearn.metrics.roc_auc_score``.
* ``pixel_ap``: ``sum_k (R_k - R_{k-1}) P_k`` over the same points, as
  ``sklearn.metrics.average_precision_score``.
* ``aupro``: the per-region overlap (PRO) curve integrated over the false
  positive rate from 0 to ``fpr_limit`` and divided by ``fpr_limit``.

Memory: besides the caller's arrays, the pixel metrics hold a float32 copy of
the scores (4 bytes/pixel), an int32 region id per pixel (4 bytes/pixel), the
int64 sort permutation (8 bytes/pixel) and O(chunk) temporaries — about 16
bytes per pixel plus a few MiB, never a pixels × thresholds matrix (measured
with tracemalloc on 40×256×256 random maps: 19 bytes/pixel peak for all three
metrics, against 70 for sklearn's roc_auc_score + average_precision_score on
the flattened arrays, which also keep one curve point per distinct score).
"""

from __future__ import annotations

from typing import Iterator, Optional

from absl import logging
import numpy as np
from scipy import ndimage
from sklearn import metrics as skm

# Pixels processed per step of the walk down the sorted scores; bounds the
# temporaries to a few MiB whatever the number of pixels.
_CHUNK = 1 << 16

# 8-connectivity: two defect pixels touching by a corner belong to the same
# ground-truth region, as in the MVTec AD evaluation code.
_STRUCTURE = np.ones((3, 3), dtype=bool)


# ----------------------------------------------------------------------------
# Image level.


def image_auroc(scores: np.ndarray, labels: np.ndarray) -> float:
  """Image-level AUROC.

  Args:
    scores: (N,) anomaly scores, higher = more anomalous.
    labels: (N,) 0 normal / 1 anomalous.

  Returns:
    The area under the ROC curve.
  """
  scores, labels = _image_inputs(scores, labels)
  return float(skm.roc_auc_score(labels, scores))


def image_f1_max(scores: np.ndarray, labels: np.ndarray) -> float:
  """Maximum F1 over all thresholds of the image scores.

  Args:
    scores: (N,) anomaly scores.
    labels: (N,) 0 normal / 1 anomalous.

  Returns:
    ``max_t F1(score >= t)`` over the thresholds of
    ``sklearn.metrics.precision_recall_curve``.
  """
  f1, _ = _f1_curve(scores, labels)
  return float(f1.max())


def is_anomalous(scores: np.ndarray, threshold: float) -> np.ndarray:
  """The decision rule of every threshold in dicofun: ``score >= threshold``.

  ``f1_optimal_threshold`` returns the lowest score of the images it calls
  anomalous (sklearn's ``precision_recall_curve`` convention), so the image
  that defines the threshold, and any image tied with it, is anomalous.

  Args:
    scores: anomaly scores (any shape).
    threshold: the decision threshold.

  Returns:
    Boolean array of ``scores``'s shape, True = anomalous.
  """
  return np.asarray(scores) >= threshold


def f1_optimal_threshold(scores: np.ndarray, labels: np.ndarray) -> float:
  """The score threshold with the highest F1 (anomalous if ``>=`` it).

  The decision that reaches that F1 is ``is_anomalous(scores, threshold)``.

  Args:
    scores: (N,) anomaly scores.
    labels: (N,) 0 normal / 1 anomalous.

  Returns:
    The threshold; ties between thresholds go to the highest one.
  """
  f1, thresholds = _f1_curve(scores, labels)
  # The last precision/recall point (recall 0) has no threshold.
  f1 = f1[:-1]
  best = np.flatnonzero(f1 == f1.max())
  return float(thresholds[best].max())


def percentile_threshold(normal_scores: np.ndarray, q: float = 99) -> float:
  """A threshold from normal scores alone: their ``q``-th percentile.

  Args:
    normal_scores: scores of (presumed) normal images.
    q: percentile in [0, 100].

  Returns:
    ``np.percentile(normal_scores, q)`` (linear interpolation); decide with
    ``is_anomalous`` (``score >= threshold``).
  """
  normal_scores = np.asarray(normal_scores, np.float64).reshape(-1)
  if normal_scores.size == 0:
    raise ValueError("percentile_threshold needs at least one score")
  return float(np.percentile(normal_scores, q))


# Iglewicz & Hoaglin's modified z-score cut-off; 1.4826 turns the MAD into a
# standard deviation for normally distributed scores, 1.253314 the mean
# absolute deviation (their fallback when the MAD is 0).
ROBUST_Z = 3.5
MAD_TO_STD = 1.4826
MEAN_AD_TO_STD = 1.253314
# Scores are float32 computations: a spread below this fraction of the
# largest |score| is rounding, not spread **(ours)**.
SPREAD_FLOOR = 1e-6


def robust_location_spread(values: np.ndarray) -> tuple[float, float]:
  """(median, spread) of ``values``: spread = 1.4826 · MAD, or 1.253314 ·
  the mean absolute deviation from the median when the MAD is 0 (more than
  half the values tied), floored at ``SPREAD_FLOOR`` · max |value| (and at
  the smallest positive float), so it is never 0."""
  x = np.asarray(values, np.float64).reshape(-1)
  med = float(np.median(x))
  dev = np.abs(x - med)
  spread = MAD_TO_STD * float(np.median(dev))
  if spread == 0.0:
    spread = MEAN_AD_TO_STD * float(np.mean(dev))
  floor = max(SPREAD_FLOOR * float(np.max(np.abs(x))),
              float(np.finfo(np.float64).tiny))
  return med, max(spread, floor)


def robust_threshold(scores: np.ndarray, *,
                     contamination: Optional[float] = None,
                     z: float = ROBUST_Z) -> tuple[float, str]:
  """A decision threshold from unlabelled scores alone **(ours)**.

  Without a hint: ``median + z · spread`` with spread = 1.4826 · MAD (MAD =
  median absolute deviation from the median), i.e. the images whose
  modified z-score reaches ``z`` = 3.5 are flagged. The median and MAD
  ignore the flagged tail, so a few anomalies in the folder do not drag the
  threshold up with them. When the MAD is 0 (more than half the scores
  tied), the spread is 1.253314 · the mean absolute deviation from the
  median (Iglewicz & Hoaglin's fallback). The spread is floored at
  ``SPREAD_FLOOR`` · max |score| (and at the smallest positive float), so
  the threshold always lies above the median: scores without spread
  (identical, or equal up to float32 rounding) flag none.

  With ``contamination`` = c in (0, 1): the ``1 − c`` quantile of the scores
  (linear interpolation), i.e. about the top c fraction is flagged.

  An image is flagged when its score is ``>=`` the threshold
  (``is_anomalous``, the one decision rule of dicofun).

  Args:
    scores: (N,) image scores, N >= 1.
    contamination: optional expected fraction of anomalies.
    z: modified z-score cut-off of the robust rule.

  Returns:
    (threshold, the rule in words).
  """
  scores = np.asarray(scores, np.float64).reshape(-1)
  if scores.size == 0:
    raise ValueError("robust_threshold needs at least one score")
  if contamination is not None:
    if not 0.0 < contamination < 1.0:
      raise ValueError(f"contamination hint must be in (0, 1), got "
                       f"{contamination}")
    q = 1.0 - float(contamination)
    return (float(np.quantile(scores, q)),
            f"{q:.4g} quantile of the scores (contamination hint "
            f"{contamination:g})")
  med, spread = robust_location_spread(scores)
  return (med + z * spread,
          f"median + {z:g} x 1.4826 x MAD of the scores (robust outlier "
          f"rule; 1.2533 x mean deviation when the MAD is 0)")


def _image_inputs(scores, labels) -> tuple[np.ndarray, np.ndarray]:
  scores = np.asarray(scores, np.float64).reshape(-1)
  labels = np.asarray(labels).reshape(-1).astype(int)
  if scores.shape != labels.shape:
    raise ValueError(f"{scores.shape[0]} scores but {labels.shape[0]} labels")
  if not np.all(np.isfinite(scores)):
    raise ValueError("image scores contain NaN or inf")
  if len(np.unique(labels)) != 2:
    raise ValueError("image metrics need both normal and anomalous images")
  return scores, labels


def _f1_curve(scores, labels) -> tuple[np.ndarray, np.ndarray]:
  scores, labels = _image_inputs(scores, labels)
  precision, recall, thresholds = skm.precision_recall_curve(labels, scores)
  denom = precision + recall
  f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(denom),
                 where=denom > 0)
  return f1, thresholds


# ----------------------------------------------------------------------------
# Pixel level.


class _Pixels:
  """All evaluated pixels: float32 scores, int32 region ids, one sort."""

  def __init__(self, maps: np.ndarray, masks: np.ndarray, *,
               num_thresholds: Optional[int] = None):
    maps = np.asarray(maps)
    masks = np.asarray(masks)
    if maps.ndim == 2:
      maps, masks = maps[None], masks[None]
    if maps.shape != masks.shape or maps.ndim != 3:
      raise ValueError(f"maps {maps.shape} and masks {masks.shape} must both "
                       "be (N, H, W)")
    n, h, w = maps.shape
    hw = h * w
    self.scores = np.empty(n * hw, np.float32)
    # Region ids: 0 = normal pixel, 1..R = connected defect regions (numbered
    # across all images, so a region never spans two images).
    self.region = np.empty(n * hw, np.int32)
    sizes = [np.zeros(1, np.int64)]  # index 0 = normal pixels, unused
    offset = 0
    for i in range(n):  # per image: temporaries stay O(H·W)
      m = np.asarray(maps[i], np.float32)
      if not np.all(np.isfinite(m)):
        raise ValueError(f"anomaly map {i} contains NaN or inf")
      self.scores[i * hw:(i + 1) * hw] = m.reshape(-1)
      lab, num = ndimage.label(np.asarray(masks[i]) > 0.5, structure=_STRUCTURE)
      lab = lab.astype(np.int32, copy=False).reshape(-1)
      if num:
        sizes.append(np.bincount(lab, minlength=num + 1)[1:])
        lab[lab > 0] += offset
      self.region[i * hw:(i + 1) * hw] = lab
      offset += num
    self.num_regions = offset
    self.region_sizes = np.concatenate(sizes)  # [0, size_1, ..., size_R]
    self.num_positive = int(self.region_sizes[1:].sum())
    self.num_negative = int(self.scores.size - self.num_positive)
    if num_thresholds is not None:
      self._quantize(int(num_thresholds))
    self.order = np.argsort(self.scores)  # ascending; walked from the end

  def _quantize(self, num_thresholds: int) -> None:
    """Keeps only ``num_thresholds`` evenly spaced thresholds (ties)."""
    if num_thresholds < 2:
      raise ValueError("num_thresholds must be >= 2")
    lo, hi = float(self.scores.min()), float(self.scores.max())
    thresholds = np.linspace(lo, hi, num_thresholds)
    # A pixel passes threshold j iff its quantised score is >= j, so the
    # exact walk over quantised scores visits exactly these thresholds.
    for a in range(0, self.scores.size, _CHUNK):
      s = self.scores[a:a + _CHUNK]
      s[:] = np.searchsorted(thresholds, s, side="right") - 1

  def walk(self) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Curve points, from the highest threshold down, a chunk at a time.

    Yields:
      (tp, fp, pro): cumulative true positives, false positives (int64) and
      mean per-region overlap (float64) of ``score >= t`` for every distinct
      score ``t`` in the chunk (one point per group of tied scores).
    """
    total = self.scores.size
    if self.num_regions:
      weight = np.zeros(self.num_regions + 1, np.float64)
      weight[1:] = 1.0 / (self.region_sizes[1:] * float(self.num_regions))
    else:
      weight = np.zeros(1, np.float64)
    tp = fp = 0
    pro = 0.0
    for stop in range(total, 0, -_CHUNK):
      start = max(0, stop - _CHUNK)
      idx = self.order[start:stop][::-1]
      s = self.scores[idx]
      r = self.region[idx]
      pos = r > 0
      tp_c = np.cumsum(pos, dtype=np.int64) + tp
      fp_c = np.arange(1, idx.size + 1, dtype=np.int64) - (tp_c - tp) + fp
      pro_c = np.cumsum(weight[r]) + pro
      # A point closes a group of ties: the next (lower) score differs.
      nxt = self.scores[self.order[start - 1]] if start > 0 else None
      last_closes = nxt is None or nxt != s[-1]
      ends = np.flatnonzero(s[:-1] != s[1:])
      if last_closes:
        ends = np.append(ends, idx.size - 1)
      tp, fp, pro = int(tp_c[-1]), int(fp_c[-1]), float(pro_c[-1])
      if ends.size:
        yield tp_c[ends], fp_c[ends], pro_c[ends]


def _check_pixels(px: _Pixels, name: str) -> bool:
  if px.num_positive == 0 or px.num_negative == 0:
    logging.warning("%s undefined: %d anomalous and %d normal pixels", name,
                    px.num_positive, px.num_negative)
    return False
  return True


def _auroc_ap_aupro(px: _Pixels, fpr_limit: float
                    ) -> tuple[float, float, float]:
  """One walk over the sorted pixels for all three pixel metrics."""
  if not 0 < fpr_limit <= 1:
    raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}")
  p, n = float(px.num_positive), float(px.num_negative)
  roc_area = ap = pro_area = 0.0
  prev_tp = prev_fp = 0.0
  prev_x = prev_y = 0.0  # PRO curve starts at (FPR 0, PRO 0)
  fp_limit = fpr_limit * n  # the FPR limit in normal-pixel counts
  pro_done = False
  for tp, fp, pro in px.walk():
    tp = tp.astype(np.float64)
    fp = fp.astype(np.float64)
    tp0 = np.concatenate([[prev_tp], tp[:-1]])
    fp0 = np.concatenate([[prev_fp], fp[:-1]])
    roc_area += float(np.sum((fp - fp0) * (tp + tp0))) / 2
    ap += float(np.sum((tp - tp0) * (tp / (tp + fp))))
    if not pro_done:
      # Integrated over false-positive counts (exact integers) and divided by
      # the count at the limit at the end, so a perfect map gives exactly 1.
      x = fp
      # Once every defect pixel is in, PRO is exactly 1 (the float sum of
      # the 1/(size·R) weights may miss it by an ulp either way).
      y = np.where(tp == p, 1.0, np.minimum(pro, 1.0))
      x0 = np.concatenate([[prev_x], x[:-1]])
      y0 = np.concatenate([[prev_y], y[:-1]])
      inside = x <= fp_limit
      pro_area += float(np.sum(((x - x0) * (y + y0))[inside])) / 2
      if not inside.all():
        # First segment crossing the limit: interpolate PRO at exactly it.
        k = int(np.argmin(inside))
        t = (fp_limit - x0[k]) / (x[k] - x0[k])
        y_lim = y0[k] + t * (y[k] - y0[k])
        pro_area += (fp_limit - x0[k]) * (y0[k] + y_lim) / 2
        pro_done = True
      prev_x, prev_y = float(x[-1]), float(y[-1])
    prev_tp, prev_fp = float(tp[-1]), float(fp[-1])
  auroc = roc_area / (p * n)
  ap = ap / p
  # PRO is a mean of overlaps (<= 1), so the normalised area is <= 1 up to
  # float rounding of the cumulative weights; clip that rounding away.
  aupro_ = min(pro_area / fp_limit, 1.0)
  return float(auroc), float(ap), float(aupro_)


def pixel_metrics(maps: np.ndarray, masks: np.ndarray, *,
                  fpr_limit: float = 0.3,
                  num_thresholds: Optional[int] = None) -> dict[str, float]:
  """pixel_auroc, pixel_ap and aupro from a single sort of the pixels.

  Args:
    maps: (N, H, W) anomaly maps, higher = more anomalous.
    masks: (N, H, W) ground truth; pixels > 0.5 are anomalous.
    fpr_limit: upper FPR limit of the AUPRO integral.
    num_thresholds: None for the exact curves; else AUPRO and the others use
      only this many evenly spaced thresholds between the lowest and highest
      score **(ours)**.

  Returns:
    {"pixel_auroc", "pixel_ap", "aupro"}; empty if the pixels hold only one
    class (the metrics are then undefined; a warning is logged).
  """
  px = _Pixels(maps, masks, num_thresholds=num_thresholds)
  if not _check_pixels(px, "pixel metrics"):
    return {}
  auroc, ap, pro = _auroc_ap_aupro(px, fpr_limit)
  return {"pixel_auroc": auroc, "pixel_ap": ap, "aupro": pro}


def pixel_auroc(maps: np.ndarray, masks: np.ndarray) -> float:
  """Pixel-level AUROC over all pixels of all maps.

  Equal to ``sklearn.metrics.roc_auc_score(masks.ravel() > 0.5, maps.ravel())``
  (scores compared in float32) with ~16 bytes of memory per pixel.

  Args:
    maps: (N, H, W) anomaly maps.
    masks: (N, H, W) ground truth; pixels > 0.5 are anomalous.

  Returns:
    The AUROC (NaN, with a warning, when only one class is present).
  """
  px = _Pixels(maps, masks)
  if not _check_pixels(px, "pixel_auroc"):
    return float("nan")
  return _auroc_ap_aupro(px, 1.0)[0]


def pixel_ap(maps: np.ndarray, masks: np.ndarray) -> float:
  """Pixel-level average precision over all pixels of all maps.

  Equal to ``sklearn.metrics.average_precision_score`` on the flattened
  pixels (scores compared in float32), with ~16 bytes of memory per pixel.

  Args:
    maps: (N, H, W) anomaly maps.
    masks: (N, H, W) ground truth; pixels > 0.5 are anomalous.

  Returns:
    The AP (NaN, with a warning, when only one class is present).
  """
  px = _Pixels(maps, masks)
  if not _check_pixels(px, "pixel_ap"):
    return float("nan")
  return _auroc_ap_aupro(px, 1.0)[1]


def aupro(maps: np.ndarray, masks: np.ndarray, *, fpr_limit: float = 0.3,
          num_thresholds: Optional[int] = None) -> float:
  """Normalised area under the per-region-overlap curve up to ``fpr_limit``.

  Ground-truth regions are the 8-connected components of each mask (a region
  never spans two images). At threshold ``t`` the PRO is the mean over all
  regions of the fraction of the region's pixels with ``score >= t``; the FPR
  is the fraction of normal pixels (mask 0, in every image, anomalous images
  included) with ``score >= t``. The exact curve has one point per distinct
  score (ties form one point) and starts at (0, 0); it is integrated with the
  trapezoidal rule from FPR 0 to ``fpr_limit``, interpolating linearly at
  exactly ``fpr_limit``, and divided by ``fpr_limit``. A perfect map gives 1;
  the result never exceeds 1.

  Args:
    maps: (N, H, W) anomaly maps.
    masks: (N, H, W) ground truth; pixels > 0.5 are anomalous.
    fpr_limit: integration limit in (0, 1] (0.3 in METHODS §4).
    num_thresholds: None for the exact curve; else only this many evenly
      spaced thresholds between the lowest and highest score **(ours)**.

  Returns:
    AUPRO in [0, 1] (NaN, with a warning, when there is no defect region or
    no normal pixel).
  """
  px = _Pixels(maps, masks, num_thresholds=num_thresholds)
  if not _check_pixels(px, "aupro"):
    return float("nan")
  return _auroc_ap_aupro(px, fpr_limit)[2]


def pixel_roc_curve(maps: np.ndarray, masks: np.ndarray, *,
                    max_points: int = 2000) -> tuple[np.ndarray, np.ndarray]:
  """Pixel ROC curve (FPR, TPR), thinned to at most ~``max_points`` points.

  Args:
    maps: (N, H, W) anomaly maps.
    masks: (N, H, W) ground truth; pixels > 0.5 are anomalous.
    max_points: points kept for plotting (evenly spaced in walk order; the
      end points are always kept).

  Returns:
    (fpr, tpr) arrays starting at (0, 0) and ending at (1, 1); empty arrays
    when only one class is present.
  """
  px = _Pixels(maps, masks)
  if not _check_pixels(px, "pixel ROC"):
    return np.zeros(0), np.zeros(0)
  step = max(1, px.scores.size // max(1, max_points))
  fprs, tprs = [np.zeros(1)], [np.zeros(1)]
  for tp, fp, _ in px.walk():
    fprs.append(fp[::step] / px.num_negative)
    tprs.append(tp[::step] / px.num_positive)
  fprs.append(np.ones(1))
  tprs.append(np.ones(1))
  return np.concatenate(fprs), np.concatenate(tprs)
