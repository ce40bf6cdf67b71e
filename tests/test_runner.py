"""The runner validates every evaluation input before the method runs."""

import json
import os
import re
import sys
import types

import numpy as np
import pytest

from dicofun import api
from dicofun import configlib
from dicofun import methods
from dicofun import runner
from dicofun.data import errors
from dicofun.data import synthetic


def _fake_method(calls):
  """Scores each test image by its label (a perfect detector), no maps."""

  def run(config, data, workdir):
    del config, workdir
    calls.append(data)
    return api.Predictions(
        test_scores=np.array([float(r.label) for r in data.test]),
        test_maps=None)

  mod = types.ModuleType("fake_runner_method")
  mod.run = run
  return mod


@pytest.fixture
def fake(monkeypatch):
  calls = []
  monkeypatch.setitem(sys.modules, "fake_runner_method", _fake_method(calls))
  monkeypatch.setitem(methods.METHODS, "fake", "fake_runner_method")
  return calls


@pytest.fixture
def dataset_without_one_mask(tmp_path):
  """A tiny MVTec-layout category whose first defect lost one mask."""
  category_dir = synthetic.generate(
      str(tmp_path / "data"), category="texture", num_train=3,
      num_test_good=2, num_test_anomalous=4, image_size=16, seed=0)
  gt = os.path.join(category_dir, "ground_truth")
  defect = sorted(os.listdir(gt))[0]
  mask = sorted(os.listdir(os.path.join(gt, defect)))[0]
  os.remove(os.path.join(gt, defect, mask))
  image = os.path.join(category_dir, "test", defect,
                       mask[:-len("_mask.png")] + ".png")
  assert os.path.isfile(image)
  return str(tmp_path / "data"), image, os.path.join(gt, defect, mask)


def _config(root):
  ds = configlib.dataset_config(name="mvtec", category="texture", root=root,
                                image_size=16, crop_fraction=1.0)
  cfg = configlib.base_config(method="fake", dataset=ds,
                              backbone="efficientnet_lite0")
  cfg.eval.tensorboard = False
  return cfg


def test_missing_mask_fails_before_the_method_runs(dataset_without_one_mask,
                                                   fake, tmp_path):
  root, image, expected_mask = dataset_without_one_mask
  workdir = str(tmp_path / "run")
  with pytest.raises(errors.MissingMaskError) as e:
    runner.train_and_evaluate(_config(root), workdir)
  assert fake == []  # The method was never called.
  msg = str(e.value)
  assert re.search(re.escape(f"anomalous image {image!r}"), msg)
  assert re.search(re.escape(f"(expected at {expected_mask!r})"), msg)
  assert "config.dataset.allow_missing_masks=True" in msg
  assert not os.path.exists(os.path.join(workdir, "results.json"))


def test_allowed_missing_mask_runs_and_evaluates(dataset_without_one_mask,
                                                 fake, tmp_path):
  root, image, _ = dataset_without_one_mask
  config = _config(root)
  config.dataset.allow_missing_masks = True
  workdir = str(tmp_path / "run")
  metrics = runner.train_and_evaluate(config, workdir)
  assert len(fake) == 1
  assert image in [r.image_path for r in fake[0].test]
  # Scores equal to the labels: a perfect ranking.
  assert metrics["test"]["image_auroc"] == 1.0
  with open(os.path.join(workdir, "results.json")) as f:
    assert json.load(f)["metrics"]["test"]["image_auroc"] == 1.0


def test_results_record_the_runner_phases(dataset_without_one_mask, fake,
                                          tmp_path, monkeypatch):
  """Each phase's wall seconds are the clock differences around it."""
  root, _, _ = dataset_without_one_mask
  config = _config(root)
  config.dataset.allow_missing_masks = True
  # runner's clock reads, in order: start, data, masks, method, metrics,
  # threshold, checkpoint, the total, figures, results.
  reads = iter([100.0, 101.0, 101.5, 111.5, 112.0, 112.25, 113.25, 113.25,
                115.25, 115.75])
  monkeypatch.setattr(runner, "time",
                      types.SimpleNamespace(time=lambda: next(reads)))
  workdir = str(tmp_path / "run")
  runner.train_and_evaluate(config, workdir)
  with open(os.path.join(workdir, "results.json")) as f:
    res = json.load(f)
  assert res["phases"] == {"data": 1.0, "masks": 0.5, "method": 10.0,
                           "metrics": 0.5, "threshold": 0.25,
                           "checkpoint": 1.0, "figures": 2.0, "results": 0.5}
  assert list(res["phases"]) == ["data", "masks", "method", "metrics",
                                 "threshold", "checkpoint", "figures",
                                 "results"]
  assert res["seconds"] == 13.25
  assert next(reads, None) is None  # No other clock read.
