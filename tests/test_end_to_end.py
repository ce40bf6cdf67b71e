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

import figure_pixels

from dicofun import metrics as metrics_lib
from dicofun import predict
from dicofun import protocol
from dicofun import runner
from configs import patchcore_synthetic


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("e2e"))
  config = patchcore_synthetic.get_config("runlocal,image_size=128")
  config.features_cache = False
  metrics = runner.train_and_evaluate(config, workdir)
  return workdir, metrics, config


def _chance(config, workdir, *, draws=20):
  """The best image AUROC and AUPRO of ``draws`` seeded random scorers on
  the run's own test set: what a detector must beat to detect anything."""
  data = protocol.prepare_data(config, workdir)
  arrays = protocol.load_eval_arrays(config, data.test)
  rng = np.random.default_rng(0)
  auroc = max(metrics_lib.image_auroc(rng.random(len(data.test)),
                                      arrays["label"]) for _ in range(draws))
  aupro = max(metrics_lib.aupro(rng.random(arrays["mask"].shape),
                                arrays["mask"]) for _ in range(draws // 4))
  return auroc, aupro


def test_run_writes_results_and_detects_anomalies(run_dir):
  workdir, metrics, config = run_dir
  with open(os.path.join(workdir, "results.json")) as f:
    results = json.load(f)
  assert results["metrics"]["test"]["image_auroc"] == pytest.approx(
      metrics["test"]["image_auroc"])
  for key in ("commit", "config", "seed", "moved_files", "threshold"):
    assert key in results
  for name in ("metrics.md", "anomaly_maps.png", "best_worst.png",
               "test_scores.csv"):
    assert os.path.getsize(os.path.join(workdir, name)) > 0, name
  # roc.png shows the run's curves: the area under the image curve (left
  # panel) and the pixel curve (right panel), read from their pixels, are
  # the reported AUROCs.
  rgb = figure_pixels.read_rgb(os.path.join(workdir, "roc.png"))
  half = rgb.shape[1] // 2
  assert figure_pixels.roc_area(rgb[:, :half]) == pytest.approx(
      metrics["test"]["image_auroc"], abs=0.04)
  assert figure_pixels.roc_area(rgb[:, half:]) == pytest.approx(
      metrics["test"]["pixel_auroc"], abs=0.04)
  # The synthetic anomalies are detectable with pretrained features: above
  # the best of several seeded random scorers on the same test set (image
  # AUROC ~0.5 + noise, AUPRO ~0.15), and by a margin.
  chance_auroc, chance_aupro = _chance(config, workdir)
  assert metrics["test"]["image_auroc"] > max(0.75, chance_auroc + 0.1)
  assert metrics["test"]["pixel_auroc"] > 0.8
  assert metrics["test"]["aupro"] > chance_aupro + 0.2


def test_predict_from_checkpoint_matches_evaluation(run_dir, tmp_path):
  workdir, _, _ = run_dir
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
