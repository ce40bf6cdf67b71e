"""The decision threshold stored with a model (runner, issue 7)."""

import numpy as np
import pytest

from dicofun import api
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
  assert 0.2 < thr <= 1.0 and "F1-optimal" in how
  data.validation = []
  thr, how = runner.choose_threshold(config, _FakeMethod, data, preds)
  assert thr == pytest.approx(0.99) and "percentile" in how
