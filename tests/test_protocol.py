"""The three evaluation views of METHODS §4 on a case solved by hand.

Ten training normals, four test normals and three test anomalies;
contamination 0.2 moves int(0.2 · 10) = 2 of the anomalies into the training
set. The fake method "memorises" its training set, as a memory bank does: the
two moved anomalies score 0 on the test set (below every normal), the one
left scores 0.9 (above every normal). So:

* ``test`` (no overlap): 1 anomaly at 0.9 vs normals 0.1..0.4 → AUROC 1;
* ``test_overlap``: anomalies 0.9, 0, 0 → 4 of 12 pairs won → AUROC 1/3;
* ``transductive``: training normals score 0, 1, …, 9; the moved anomalies
  score 16 (beats 10) and 6 (beats 6, ties 1) → (10 + 6.5) / 20 = 0.825.
"""

import dataclasses

import numpy as np
import pytest

from dicofun import api
from dicofun import configlib
from dicofun import protocol
from dicofun.data import records as records_lib


def _records():
  train = [records_lib.Record(f"/d/train/good/{i:02d}.png", None, 0, "good",
                              "train") for i in range(10)]
  test = [records_lib.Record(f"/d/test/good/{i}.png", None, 0, "good", "test")
          for i in range(4)]
  test += [records_lib.Record(f"/d/test/crack/{i}.png", None, 1, "crack",
                              "test") for i in range(3)]
  return train + test


def _config(contamination):
  ds = configlib.dataset_config(name="synthetic", contamination=contamination,
                                image_size=4, crop_fraction=1.0)
  return configlib.base_config(method="fake", dataset=ds,
                               backbone="efficientnet_lite0")


@pytest.fixture
def data(monkeypatch):
  def prepare(contamination):
    monkeypatch.setattr(protocol.data_lib, "read_dataset",
                        lambda ds, workdir: _records())
    return protocol.prepare_data(_config(contamination), "/unused")
  return prepare


def _memorising_predictions(d: api.RunData) -> api.Predictions:
  """Image scores and (1, 2) maps of a method that memorised its train set."""
  moved = {r.image_path for r in d.moved}
  normal_scores = iter([0.1, 0.2, 0.3, 0.4])
  scores, maps = [], []
  for r in d.test:
    if r.label == 0:
      s = next(normal_scores)
      m = [s, s]
    elif r.image_path in moved:
      s, m = 0.0, [0.0, 0.0]
    else:
      s, m = 0.9, [0.9, 0.1]
    scores.append(s)
    maps.append([m])
  moved_scores = iter([16.0, 6.0])
  train = [float(i) if r.label == 0 else next(moved_scores)
           for i, r in enumerate(d.train)]
  return api.Predictions(test_scores=np.array(scores),
                         test_maps=np.array(maps, np.float32),
                         train_scores=np.array(train))


def _eval_arrays(d: api.RunData):
  """Labels and (1, 2) masks: each anomaly's defect is its left pixel."""
  labels = np.array([r.label for r in d.test])
  masks = np.zeros((len(labels), 1, 2), np.float32)
  masks[labels == 1, 0, 0] = 1
  return dict(label=labels, mask=masks, has_mask=np.ones(len(labels), bool))


def test_prepare_data_moves_two_anomalies_and_marks_them(data):
  d = data(0.2)
  assert len(d.moved) == 2
  assert [r.label for r in d.train] == [0] * 10 + [1, 1]
  assert all(r.split == "train" for r in d.train)
  # The test set: the untouched records, then the moved ones (marked).
  assert len(d.test) == 7
  np.testing.assert_array_equal(d.test_is_moved, [False] * 5 + [True] * 2)
  assert [r.image_path for r in d.test[5:]] == [r.image_path for r in d.moved]
  assert all(r.split == "test" for r in d.test)
  assert sum(r.label for r in d.test[:5]) == 1


def test_three_views_have_the_hand_computed_aurocs(data):
  d = data(0.2)
  out = protocol.evaluate_predictions(_memorising_predictions(d), d,
                                      _eval_arrays(d))
  assert set(out) == {"test", "test_overlap", "transductive"}
  assert out["test"]["image_auroc"] == pytest.approx(1.0)
  assert out["test_overlap"]["image_auroc"] == pytest.approx(1 / 3)
  assert out["transductive"]["image_auroc"] == pytest.approx(0.825)
  # F1-max: no-overlap, flag 0.9 only → 1; overlap, flagging everything at
  # or above 0 → P 3/7, R 1 → 0.6 beats flagging 0.9 only (P 1, R 1/3 → 0.5).
  assert out["test"]["image_f1_max"] == pytest.approx(1.0)
  assert out["test_overlap"]["image_f1_max"] == pytest.approx(0.6)
  # Pixels. No overlap: the defect pixel (0.9) above all 9 normal pixels.
  # Overlap: defect pixels 0.9, 0, 0 vs 11 normal pixels (two of them 0):
  # 11 + 2 · (2 ties · ½) = 13 of 33 pairs.
  assert out["test"]["pixel_auroc"] == pytest.approx(1.0)
  assert out["test_overlap"]["pixel_auroc"] == pytest.approx(13 / 33)
  # The transductive view has no maps.
  assert "pixel_auroc" not in out["transductive"]


def test_without_contamination_there_is_only_the_test_view(data):
  d = data(0.0)
  assert d.moved == [] and not d.test_is_moved.any()
  preds = _memorising_predictions(d)
  out = protocol.evaluate_predictions(preds, d, _eval_arrays(d))
  assert set(out) == {"test"}  # One training class: no transductive AUROC.
  # All three anomalies stay in the test set at 0.9: AUROC 1.
  assert out["test"]["image_auroc"] == pytest.approx(1.0)


def test_wrong_score_shape_is_named(data):
  d = data(0.2)
  preds = _memorising_predictions(d)
  preds.test_scores = preds.test_scores[:-1]
  with pytest.raises(ValueError, match=r"shape \(6,\), expected \(7,\)"):
    protocol.evaluate_predictions(preds, d, _eval_arrays(d))


def test_views_report_image_auroc_by_defect_type(data):
  d = data(0.0)
  # Two of the three test anomalies are renamed "break" (scores stay 0.9).
  renamed = [dataclasses.replace(r, defect="break") if r.label and i % 2 else r
             for i, r in enumerate(d.test)]
  d = dataclasses.replace(d, test=renamed)
  out = protocol.evaluate_predictions(_memorising_predictions(d), d,
                                      _eval_arrays(d))
  by = out["test"]["by_defect"]
  assert sorted(by) == ["break", "crack"]
  assert sum(v["count"] for v in by.values()) == 3
  assert all(v["image_auroc"] == pytest.approx(1.0) for v in by.values())
