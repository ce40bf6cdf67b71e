"""End-to-end: the quick-start run through ``train_and_evaluate`` and predict.

One real PatchCore run on the embedded synthetic data (EfficientNet-Lite0,
pretrained weights from the package index), then ``experiments/predict.py``'s
library entry point on a folder of some of its test images, from the
checkpoint alone.
"""

import csv
import json
import os
import shutil

import numpy as np
import pytest

from dicofun import runner
from configs import patchcore_synthetic


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("e2e"))
  config = patchcore_synthetic.get_config("runlocal,image_size=128")
  config.features_cache = False
  metrics = runner.train_and_evaluate(config, workdir)
  return workdir, metrics


def test_run_writes_results_and_detects_anomalies(run_dir):
  workdir, metrics = run_dir
  with open(os.path.join(workdir, "results.json")) as f:
    results = json.load(f)
  assert results["metrics"]["test"]["image_auroc"] == pytest.approx(
      metrics["test"]["image_auroc"])
  for key in ("commit", "config", "seed", "moved_files", "threshold"):
    assert key in results
  for name in ("metrics.md", "roc.png", "anomaly_maps.png", "best_worst.png",
               "test_scores.csv"):
    assert os.path.getsize(os.path.join(workdir, name)) > 0, name
  # The synthetic anomalies are detectable with pretrained features; a
  # random scorer sits at 0.5.
  assert metrics["test"]["image_auroc"] > 0.75
  assert metrics["test"]["pixel_auroc"] > 0.8
  assert 0.0 <= metrics["test"]["aupro"] <= 1.0


def test_predict_from_checkpoint_matches_evaluation(run_dir, tmp_path):
  from dicofun import predict  # pylint: disable=g-import-not-at-top
  workdir, _ = run_dir
  with open(os.path.join(workdir, "test_scores.csv")) as f:
    rows = list(csv.DictReader(f))
  picked = rows[:3] + rows[-3:]
  images = tmp_path / "new_images"
  images.mkdir()
  expected = {}
  for i, row in enumerate(picked):
    name = f"{i:02d}_{os.path.basename(row['image_path'])}"
    shutil.copy(row["image_path"], images / name)
    expected[name] = float(row["score"])
  out = tmp_path / "pred"
  predict.predict_folder(workdir, str(images), out_dir=str(out))
  with open(out / "scores.csv") as f:
    got = {os.path.basename(r["file"]): float(r["score"])
           for r in csv.DictReader(f)}
  assert set(got) == set(expected)
  for name, score in expected.items():
    np.testing.assert_allclose(got[name], score, rtol=1e-4, atol=1e-5)
