"""The decision threshold stored with a model (runner, issue 7)."""

import numpy as np
import pytest

from dicofun import api
from dicofun import metrics
from dicofun import protocol
from dicofun import runner
from dicofun.data import records as records_lib
from configs import patchcore_synthetic


def _records(n_normal, n_anomalous):
  out = [records_lib.Record(f"/x/good_{i}.png", None, 0, "good", "test")
         for i in range(n_normal)]
  out += [records_lib.Record(f"/x/bad_{i}.png", f"/x/bad_{i}_mask.png", 1,
                             "blob", "test") for i in range(n_anomalous)]
  return out


def test_validation_split_is_stratified_seeded_and_disjoint():
  test = _records(20, 10)
  moved = np.zeros(len(test), bool)
  moved[-2:] = True  # Moved anomalies never enter the validation split.
  kept, kept_moved, val = protocol.split_validation(test, moved, fraction=0.2,
                                                 seed=0)
  assert sum(r.label == 0 for r in val) == 4
  assert sum(r.label == 1 for r in val) == 2  # 20 % of 8 non-moved → 2.
  assert not {r.image_path for r in val} & {r.image_path for r in kept}
  assert len(kept) + len(val) == len(test) and kept_moved.sum() == 2
  _, _, again = protocol.split_validation(test, moved, fraction=0.2, seed=0)
  assert again == val


class _FakeMethod:
  """Scores an image 1.0 when its name says it is bad, else 0.2."""

  @staticmethod
  def predict(config, state, records):
    del config, state
    return np.array([1.0 if "bad" in r.image_path else 0.2
                     for r in records]), None


def test_threshold_is_f1_optimal_on_validation_else_train_percentile():
  config = patchcore_synthetic.get_config(None)
  data = api.RunData(train=_records(5, 0), test=[],
                     validation=_records(4, 2))
  preds = api.Predictions(test_scores=np.zeros(0), test_maps=None,
                          train_scores=np.linspace(0, 1, 101),
                          state={"w": np.zeros(1)})
  thr, how = runner.choose_threshold(config, _FakeMethod, data, preds)
  # Normals score 0.2, anomalies 1.0: F1 = 1 only at t = 1.0, the anomalies'
  # own score, so the rule must call a score equal to the threshold anomalous.
  assert thr == 1.0 and "F1-optimal" in how
  val_scores, _ = _FakeMethod.predict(config, None, data.validation)
  np.testing.assert_array_equal(metrics.is_anomalous(val_scores, thr),
                                [False] * 4 + [True] * 2)
  data.validation = []
  thr, how = runner.choose_threshold(config, _FakeMethod, data, preds)
  assert thr == pytest.approx(0.99) and "percentile" in how


def test_f1_optimal_threshold_and_decisions_agree_on_ties():
  """A normal tied with an anomaly at the threshold: both are anomalous."""
  scores = np.array([0.1, 0.2, 0.4, 0.4, 0.8])
  labels = np.array([0, 0, 0, 1, 1])
  # By hand, F1(score >= t): t=0.8 → 2/3, t=0.4 → P 2/3, R 1 → 0.8,
  # t=0.2 → 2/3, t=0.1 → 4/7.
  thr = metrics.f1_optimal_threshold(scores, labels)
  assert thr == 0.4
  decisions = metrics.is_anomalous(scores, thr)
  np.testing.assert_array_equal(decisions, [False, False, True, True, True])
  tp = int(np.sum(decisions & (labels == 1)))
  f1 = 2 * tp / (decisions.sum() + labels.sum())
  assert f1 == pytest.approx(0.8)
  assert f1 == pytest.approx(metrics.image_f1_max(scores, labels))
