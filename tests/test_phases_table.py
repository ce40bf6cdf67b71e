"""benchmarks/phases.py: the method split and the table rows from results.json."""

import importlib.util
import os

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _phases():
  spec = importlib.util.spec_from_file_location(
      "phases", os.path.join(_REPO, "benchmarks", "phases.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def _results(**extra):
  return {
      "phases": {"data": 1.0, "masks": 0.5, "method": 30.0, "metrics": 2.0,
                 "threshold": 0.25, "checkpoint": 1.25, "figures": 3.0,
                 "results": 0.5},
      "extra": extra, "counts": {"train": 10, "test": 40},
      "config": {"backbone": {"name": "efficientnet_lite0"},
                 "dataset": {"image_size": 128},
                 "dico": {"epochs": 3}},
  }


def test_method_phase_split_from_extra():
  ph = _phases()
  # 40 test images at 8 images/s: 5 s of scoring; the rest is "other".
  res = _results(feature_seconds=12.0, fit_seconds=9.0,
                 inference_images_per_s=8.0)
  assert ph.split_method(res) == {"features": 12.0, "fit_train": 9.0,
                                  "score": 5.0, "method_other": 4.0}
  # DiCo: no feature cache, the training loop's seconds are the fit.
  dico = _results(train_seconds=20.0, inference_images_per_s=4.0)
  assert ph.split_method(dico) == {"features": 0.0, "fit_train": 20.0,
                                   "score": 10.0, "method_other": 0.0}


def test_row_and_table():
  ph = _phases()
  row = ph.row_of("dico", "runlocal",
                  _results(train_seconds=20.0, inference_images_per_s=4.0),
                  wall=45.0)
  assert row["total_s"] == 38.5  # The runner phases' sum.
  assert row["biggest"] == "fit_train"
  assert row["epochs"] == 3 and row["test_images"] == 40
  row.update(cpu="Xeon", cores=2, load=3.5, commit="abc1234",
             command="python benchmarks/phases.py")
  text = ph.table([row])
  assert ("| dico | efficientnet_lite0 128 px, 3 epochs | 10/40 | 1.0 | 0.5 "
          "| 0.0 | **20.0** | 10.0 | 0.0 | 2.0 | 0.2 | 1.2 | 3.0 | 0.5 | 38 "
          "| fit train | Xeon (2 cores) | 3.50 | abc1234 |") in text
  assert "python benchmarks/phases.py" in text
