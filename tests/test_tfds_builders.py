"""Tests for the MVTec AD / VisA TFDS builders (built and read without TF)."""

from __future__ import annotations

import csv
import os
import shutil
import sys

import numpy as np
from PIL import Image
import pytest

tfds = pytest.importorskip("tensorflow_datasets")

from dicofun.data import synthetic  # pylint: disable=g-import-not-at-top
from dicofun.data import tfds_builders  # pylint: disable=g-import-not-at-top


def _by_filename(source) -> dict[str, dict]:
  out = {}
  for i in range(len(source)):
    ex = source[i]
    out[ex["filename"].decode()] = ex
  return out


@pytest.fixture
def mvtec_root(tmp_path_factory):
  """A tiny MVTec-layout download: synthetic "texture", 32 px."""
  root = tmp_path_factory.mktemp("mvtec")
  d = synthetic.generate(str(root), category="texture", num_train=3,
                         num_test_good=2, num_test_anomalous=4,
                         image_size=32)
  # One grayscale training image (as in MVTec's grid/screw/zipper), which
  # must come back as 3 identical channels.
  p = os.path.join(d, "train", "good", "001.png")
  gray = np.asarray(Image.open(p).convert("L"))
  Image.fromarray(gray).save(p)
  return str(root)


def test_mvtec_ad_build_and_read(mvtec_root, tmp_path):
  data_dir = str(tmp_path / "tfds")
  splits = tfds_builders.build_and_load("mvtec_ad", "texture",
                                        manual_dir=mvtec_root,
                                        data_dir=data_dir)
  assert set(splits) == {"train", "test"}
  assert len(splits["train"]) == 3 and len(splits["test"]) == 6
  train, test = _by_filename(splits["train"]), _by_filename(splits["test"])
  assert sorted(train) == [f"train/good/00{i}.png" for i in range(3)]
  assert sorted(test) == sorted(
      [f"test/good/00{i}.png" for i in range(2)]
      + [f"test/{d}/000.png" for d in synthetic.DEFECTS])
  cat_dir = os.path.join(mvtec_root, "texture")
  for name, ex in {**train, **test}.items():
    assert ex["image"].shape == (32, 32, 3) and ex["image"].dtype == np.uint8
    assert ex["mask"].shape == (32, 32, 1) and ex["mask"].dtype == np.uint8
    expected = np.asarray(Image.open(os.path.join(cat_dir, name)).convert(
        "RGB"))
    np.testing.assert_array_equal(ex["image"], expected)
    defect = name.split("/")[1]
    assert ex["defect"].decode() == defect
    if defect == "good":
      assert ex["label"] == 0
      assert not ex["mask"].any()
    else:
      assert ex["label"] == 1
      stem = os.path.splitext(os.path.basename(name))[0]
      gt = np.asarray(Image.open(os.path.join(
          cat_dir, "ground_truth", defect, f"{stem}_mask.png")))
      np.testing.assert_array_equal(ex["mask"][..., 0], gt)
      assert set(np.unique(ex["mask"])) == {0, 255}
  gray = train["train/good/001.png"]["image"]
  np.testing.assert_array_equal(gray[..., 0], gray[..., 2])

  # A second call reuses the prepared data (no rebuild needed): still there
  # when the manual folder is gone.
  shutil.rmtree(os.path.join(mvtec_root, "texture", "ground_truth"))
  again = tfds_builders.build_and_load("mvtec_ad", "texture",
                                       manual_dir=mvtec_root,
                                       data_dir=data_dir)
  assert len(again["test"]) == 6
  assert "tensorflow" not in sys.modules


def test_mvtec_ad_custom_category_and_data_source(tmp_path):
  root = tmp_path / "man"
  synthetic.generate(str(root), category="object", num_train=2,
                     num_test_good=1, num_test_anomalous=1, image_size=32)
  # A category without a predefined config, given as the folder itself.
  os.rename(root / "object", tmp_path / "my_part")
  splits = tfds_builders.build_and_load(
      "mvtec_ad", "my_part", manual_dir=str(tmp_path / "my_part"),
      data_dir=str(tmp_path / "tfds"))
  assert (len(splits["train"]), len(splits["test"])) == (2, 2)
  # A predefined config through the public tfds entry point.
  synthetic.generate(str(root), category="texture", num_train=2,
                     num_test_good=1, num_test_anomalous=1, image_size=32)
  ds = tfds.data_source(
      "mvtec_ad/texture", data_dir=str(tmp_path / "tfds"),
      download_and_prepare_kwargs={
          "download_config": tfds.download.DownloadConfig(
              manual_dir=str(root))})
  assert len(ds["train"]) == 2
  labels = sorted(int(ds["test"][i]["label"]) for i in range(len(ds["test"])))
  assert labels == [0, 1]
  assert "tensorflow" not in sys.modules


def test_unknown_names():
  with pytest.raises(ValueError, match="builder"):
    tfds_builders.make_builder("nope", "x", data_dir="/tmp/unused")
  with pytest.raises(ValueError, match="category"):
    tfds_builders.make_builder("visa", "bottle", data_dir="/tmp/unused")
  assert len(tfds_builders.MvtecAd.builder_configs) >= 15
  assert set(tfds_builders.visa.CATEGORIES) == set(
      tfds_builders.Visa.builder_configs)


def _write_visa(root: str) -> None:
  """A tiny VisA download: 2 train normals, 1 test normal, 2 anomalies."""
  rng = np.random.default_rng(0)
  rows = []
  base = os.path.join(root, "candle", "Data")
  os.makedirs(os.path.join(base, "Images", "Normal"))
  os.makedirs(os.path.join(base, "Images", "Anomaly"))
  os.makedirs(os.path.join(base, "Masks", "Anomaly"))
  for i, split in enumerate(["train", "train", "test"]):
    rel = f"candle/Data/Images/Normal/{i:04d}.JPG"
    img = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    Image.fromarray(img).save(os.path.join(root, rel), format="JPEG")
    rows.append(dict(object="candle", split=split, label="normal", image=rel,
                     mask=""))
  for i in range(2):
    rel = f"candle/Data/Images/Anomaly/{i:03d}.JPG"
    mrel = f"candle/Data/Masks/Anomaly/{i:03d}.png"
    img = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    Image.fromarray(img).save(os.path.join(root, rel), format="JPEG")
    mask = np.zeros((16, 16), np.uint8)
    mask[2:6, 3:9] = 1  # VisA masks hold region ids, not 255.
    mask[10:12, 10:14] = 2 + i
    Image.fromarray(mask).save(os.path.join(root, mrel))
    rows.append(dict(object="candle", split="test", label="anomaly",
                     image=rel, mask=mrel))
  os.makedirs(os.path.join(root, "split_csv"))
  with open(os.path.join(root, "split_csv", "1cls.csv"), "w",
            newline="") as f:
    w = csv.DictWriter(f, fieldnames=["object", "split", "label", "image",
                                      "mask"])
    w.writeheader()
    w.writerows(rows)


def test_visa_build_and_read(tmp_path):
  root = str(tmp_path / "visa")
  _write_visa(root)
  splits = tfds_builders.build_and_load("visa", "candle", manual_dir=root,
                                        data_dir=str(tmp_path / "tfds"))
  assert len(splits["train"]) == 2 and len(splits["test"]) == 3
  test = _by_filename(splits["test"])
  n_anomalous = 0
  for name, ex in test.items():
    assert ex["image"].shape == (16, 16, 3)
    assert ex["mask"].shape == (16, 16, 1)
    # JPEGs are stored unchanged: PIL decodes the same pixels.
    np.testing.assert_array_equal(
        ex["image"], np.asarray(Image.open(os.path.join(root, name))))
    if "Normal" in name:
      assert ex["label"] == 0 and ex["defect"] == b"good"
      assert not ex["mask"].any()
    else:
      n_anomalous += 1
      assert ex["label"] == 1 and ex["defect"] == b"anomaly"
      expected = np.zeros((16, 16), np.uint8)
      expected[2:6, 3:9] = 255
      expected[10:12, 10:14] = 255
      np.testing.assert_array_equal(ex["mask"][..., 0], expected)
  assert n_anomalous == 2
  assert "tensorflow" not in sys.modules
