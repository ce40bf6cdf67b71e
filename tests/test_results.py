"""dicofun.results: what a run writes (here: the best/worst figure's picks)."""

import types

import ml_collections
import numpy as np
import pytest
from sklearn import metrics as skm

from dicofun import api
from dicofun import results
from dicofun.data import records
from tests import figure_pixels as fp

# 12 test images: 6 normals, 6 anomalies, scores chosen so the four rows are
# known by hand.
SCORES = np.array([0.1, 0.9, 0.2, 0.8, 0.3, 0.7,   # normals 0..5
                   0.95, 0.15, 0.85, 0.25, 0.6, 0.5])  # anomalies 6..11
LABELS = np.array([0] * 6 + [1] * 6)


def test_best_worst_rows_rank_over_all_images():
  rows = results.best_worst_rows(SCORES, LABELS, k=4)
  np.testing.assert_array_equal(rows["best_normal"], [0, 2, 4, 5])
  np.testing.assert_array_equal(rows["best_anomalous"], [6, 8, 10, 11])
  np.testing.assert_array_equal(rows["worst_normal"], [1, 3, 5, 4])
  np.testing.assert_array_equal(rows["worst_anomalous"], [7, 9, 11, 10])
  # n = 12 > 8: best and worst rows show different images.
  assert set(rows["best_normal"]) != set(rows["worst_normal"])
  assert set(rows["best_anomalous"]) != set(rows["worst_anomalous"])
  # The old picks (4 lowest + 4 highest overall: 0 7 2 9 | 6 1 8 3) hold
  # only 4 normals and 4 anomalies, so each best row showed the same images
  # as its worst row.
  old = np.array(sorted(set(np.argsort(SCORES)[:4])
                        | set(np.argsort(-SCORES)[:4])))
  old_rows = results.best_worst_rows(SCORES[old], LABELS[old], k=4)
  assert (set(old[old_rows["best_normal"]])
          == set(old[old_rows["worst_normal"]]) == {0, 1, 2, 3})


def test_write_figures_draws_the_rows_from_all_test_images(tmp_path,
                                                          monkeypatch):
  drawn = {}

  def grid(path, images, masks, maps, scores, labels, *, k):
    del path, images, masks, maps
    drawn.update(scores=np.array(scores), labels=np.array(labels), k=k)

  fake_viz = types.SimpleNamespace(
      save_roc_curves=lambda *a, **kw: None,
      save_anomaly_maps=lambda *a, **kw: None, save_best_worst_grid=grid)
  monkeypatch.setattr(results, "viz", fake_viz)
  monkeypatch.setattr(results.pipeline, "load_arrays", lambda recs, *a, **kw: {
      "image": np.zeros((len(recs), 4, 4, 3), np.float32),
      "mask": np.zeros((len(recs), 4, 4), np.float32)})
  test = [records.Record(f"{i}.png", None, int(y), "x", "test")
          for i, y in enumerate(LABELS)]
  config = ml_collections.ConfigDict(dict(
      dataset=dict(image_size=4, crop_fraction=1.0), eval=dict(num_figures=8)))
  preds = api.Predictions(test_scores=SCORES,
                          test_maps=np.zeros((12, 4, 4), np.float32))
  results.write_figures(str(tmp_path), config, api.RunData(train=[], test=test),
                        preds, {"label": LABELS,
                                "mask": np.zeros((12, 4, 4), np.float32)})
  # Every image of the four rows reaches the grid, and only those.
  want = sorted(set().union(*[set(r) for r in results.best_worst_rows(
      SCORES, LABELS, k=4).values()]))
  np.testing.assert_allclose(drawn["scores"], SCORES[want])
  np.testing.assert_array_equal(drawn["labels"], LABELS[want])
  assert want == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]
  assert drawn["k"] == 4


def test_write_figures_draws_the_learning_curve_of_a_trained_method(tmp_path):
  test = [records.Record(f"{i}.png", None, int(y), "x", "test")
          for i, y in enumerate(LABELS)]
  config = ml_collections.ConfigDict(dict(
      method="funad", dataset=dict(image_size=4, crop_fraction=1.0),
      eval=dict(num_figures=8)))
  history = [{"epoch": 1, "loss": 1.0, "test_image_auroc": 0.6},
             {"epoch": 2, "loss": 0.5, "test_image_auroc": 0.7}]
  preds = api.Predictions(test_scores=SCORES, test_maps=None,
                          extra={"history": history})
  written = results.write_figures(
      str(tmp_path), config, api.RunData(train=[], test=test, category="c"),
      preds, {"label": LABELS, "mask": None})
  assert written == ["learning_curve.png", "roc.png"]
  # The curve shows this history: the evaluation panel (left) the AUROC
  # rising 0.6 → 0.7, the loss panel (right) falling 1.0 → 0.5 (pixel y
  # grows downwards), in the first line colour.
  rgb = fp.read_rgb(tmp_path / "learning_curve.png")
  half = rgb.shape[1] // 2
  for panel, sign in ((rgb[:, :half], -1), (rgb[:, half:], 1)):
    ys, xs = np.nonzero(fp.colour_mask(panel, fp.C0))
    assert len(xs) > 50
    assert sign * np.polyfit(xs, ys, 1)[0] > 0.05
  # The ROC figure's curve has the scores' AUROC (read from its pixels).
  assert fp.roc_area(fp.read_rgb(tmp_path / "roc.png")) == pytest.approx(
      skm.roc_auc_score(LABELS, SCORES), abs=0.04)  # 0.556; swapped: 0.444


def test_git_commit_is_read_once_per_process(monkeypatch):
  calls = []
  real = results.subprocess.run

  def counting(*args, **kwargs):
    calls.append(args[0])
    return real(*args, **kwargs)

  results.git_commit.cache_clear()
  monkeypatch.setattr(results.subprocess, "run", counting)
  try:
    first = results.git_commit()
    n = len(calls)
    assert n >= 1
    assert results.git_commit() == first and len(calls) == n
  finally:
    results.git_commit.cache_clear()
