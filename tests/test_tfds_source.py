"""config.dataset.source="tfds": records from a prepared TFDS dataset.

The synthetic dataset is written as MVTec folders, prepared as the TFDS
``mvtec_ad`` dataset with the documented command, and read both ways: the
records, pixels, per-process slices and a whole PatchCore run must agree.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from configs import patchcore_synthetic
from dicofun import configlib
from dicofun import data as data_lib
from dicofun import features
from dicofun import runner
from dicofun.data import errors
from dicofun.data import mvtec
from dicofun.data import pipeline
from dicofun.data import synthetic
from dicofun.data import tfds_builders
from dicofun.data import tfds_source
from dicofun.data import visa
from test_tfds_builders import _write_visa

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Small enough for a CPU test; 4 anomalies = one per synthetic defect type.
_SIZES = dict(num_train=6, num_test_good=3, num_test_anomalous=4,
              image_size=32)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  """(manual root, category folder, tfds data_dir), built by the command."""
  base = tmp_path_factory.mktemp("tfds_source")
  man, data_dir = str(base / "man"), str(base / "tfds")
  cat_dir = synthetic.generate(man, category="texture", **_SIZES)
  # The README's command, as a user runs it.
  proc = subprocess.run(
      [sys.executable, "-m", "dicofun.data.tfds_builders",
       "--builder=mvtec_ad", "--category=texture", f"--manual_dir={man}",
       f"--data_dir={data_dir}"],
      cwd=REPO, capture_output=True, text=True,
      env={**os.environ, "PYTHONPATH": REPO}, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return man, cat_dir, data_dir


def _tfds_records(data_dir):
  return tfds_source.read_records("mvtec_ad", "texture", data_dir=data_dir,
                                  category="texture")


def test_uri_round_trip_and_hand_value():
  ex = tfds_source.Example("/data/my tfds", "mvtec_ad", "bottle", "test",
                           "test/crack/001.png", 17)
  uri = tfds_source.make_uri(ex)
  assert uri == ("tfds://%2Fdata%2Fmy%20tfds/mvtec_ad/bottle/test/"
                 "test/crack/001.png#17")
  assert tfds_source.parse_uri(uri) == ex
  assert tfds_source.is_uri(uri) and not tfds_source.is_uri("/data/a.png")
  for bad in ("tfds://x/mvtec_ad/bottle/test/a.png",
              "tfds://x/mvtec_ad/test/a.png#3", "tfds://x/a/b/c/d.png#x"):
    with pytest.raises(errors.DatasetError, match="not a dicofun TFDS URI"):
      tfds_source.parse_uri(bad)


def test_same_records_and_pixels_as_the_folders(prepared):
  _, cat_dir, data_dir = prepared
  folder = mvtec.read_mvtec(cat_dir, category="texture")
  tf = _tfds_records(data_dir)
  assert tfds_source.filenames(tf) == [
      os.path.relpath(r.image_path, cat_dir) for r in folder]
  strip = lambda r: (r.label, r.defect, r.split, r.category,
                     r.mask_path is None)
  assert [strip(r) for r in tf] == [strip(r) for r in folder]
  assert [r.label for r in tf] == [0] * 9 + [1] * 4
  # Anomalous records name their own example for the mask.
  assert all(r.mask_path == r.image_path for r in tf if r.label)
  # Sorting URIs sorts like sorting the folder paths (contamination draw).
  assert (sorted(tf, key=lambda r: r.image_path)
          == [tf[i] for i in np.argsort([r.image_path for r in folder])])
  pre = pipeline.Preprocess(image_size=24, crop_fraction=0.875)
  a = pipeline.load_arrays(folder, pre, desc=None)
  b = pipeline.load_arrays(tf, pre, desc=None)
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  assert b["mask"][9:].sum(axis=(1, 2)).min() > 0  # Real masks were read.
  assert "tensorflow" not in sys.modules


def test_missing_mask_is_missing_from_tfds_too(tmp_path):
  man = str(tmp_path / "man")
  cat_dir = synthetic.generate(man, category="texture", num_train=2,
                               num_test_good=1, num_test_anomalous=2,
                               image_size=16)
  os.remove(os.path.join(cat_dir, "ground_truth", "blob", "000_mask.png"))
  folder = mvtec.read_mvtec(cat_dir, category="texture")
  tfds_builders.build_and_load("mvtec_ad", "texture", manual_dir=man,
                               data_dir=str(tmp_path / "tfds"))
  tf = _tfds_records(str(tmp_path / "tfds"))
  assert [r.mask_path is None for r in tf if r.label] == [
      r.mask_path is None for r in folder if r.label] == [True, False]


def test_visa_records_in_read_visa_order(tmp_path):
  root = str(tmp_path / "visa")
  _write_visa(root)
  tfds_builders.build_and_load("visa", "candle", manual_dir=root,
                               data_dir=str(tmp_path / "tfds"))
  folder = visa.read_visa(root, "candle")
  tf = tfds_source.read_records("visa", "candle",
                                data_dir=str(tmp_path / "tfds"),
                                category="candle")
  assert tfds_source.filenames(tf) == [
      os.path.relpath(r.image_path, root) for r in folder] == [
          "candle/Data/Images/Normal/0000.JPG",
          "candle/Data/Images/Normal/0001.JPG",
          "candle/Data/Images/Normal/0002.JPG",
          "candle/Data/Images/Anomaly/000.JPG",
          "candle/Data/Images/Anomaly/001.JPG"]
  assert [(r.split, r.label, r.defect) for r in tf] == [
      (r.split, r.label, r.defect) for r in folder]
  pre = pipeline.Preprocess(image_size=16, crop_fraction=1.0)
  a = pipeline.load_arrays(folder, pre, desc=None)
  b = pipeline.load_arrays(tf, pre, desc=None)
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_process_slices_of_each_global_batch(prepared, monkeypatch):
  """Two processes, 13 records, batch 2 per process, shards padded."""
  _, cat_dir, data_dir = prepared
  tf = _tfds_records(data_dir)
  folder = mvtec.read_mvtec(cat_dir, category="texture")
  fetched = []
  # pylint: disable=protected-access
  real = tfds_source._Source.example

  def spy(self, split, index):
    fetched.append((split, index))
    return real(self, split, index)

  monkeypatch.setattr(tfds_source._Source, "example", spy)
  pre = pipeline.Preprocess(image_size=16, crop_fraction=1.0)
  # ceil(13 / 2) = 7 positions each: process 0 owns 0..6, process 1 owns
  # 7..12 and one padding slot (-1).
  want = {0: [[0, 1], [2, 3], [4, 5], [6]],
          1: [[7, 8], [9, 10], [11, 12], [-1]]}
  for pi in (0, 1):
    fetched.clear()
    batches = list(pipeline.iterate_batches(
        tf, pre, batch_size=2, process_index=pi, process_count=2,
        num_workers=1))
    assert [b["index"].tolist() for b in batches] == want[pi]
    mine = [i for b in want[pi] for i in b if i >= 0]
    # Only this process's examples were read (images and their masks).
    expect = [(tf[i].split, tfds_source.parse_uri(tf[i].image_path).index)
              for i in mine]
    assert sorted(set(fetched)) == sorted(set(expect))
    ref = pipeline.load_arrays([folder[i] for i in mine], pre, desc=None)
    got = np.concatenate([b["image"] for b in batches])[:len(mine)]
    np.testing.assert_array_equal(got, ref["image"])
  # drop_last: 13 // 2 = 6 positions each, the 13th is nobody's.
  idx = [b["index"].tolist() for b in pipeline.iterate_batches(
      tf, pre, batch_size=2, process_index=1, process_count=2,
      drop_last=True, num_workers=1)]
  assert idx == [[6, 7], [8, 9], [10, 11]]


def test_feature_cache_key_of_a_tfds_record(prepared):
  _, _, data_dir = prepared
  uri = _tfds_records(data_dir)[0].image_path
  files = [os.path.join(dp, f) for dp, _, fs in os.walk(data_dir) for f in fs
           if "-train.array_record" in f]
  st = [os.stat(f) for f in files]
  sig = [uri, sum(s.st_size for s in st), max(int(s.st_mtime) for s in st)]
  assert tfds_source.signature(uri) == sig
  key = features._image_key  # pylint: disable=protected-access
  assert key(uri) == hashlib.sha256(json.dumps(sig).encode()).hexdigest()[:40]
  # Another prepared copy of the same example is another cache entry.
  assert key(uri.replace("%2Ftfds", "%2Fcopy")) != key(uri)


def test_missing_prepared_dataset_names_dir_and_command(tmp_path):
  ds = configlib.dataset_config(name="mvtec", category="bottle",
                                source="tfds", tfds_data_dir=str(tmp_path))
  with pytest.raises(errors.TfdsNotPreparedError) as e:
    data_lib.read_dataset(ds, str(tmp_path))
  msg = str(e.value)
  assert repr(os.path.join(str(tmp_path), "mvtec_ad", "bottle")) in msg
  assert ("python -m dicofun.data.tfds_builders --builder=mvtec_ad "
          f"--category=bottle --manual_dir=<the extracted download> "
          f"--data_dir={tmp_path}") in msg
  ds.name = "folder"
  with pytest.raises(errors.DatasetError, match="has no TFDS builder"):
    data_lib.read_dataset(ds, str(tmp_path))
  ds.source = "s3"
  with pytest.raises(errors.DatasetError, match="not one of"):
    data_lib.read_dataset(ds, str(tmp_path))
  assert configlib.dataset_config(name="mvtec").source == "folder"
  with pytest.raises(configlib.ConfigArgError):
    configlib.dataset_config(name="mvtec", source="s3")


def _run(config, workdir):
  metrics = runner.train_and_evaluate(config, workdir)
  with open(os.path.join(workdir, "test_scores.csv")) as f:
    rows = list(csv.DictReader(f))
  with open(os.path.join(workdir, "results.json")) as f:
    moved = json.load(f)["moved_files"]
  return metrics, rows, moved


def _flat(metrics, prefix=""):
  out = {}
  for k, v in metrics.items():
    if isinstance(v, dict):
      out.update(_flat(v, f"{prefix}{k}/"))
    elif isinstance(v, (int, float)):
      out[prefix + k] = float(v)
  return out


def test_patchcore_run_same_metrics_from_folders_and_tfds(prepared, tmp_path,
                                                          monkeypatch):
  man, cat_dir, data_dir = prepared
  monkeypatch.setenv("DICOFUN_CACHE", str(tmp_path / "cache"))
  config = patchcore_synthetic.get_config(
      f"runlocal,image_size=64,contamination=0.34,root={man}")
  config.dataset.synthetic.update(_SIZES)
  config.eval.num_figures = 2
  config.eval.tensorboard = False
  m_folder, rows_folder, moved_folder = _run(config, str(tmp_path / "folder"))
  config.dataset.source = "tfds"
  config.dataset.tfds_data_dir = data_dir
  m_tfds, rows_tfds, moved_tfds = _run(config, str(tmp_path / "tfds"))

  # Same records in the same order, with the same labels and scores.
  rel = lambda p: os.path.relpath(p, cat_dir)
  assert [(rel(r["image_path"]), r["label"], r["defect"], r["moved"])
          for r in rows_folder] == [
              (tfds_source.parse_uri(r["image_path"]).filename, r["label"],
               r["defect"], r["moved"]) for r in rows_tfds]
  # int(0.34 * 6) = 2 anomalies moved into train, the same two.
  assert len(moved_folder) == 2
  assert [rel(p) for p in moved_folder] == [
      tfds_source.parse_uri(p).filename for p in moved_tfds]
  np.testing.assert_allclose([float(r["score"]) for r in rows_tfds],
                             [float(r["score"]) for r in rows_folder],
                             rtol=0, atol=1e-6)
  a, b = _flat(m_folder), _flat(m_tfds)
  assert set(a) == set(b) and "test/image_auroc" in a
  for k in a:
    assert b[k] == pytest.approx(a[k], abs=1e-6), k
