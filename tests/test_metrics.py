"""Metrics against scikit-learn, brute force and hand-computed values."""

import tracemalloc

import numpy as np
import pytest
from scipy import ndimage
from sklearn import metrics as skm

from dicofun import evaluate
from dicofun import results as results_lib
from dicofun import metrics


def _pixels(seed=0, n=5, size=24, ties=True):
  rng = np.random.default_rng(seed)
  maps = rng.random((n, size, size)).astype(np.float32)
  if ties:
    maps = np.round(maps * 40) / 40
  masks = np.zeros((n, size, size), np.uint8)
  masks[1, 3:9, 4:10] = 1
  masks[2, 10:20, 10:12] = 1
  masks[2, 0, 0] = 1
  masks[n - 1, 5, 5] = 1
  maps = (maps + 0.3 * masks).astype(np.float32)
  return maps, masks


# ---------------------------------------------------------------- image level


def test_image_auroc_matches_sklearn():
  rng = np.random.default_rng(1)
  labels = rng.integers(0, 2, 200)
  scores = np.round(rng.normal(size=200) + labels, 1)  # with ties
  assert metrics.image_auroc(scores, labels) == pytest.approx(
      skm.roc_auc_score(labels, scores), abs=1e-12)


def _brute_f1(scores, labels):
  best, best_t = 0.0, None
  for t in np.unique(scores):
    pred = scores >= t
    tp = np.sum(pred & (labels == 1))
    fp = np.sum(pred & (labels == 0))
    fn = np.sum(~pred & (labels == 1))
    f1 = 2 * tp / (2 * tp + fp + fn)
    if f1 >= best:  # ">=": ties go to the highest threshold (t ascends)
      best, best_t = f1, t
  return best, best_t


def test_image_f1_max_and_threshold_match_brute_force():
  rng = np.random.default_rng(2)
  labels = rng.integers(0, 2, 150)
  scores = np.round(rng.normal(size=150) + 1.2 * labels, 1)
  best, best_t = _brute_f1(scores, labels)
  assert metrics.image_f1_max(scores, labels) == pytest.approx(best, abs=1e-12)
  assert metrics.f1_optimal_threshold(scores, labels) == best_t


def test_f1_hand_case():
  # Separable scores: F1-max 1.
  scores = np.array([0.1, 0.4, 0.35 + 0.5, 0.8])
  labels = np.array([0, 0, 1, 1])
  assert metrics.image_f1_max(scores, labels) == pytest.approx(1.0)
  scores = np.array([0.1, 0.4, 0.5, 0.8])
  labels = np.array([0, 1, 0, 1])
  # t=.8: tp 1, fp 0, fn 1 → 2/3; t=.5: tp 1, fp 1, fn 1 → 1/2;
  # t=.4: tp 2, fp 1, fn 0 → 4/5; t=.1: tp 2, fp 2 → 2/3. Best 4/5 at .4.
  assert metrics.image_f1_max(scores, labels) == pytest.approx(0.8)
  assert metrics.f1_optimal_threshold(scores, labels) == pytest.approx(0.4)


def test_percentile_threshold():
  assert metrics.percentile_threshold(np.arange(101), q=99) == 99.0
  assert metrics.percentile_threshold(np.arange(11.0), q=50) == 5.0


def test_image_metrics_reject_one_class():
  with pytest.raises(ValueError):
    metrics.image_auroc(np.ones(3), np.zeros(3))


# ---------------------------------------------------------------- pixel level


@pytest.mark.parametrize("ties", [False, True])
def test_pixel_auroc_and_ap_match_sklearn(ties, monkeypatch):
  maps, masks = _pixels(ties=ties)
  y, s = masks.ravel() > 0.5, maps.ravel()
  ref_auc = skm.roc_auc_score(y, s)
  ref_ap = skm.average_precision_score(y, s)
  assert metrics.pixel_auroc(maps, masks) == pytest.approx(ref_auc, abs=1e-12)
  assert metrics.pixel_ap(maps, masks) == pytest.approx(ref_ap, abs=1e-12)
  # Tiny chunks: tie groups straddle chunk borders.
  monkeypatch.setattr(metrics, "_CHUNK", 7)
  assert metrics.pixel_auroc(maps, masks) == pytest.approx(ref_auc, abs=1e-12)
  assert metrics.pixel_ap(maps, masks) == pytest.approx(ref_ap, abs=1e-12)


def _brute_aupro(maps, masks, fpr_limit):
  """Independent reference: one full pass over the pixels per threshold."""
  regions = []
  normal = []
  for m, g in zip(maps, masks):
    lab, num = ndimage.label(g > 0.5, structure=np.ones((3, 3)))
    regions += [(m[lab == r]) for r in range(1, num + 1)]
    normal.append(m[lab == 0])
  normal = np.concatenate(normal)
  xs, ys = [0.0], [0.0]
  for t in np.unique(maps)[::-1]:
    xs.append(np.mean(normal >= t))
    ys.append(np.mean([np.mean(r >= t) for r in regions]))
  xs, ys = np.array(xs), np.array(ys)
  y_lim = np.interp(fpr_limit, xs, ys)  # xs is non-decreasing
  keep = xs < fpr_limit
  x = np.concatenate([xs[keep], [fpr_limit]])
  y = np.concatenate([ys[keep], [y_lim]])
  return np.trapezoid(y, x) / fpr_limit


@pytest.mark.parametrize("limit", [0.3, 0.05, 1.0])
def test_aupro_matches_brute_force(limit, monkeypatch):
  maps, masks = _pixels(n=3, size=16)
  ref = _brute_aupro(maps, masks, limit)
  assert metrics.aupro(maps, masks, fpr_limit=limit) == pytest.approx(
      ref, abs=1e-9)
  monkeypatch.setattr(metrics, "_CHUNK", 5)
  assert metrics.aupro(maps, masks, fpr_limit=limit) == pytest.approx(
      ref, abs=1e-9)


def _hand_case():
  """One 4×4 image, two 8-connected regions of 2 pixels, 12 normal pixels.

  mask        scores
  1 0 0 0     .90 .80 .60 .40
  0 1 0 0     .10 .50 .10 .10
  0 0 0 0     .10 .10 .10 .10
  0 0 1 1     .10 .35 .70 .35

  Region A = {(0,0), (1,1)} (touching by a corner: one region under
  8-connectivity, two under 4-connectivity); region B = {(3,2), (3,3)}.
  Each region pixel adds 1/(2 regions · 2 pixels) = 0.25 to the PRO; each
  normal pixel adds 1/12 to the FPR. Walking the thresholds down:

    t=.90  A    → (FPR 0,    PRO .25)
    t=.80  n    → (1/12, .25)
    t=.70  B    → (1/12, .50)
    t=.60  n    → (2/12, .50)
    t=.50  A    → (2/12, .75)
    t=.40  n    → (3/12, .75)
    t=.35  n, B (tied) → (4/12, 1.0)   sloped segment
    t=.10  8 n  → (1, 1)

  Area to FPR 0.3: (.25 + .50 + .75)/12 = 0.125 up to 3/12, then the sloped
  segment from (.25, .75) to (1/3, 1) reaches PRO .75 + .25·(.05/(1/12)) = .9
  at 0.3: .05·(.75 + .9)/2 = 0.04125. Total 0.16625; / 0.3 = 133/240.
  To FPR 0.2: (.25 + .5)/12 + .75·(.2 − 2/12) = .0875; / 0.2 = 7/16.
  To FPR 1: .125 + (1/12)(.75 + 1)/2 + 8/12 = 83/96.
  """
  mask = np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0], [0, 0, 1, 1]],
                  np.uint8)
  amap = np.array([[.90, .80, .60, .40], [.10, .50, .10, .10],
                   [.10, .10, .10, .10], [.10, .35, .70, .35]], np.float32)
  return amap[None], mask[None]


def test_aupro_hand_case():
  maps, masks = _hand_case()
  value = metrics.aupro(maps, masks)
  assert value == pytest.approx(133 / 240, abs=1e-9)
  # Not the unnormalised area, not another limit.
  assert value != pytest.approx(0.16625, abs=1e-3)
  at_02 = metrics.aupro(maps, masks, fpr_limit=0.2)
  assert at_02 == pytest.approx(7 / 16, abs=1e-9)
  assert abs(at_02 - value) > 0.1
  assert metrics.aupro(maps, masks, fpr_limit=1.0) == pytest.approx(
      83 / 96, abs=1e-9)
  # Two copies of the image give the same curve (regions stay per image).
  twice = metrics.aupro(np.concatenate([maps, maps]),
                        np.concatenate([masks, masks]))
  assert twice == pytest.approx(133 / 240, abs=1e-9)


def test_aupro_perfect_map_is_one_and_never_above_one():
  _, masks = _pixels(n=4, size=32)
  perfect = masks.astype(np.float32) + 0.0
  assert metrics.aupro(perfect, masks) == 1.0
  # Perfect with noise inside the normal and defect ranges.
  rng = np.random.default_rng(3)
  noisy = np.where(masks > 0, 2 + rng.random(masks.shape),
                   rng.random(masks.shape)).astype(np.float32)
  assert metrics.aupro(noisy, masks) == 1.0
  # Many regions of awkward sizes: float sums of 1/(size·R) would exceed 1
  # without the clip.
  many = np.zeros((1, 60, 60), np.uint8)
  for i in range(0, 60, 4):
    for j in range(0, 60, 3):
      many[0, i:i + 1 + (i + j) % 3, j:j + 2] = 1
  assert metrics.aupro(many.astype(np.float32), many) <= 1.0
  assert metrics.aupro(many.astype(np.float32), many) == pytest.approx(1.0)
  for seed in range(3):
    maps, masks = _pixels(seed=seed, n=3, size=16)
    assert metrics.aupro(maps, masks) == pytest.approx(
        _brute_aupro(maps, masks, 0.3), abs=1e-9)
    rnd = np.random.default_rng(seed).random(maps.shape)
    assert metrics.aupro(rnd, masks) == pytest.approx(
        _brute_aupro(rnd, masks, 0.3), abs=1e-9)
  # All scores tied: one sloped segment from (0, 0) to (1, 1).
  flat = np.zeros(masks.shape, np.float32)
  assert metrics.aupro(flat, masks) == pytest.approx(0.15, abs=1e-12)


def test_aupro_num_thresholds_approximates_exact():
  maps, masks = _pixels(n=3, size=16, ties=False)
  exact = metrics.aupro(maps, masks)
  approx = metrics.aupro(maps, masks, num_thresholds=2000)
  assert approx == pytest.approx(exact, abs=0.01)
  assert approx <= 1.0


def test_pixel_metrics_one_class_is_nan():
  maps, _ = _pixels(n=3, size=8)
  zeros = np.zeros(maps.shape, np.uint8)
  assert np.isnan(metrics.pixel_auroc(maps, zeros))
  assert np.isnan(metrics.aupro(maps, zeros))
  assert metrics.pixel_metrics(maps, zeros) == {}


def test_pixel_metrics_memory_is_bounded():
  rng = np.random.default_rng(0)
  n, size = 40, 256
  maps = rng.random((n, size, size), dtype=np.float32)
  masks = np.zeros((n, size, size), np.uint8)
  masks[::2, 100:140, 60:90] = 1
  masks[1::4, 10:14, 10:200] = 1
  num_pixels = maps.size
  tracemalloc.start()
  try:
    out = metrics.pixel_metrics(maps, masks)
    _, peak = tracemalloc.get_traced_memory()
  finally:
    tracemalloc.stop()
  # Random maps: pixel AUROC 1/2; every region's overlap equals the FPR at
  # each threshold, so AUPRO = (1/0.3) ∫_0^0.3 x dx = 0.15. 2.6M pixels
  # put both within ±0.01.
  assert out["pixel_auroc"] == pytest.approx(0.5, abs=0.01)
  assert out["aupro"] == pytest.approx(0.15, abs=0.01)
  # ~16 bytes per pixel (float32 scores, int32 regions, int64 order) plus
  # fixed-size chunks; a pixels × thresholds matrix would be ~N² bytes.
  assert peak < 24 * num_pixels, peak / num_pixels


# ---------------------------------------------------------------- evaluate


def test_compute_metrics_views():
  maps, masks = _pixels(n=6, size=16)
  labels = (masks.reshape(6, -1).max(1) > 0).astype(int)
  scores = maps.reshape(6, -1).max(1)
  has_mask = np.array([True, True, True, False, True, True])
  out = evaluate.compute_metrics(image_scores=scores, image_labels=labels,
                                 maps=maps, masks=masks, has_mask=has_mask)
  assert set(out) == set(evaluate.METRIC_NAMES)
  keep = has_mask
  assert out["pixel_auroc"] == pytest.approx(
      skm.roc_auc_score(masks[keep].ravel() > 0, maps[keep].ravel()),
      abs=1e-12)
  assert out["aupro"] == pytest.approx(metrics.aupro(maps[keep], masks[keep]))
  assert out["image_auroc"] == pytest.approx(
      skm.roc_auc_score(labels, scores))
  image_only = evaluate.compute_metrics(image_scores=scores,
                                        image_labels=labels, masks=masks)
  assert set(image_only) == {"image_auroc", "image_f1_max"}


def test_image_auroc_by_defect_hand_values():
  # Normals 0.1-0.4; crack 0.35 beats 3 of 4 and 0.5 all 4 → 7/8;
  # break 0.05 beats none and 0.9 all 4 → 4/8. Pooled: 11/16.
  scores = [0.1, 0.2, 0.3, 0.4, 0.35, 0.5, 0.05, 0.9]
  labels = [0, 0, 0, 0, 1, 1, 1, 1]
  defects = ["good"] * 4 + ["crack", "crack", "break", "break"]
  by = evaluate.image_auroc_by_defect(scores, labels, defects)
  assert list(by) == ["break", "crack"]
  assert by["crack"] == {"image_auroc": pytest.approx(7 / 8), "count": 2}
  assert by["break"] == {"image_auroc": pytest.approx(0.5), "count": 2}
  out = evaluate.compute_metrics(image_scores=scores, image_labels=labels,
                                 defects=defects)
  assert out["image_auroc"] == pytest.approx(11 / 16)
  assert out["by_defect"] == by
  # One defect type repeats the pooled AUROC: no by_defect entry.
  one = evaluate.compute_metrics(image_scores=scores, image_labels=labels,
                                 defects=["good"] * 4 + ["crack"] * 4)
  assert "by_defect" not in one
  assert "by_defect" not in evaluate.compute_metrics(image_scores=scores,
                                                     image_labels=labels)
  with pytest.raises(ValueError, match="3 defect names for 8 scores"):
    evaluate.image_auroc_by_defect(scores, labels, ["good"] * 3)
  table = results_lib.metrics_table({"test": out})
  assert "| view | break | crack |" in table
  assert "| test | 0.5000 (2) | 0.8750 (2) |" in table


def test_flat_metrics_joins_nested_entries():
  flat = evaluate.flat_metrics({"image_auroc": 0.5, "error": "x",
                                "by_defect": {"crack": {"image_auroc": 0.75,
                                                        "count": 2}}})
  assert flat == {"image_auroc": 0.5, "by_defect.crack.image_auroc": 0.75,
                  "by_defect.crack.count": 2.0}


def test_evaluator_registry_is_pluggable(monkeypatch):
  def _count(*, image_labels, **unused):
    yield "num_anomalous", float(np.sum(image_labels))
  monkeypatch.setitem(evaluate.EVALUATORS, "count", _count)
  out = evaluate.compute_metrics(image_scores=[0.1, 0.9, 0.8],
                                 image_labels=[0, 1, 1],
                                 evaluators=("image", "count"))
  assert out["num_anomalous"] == 2.0
  assert out["image_auroc"] == 1.0
  with pytest.raises(KeyError):
    evaluate.compute_metrics(image_scores=[0.1, 0.9], image_labels=[0, 1],
                             evaluators=("nope",))


def test_format_table():
  table = evaluate.format_table(
      [{"cat": "bottle", "auroc": 0.98765, "n": 3},
       {"cat": "cable", "auroc": None}], ["cat", "auroc", "n"])
  assert table == ("| cat | auroc | n |\n|---|---|---|\n"
                   "| bottle | 0.9877 | 3 |\n| cable | — | — |\n")


def test_masks_without_an_anomalous_pixel_skip_the_pixel_sort(monkeypatch):
  """A mask-less dataset (ELPV): only the normals' empty masks are kept, so no
  pixel metric is defined — and no pixel is sorted to find that out."""
  def fail(*a, **kw):
    raise AssertionError("pixel_metrics called")
  monkeypatch.setattr(evaluate.metrics, "pixel_metrics", fail)
  labels = np.array([0, 0, 1, 1])
  out = evaluate.compute_metrics(
      image_scores=np.array([0.1, 0.4, 0.35, 0.8]), image_labels=labels,
      maps=np.ones((4, 2, 2)), masks=np.zeros((4, 2, 2)),
      has_mask=np.array([True, True, False, False]))
  assert out == {"image_auroc": 0.75, "image_f1_max": pytest.approx(0.8)}
