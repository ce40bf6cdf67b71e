"""experiments/predict.py: a saved model scores a folder of new images."""

import csv
import os
import subprocess
import sys
import types

import matplotlib
import matplotlib.image as mpimg
import ml_collections
import numpy as np
from PIL import Image
import pytest

from dicofun import checkpoint
from dicofun import predict
from dicofun import methods
from dicofun.data import images

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
S = 16


def _fake_method(calls):
  """A method whose score is the mean pixel / 255 plus the state's offset."""
  def predict_fn(config, state, records):
    calls.append(list(records))
    s = config.dataset.image_size
    scores = np.array([images.load_image(r.image_path).mean() / 255.0
                       for r in records]) + float(state["offset"])
    maps = np.stack([np.full((s, s), v, np.float32) for v in scores])
    return scores, maps

  mod = types.ModuleType("fake_predict_method")
  mod.predict = predict_fn
  return mod


@pytest.fixture
def run_dir(tmp_path, monkeypatch):
  """A fake method registered with the runner and its saved model."""
  calls = []
  monkeypatch.setitem(sys.modules, "fake_predict_method", _fake_method(calls))
  monkeypatch.setitem(methods.METHODS, "fake", "fake_predict_method")
  cfg = ml_collections.ConfigDict(dict(
      method="fake", dataset=dict(image_size=S, crop_fraction=1.0,
                                  category="widget")))
  d = str(tmp_path / "run")
  checkpoint.save_inference(d, state={"offset": np.float32(0.25)}, config=cfg,
                            threshold=0.6, meta={"rule": "test"})
  return d, calls


@pytest.fixture
def overlays(monkeypatch):
  """Replaces dicofun.viz.save_overlay by a recorder of its calls."""
  calls = []

  def save_overlay(path, image_uint8, amap, **kw):
    calls.append(dict(path=path, image=np.array(image_uint8),
                      amap=np.array(amap), kw=kw))
    with open(path, "wb") as f:
      f.write(b"png")

  # predict.py bound dicofun.viz at import: patch the function it calls.
  monkeypatch.setattr(predict.viz, "save_overlay", save_overlay)
  return calls


def _image_dir(root):
  """Constant grey images (pixel 10, 100, 200); a sub-folder; a non-image."""
  d = root / "images"
  (d / "sub").mkdir(parents=True)
  for name, v in [("b.png", 100), ("sub/c.jpg", 200), ("a.png", 10)]:
    Image.fromarray(np.full((20, 24, 3), v, np.uint8)).save(d / name)
  (d / "notes.txt").write_text("not an image")
  return d


def test_list_images_is_recursive_sorted_and_filters_extensions(tmp_path):
  d = _image_dir(tmp_path)
  found = predict.list_images(str(d))
  assert [os.path.relpath(p, d) for p in found] == ["a.png", "b.png",
                                                    "sub/c.jpg"]


def test_empty_folder_and_missing_folder_are_named(tmp_path):
  (tmp_path / "empty").mkdir()
  with pytest.raises(FileNotFoundError, match="no image files"):
    predict.list_images(str(tmp_path / "empty"))
  with pytest.raises(FileNotFoundError, match="nowhere"):
    predict.list_images(str(tmp_path / "nowhere"))


def test_predict_folder_scores_decides_and_draws(run_dir, overlays, tmp_path):
  run, calls = run_dir
  d = _image_dir(tmp_path)
  out = predict.predict_folder(run, str(d), chunk=2)

  # The method got unlabelled test records, in two chunks (2 + 1).
  assert [len(c) for c in calls] == [2, 1]
  recs = calls[0] + calls[1]
  assert [r.image_path for r in recs] == out.files
  assert all(r.label == 0 and r.mask_path is None and r.split == "test"
             and r.category == "widget" for r in recs)

  # JPEG is lossy: c.jpg's mean is only close to 200.
  expected = np.array([10, 100, 200]) / 255.0 + 0.25
  np.testing.assert_allclose(out.scores, expected, atol=2e-3)
  np.testing.assert_array_equal(out.decisions, [False, True, True])
  assert out.threshold == 0.6

  with open(os.path.join(run, "predictions", "scores.csv")) as f:
    rows = list(csv.DictReader(f))
  assert [r["file"] for r in rows] == ["a.png", "b.png", "sub/c.jpg"]
  np.testing.assert_allclose([float(r["score"]) for r in rows], out.scores)
  assert [r["decision"] for r in rows] == ["0", "1", "1"]
  assert {r["threshold"] for r in rows} == {"0.6"}

  # Drawn into the folder that becomes predictions/ at the end.
  names = ["overlays/a.png", "overlays/b.png", "overlays/sub/c.png"]
  staged = os.path.dirname(os.path.dirname(overlays[0]["path"]))
  assert [os.path.relpath(o["path"], staged) for o in overlays] == names
  assert out.overlays == [os.path.join(run, "predictions", n) for n in names]
  # The overlay image is the resized image as uint8, with its own map.
  assert overlays[1]["image"].shape == (S, S, 3)
  assert overlays[1]["image"].dtype == np.uint8
  np.testing.assert_array_equal(overlays[1]["image"], 100)
  np.testing.assert_allclose(overlays[1]["amap"], expected[1], atol=1e-6)
  # One colour scale for all images, centred on the threshold 0.6.
  lo = expected[0]
  assert overlays[0]["kw"] == overlays[2]["kw"]
  assert overlays[0]["kw"]["vmin"] == pytest.approx(lo, abs=1e-6)
  assert overlays[0]["kw"]["vmax"] == pytest.approx(1.2 - lo, abs=1e-6)
  assert not os.path.exists(os.path.join(run, "predictions", "maps.npy"))


def test_color_scale_is_centred_on_the_threshold():
  assert predict.color_scale(1.0, 3.0) == {"vmin": 1.0, "vmax": 5.0}
  # A threshold at or below every map value: fall back to per-image ranges.
  assert predict.color_scale(3.0, 2.0) == {}
  assert predict.color_scale(np.inf, 2.0) == {}


def test_threshold_override_and_out_dir(run_dir, overlays, tmp_path):
  run, _ = run_dir
  d = _image_dir(tmp_path)
  out_dir = tmp_path / "elsewhere"
  out = predict.predict_folder(run, str(d), out_dir=str(out_dir),
                               threshold=0.28, overlays=False, keep_maps=True)
  np.testing.assert_array_equal(out.decisions, [True, True, True])
  assert overlays == [] and out.overlays == []
  with open(out_dir / "scores.csv") as f:
    rows = list(csv.DictReader(f))
  assert [r["decision"] for r in rows] == ["1", "1", "1"]
  assert {r["threshold"] for r in rows} == {"0.28"}
  assert not os.path.exists(os.path.join(run, "predictions"))
  maps = np.load(out_dir / "maps.npy")
  assert maps.shape == (3, S, S) and maps.dtype == np.float32
  np.testing.assert_allclose(maps[:, 0, 0], out.scores, atol=1e-6)


def test_run_without_threshold_needs_one(tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, "fake_predict_method", _fake_method([]))
  monkeypatch.setitem(methods.METHODS, "fake", "fake_predict_method")
  run = str(tmp_path / "run")
  checkpoint.save_inference(
      run, state={"offset": np.float32(0.0)}, threshold=1.0,
      config=ml_collections.ConfigDict(dict(
          method="fake", dataset=dict(image_size=S, crop_fraction=1.0))))
  monkeypatch.setattr(checkpoint, "load_inference", lambda d: (
      {"offset": 0.0}, ml_collections.ConfigDict(dict(
          method="fake", dataset=dict(image_size=S, crop_fraction=1.0))),
      {"threshold": None}))
  images = str(_image_dir(tmp_path))
  with pytest.raises(ValueError, match="--threshold"):
    predict.predict_folder(run, images)
  out = predict.predict_folder(run, images, threshold=0.5, overlays=False)
  np.testing.assert_array_equal(out.decisions, [False, False, True])


def test_real_overlays_show_each_score_on_one_scale(run_dir, tmp_path):
  run, _ = run_dir
  out = predict.predict_folder(run, str(_image_dir(tmp_path)))
  assert len(out.overlays) == 3
  # One scale centred on the threshold 0.6: [lo, 1.2 − lo], lo = the lowest
  # map value (a.png's constant map). Each overlay pixel is ½ image + ½ jet.
  lo = out.scores[0]
  geometry = ml_collections.ConfigDict(dict(dataset=dict(image_size=S,
                                                         crop_fraction=1.0)))
  for i, path in enumerate(out.overlays):
    got = mpimg.imread(path)[..., :3]
    assert got.shape == (S, S, 3)
    grey = predict.overlay_image(geometry, out.files[i])[4, 4, 0]
    level = (out.scores[i] - lo) / (1.2 - 2 * lo)
    want = (0.5 * np.array(matplotlib.colormaps["jet"](level)[:3])
            + 0.5 * grey / 255.0)
    np.testing.assert_allclose(got[4:-4, 4:-4].reshape(-1, 3).mean(0), want,
                               atol=0.02)


def test_missing_checkpoint_is_named(tmp_path):
  with pytest.raises(FileNotFoundError, match="no inference checkpoint"):
    predict.predict_folder(str(tmp_path), str(_image_dir(tmp_path)))


def test_cli_reports_a_run_without_model(tmp_path):
  proc = subprocess.run(
      [sys.executable, os.path.join(REPO, "experiments", "predict.py"),
       f"--workdir={tmp_path}", f"--images={_image_dir(tmp_path)}"],
      capture_output=True, text=True, timeout=300, cwd=REPO)
  assert proc.returncode != 0
  assert "no inference checkpoint" in proc.stderr


def _add_bad_files(d):
  """A truncated PNG and an empty file next to the good images."""
  good = (d / "b.png").read_bytes()
  (d / "sub" / "half.png").write_bytes(good[:len(good) // 2])
  (d / "zero.png").write_bytes(b"")


def test_unreadable_files_are_skipped_and_listed(run_dir, overlays, tmp_path):
  run, calls = run_dir
  d = _image_dir(tmp_path)
  _add_bad_files(d)
  out = predict.predict_folder(run, str(d))
  # Every readable image is scored, the two bad files are not.
  assert [os.path.relpath(p, d) for p in out.files] == ["a.png", "b.png",
                                                        "sub/c.jpg"]
  assert sum(len(c) for c in calls) == 3
  with open(os.path.join(run, "predictions", "errors.csv")) as f:
    rows = list(csv.DictReader(f))
  assert [r["file"] for r in rows] == ["sub/half.png", "zero.png"]
  assert rows[0]["reason"] == "OSError: image file is truncated"
  assert rows[1]["reason"] == "empty file (0 bytes)"
  assert out.errors_path == os.path.join(run, "predictions", "errors.csv")


def test_strict_aborts_on_an_unreadable_file(run_dir, overlays, tmp_path):
  from dicofun.data import errors  # pylint: disable=g-import-not-at-top
  run, calls = run_dir
  d = _image_dir(tmp_path)
  _add_bad_files(d)
  with pytest.raises(errors.DatasetError, match="2 unreadable file"):
    predict.predict_folder(run, str(d), strict=True)
  assert calls == []


def test_a_score_equal_to_the_threshold_is_anomalous(run_dir, overlays,
                                                     tmp_path):
  """scores.csv uses the threshold's own rule, score >= threshold."""
  run, _ = run_dir
  d = _image_dir(tmp_path)
  tie = 100 / 255.0 + 0.25  # b.png's score, exactly (constant grey 100).
  out = predict.predict_folder(run, str(d), threshold=tie, overlays=False)
  assert out.scores[1] == tie
  np.testing.assert_array_equal(out.decisions, [False, True, True])
  with open(out.csv_path) as f:
    rows = list(csv.DictReader(f))
  assert [r["decision"] for r in rows] == ["0", "1", "1"]


def test_scores_csv_is_written_atomically(run_dir, overlays, tmp_path,
                                          monkeypatch):
  """A failure while writing scores.csv leaves the previous one intact."""
  run, _ = run_dir
  d = _image_dir(tmp_path)
  first = predict.predict_folder(run, str(d), overlays=False)
  before = open(first.csv_path).read()
  real_writer = csv.writer
  rows = []

  class _FailingWriter:
    """csv.writer whose third row fails (header and one row written)."""

    def __init__(self, f):
      self._w = real_writer(f)

    def writerow(self, row):
      rows.append(row)
      if len(rows) == 3:
        raise OSError(28, "No space left on device")
      return self._w.writerow(row)

  monkeypatch.setattr(csv, "writer", _FailingWriter)
  with pytest.raises(OSError, match="No space left"):
    predict.predict_folder(run, str(d), threshold=0.0, overlays=False)
  assert len(rows) == 3
  assert open(first.csv_path).read() == before
  assert [f for f in os.listdir(os.path.dirname(first.csv_path))
          if ".tmp-" in f] == []
