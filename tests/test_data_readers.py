"""Dataset readers: MVTec layout (real magnetic tile + generated), errors."""

import logging as std_logging
import os

import numpy as np
from PIL import Image
import pytest

from dicofun.data import errors
from dicofun.data import images
from dicofun.data import mvtec
from dicofun.data import pipeline
from dicofun.data import records as records_lib


def _write(path, arr):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(np.asarray(arr, np.uint8)).save(path)


def make_mvtec(root, *, n_train=3, n_good=2, defects=None, exts=(".png",),
               missing_masks=()):
  """Writes a tiny MVTec-layout category; returns its directory."""
  defects = defects or {"scratch": 2}
  rng = np.random.default_rng(0)
  k = 0
  for i in range(n_train):
    _write(os.path.join(root, "train", "good",
                        f"{i:03d}{exts[k % len(exts)]}"),
           rng.integers(0, 255, (8, 10, 3)))
    k += 1
  for i in range(n_good):
    _write(os.path.join(root, "test", "good", f"{i:03d}{exts[k % len(exts)]}"),
           rng.integers(0, 255, (8, 10)))
    k += 1
  for d, n in defects.items():
    for i in range(n):
      _write(os.path.join(root, "test", d, f"{i:03d}{exts[k % len(exts)]}"),
             rng.integers(0, 255, (8, 10, 3)))
      k += 1
      if f"{d}/{i:03d}" in missing_masks:
        continue
      m = np.zeros((8, 10), np.uint8)
      m[2:4, 3:6] = 255
      _write(os.path.join(root, "ground_truth", d,
                          f"{i:03d}_mask{exts[k % len(exts)]}"), m)
  return str(root)


def test_magnetic_tile_counts_exact(magnetic_tile_dir):
  recs = mvtec.read_mvtec(magnetic_tile_dir, category="magnetic_tile")
  assert records_lib.count_by(recs, "split", "defect") == {
      ("train", "good"): 761,
      ("test", "good"): 191,
      ("test", "blowhole"): 115,
      ("test", "break"): 85,
      ("test", "crack"): 57,
      ("test", "fray"): 32,
      ("test", "uneven"): 103,
  }
  assert records_lib.count_by(recs, "split", "label") == {
      ("train", 0): 761, ("test", 0): 191, ("test", 1): 392}
  assert all(r.category == "magnetic_tile" for r in recs)
  assert all(r.image_path.endswith(".jpg") for r in recs)
  for r in recs:
    if r.label == 1:
      assert r.mask_path is not None and os.path.isfile(r.mask_path)
      stem = os.path.splitext(os.path.basename(r.image_path))[0]
      assert os.path.basename(r.mask_path) == f"{stem}_mask.png"
      assert os.path.basename(os.path.dirname(r.mask_path)) == r.defect
    else:
      assert r.mask_path is None and r.defect == "good"


def test_magnetic_tile_order_is_deterministic_and_one_mask_decodes(
    magnetic_tile_dir):
  a = mvtec.read_mvtec(magnetic_tile_dir)
  b = mvtec.read_mvtec(magnetic_tile_dir + os.sep)
  assert a == b
  train = [r.image_path for r in a if r.split == "train"]
  assert train == sorted(train)
  anomalous = next(r for r in a if r.label == 1)
  m = images.load_mask(anomalous.mask_path)
  img = images.load_image(anomalous.image_path)
  assert m.dtype == bool and m.any() and m.shape == img.shape[:2]
  assert img.dtype == np.uint8 and img.shape[-1] == 3
  # Grayscale source: the three channels are equal.
  np.testing.assert_array_equal(img[..., 0], img[..., 2])


def test_generated_fixture_mixed_extensions(tmp_path):
  root = make_mvtec(tmp_path / "cat", n_train=4, n_good=3,
                    defects={"crack": 3, "hole": 2},
                    exts=(".bmp", ".tif", ".PNG", ".jpeg"))
  # Non-image files and hidden files are ignored.
  (tmp_path / "cat" / "train" / "good" / "notes.txt").write_text("x")
  _write(os.path.join(root, "train", "good", ".hidden.png"),
         np.zeros((4, 4)))
  recs = mvtec.read_mvtec(root)
  assert records_lib.count_by(recs, "split", "defect") == {
      ("train", "good"): 4, ("test", "good"): 3, ("test", "crack"): 3,
      ("test", "hole"): 2}
  assert {r.category for r in recs} == {"cat"}
  exts = {os.path.splitext(r.image_path)[1] for r in recs}
  assert exts == {".bmp", ".tif", ".PNG", ".jpeg"}
  for r in recs:
    assert (r.mask_path is not None) == (r.label == 1)
  arr = pipeline.load_arrays(recs, pipeline.Preprocess(image_size=8,
                                                       crop_fraction=1.0),
                             num_workers=2)
  assert arr["image"].shape == (12, 8, 8, 3)
  assert arr["label"].tolist() == [0] * 7 + [1] * 5
  assert (arr["mask"][7:].sum((1, 2)) > 0).all()
  assert (arr["mask"][:7] == 0).all()


def test_missing_root_names_path_and_url(tmp_path):
  missing = str(tmp_path / "no_such_category")
  with pytest.raises(errors.DatasetNotFoundError) as e:
    mvtec.read_mvtec(missing)
  msg = str(e.value)
  assert missing in msg
  assert "https://www.mvtec.com/company/research/datasets/mvtec-ad" in msg
  assert "https://github.com/amazon-science/spot-diff" in msg
  assert "DICOFUN_DATA" in msg and "config.dataset.root" in msg
  assert isinstance(e.value, ValueError)


def test_corrupt_image_names_file(tmp_path):
  bad = tmp_path / "broken.png"
  bad.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
  with pytest.raises(errors.CorruptImageError, match="broken.png"):
    images.load_image(bad)
  with pytest.raises(errors.CorruptImageError, match="broken.png"):
    images.load_mask(bad)
  # Truncated: a valid header but cut data.
  good = tmp_path / "ok.png"
  Image.fromarray(np.random.default_rng(0).integers(
      0, 255, (64, 64, 3), dtype=np.uint8)).save(good)
  cut = tmp_path / "cut.png"
  cut.write_bytes(good.read_bytes()[:200])
  with pytest.raises(errors.CorruptImageError, match="cut.png"):
    images.load_image(cut)


def test_empty_image_file_is_named_with_the_fix(tmp_path):
  empty = tmp_path / "empty.png"
  empty.write_bytes(b"")
  with pytest.raises(errors.CorruptImageError) as e:
    images.load_image(empty)
  assert str(e.value) == (
      f"cannot decode image file {str(empty)!r}: UnidentifiedImageError: "
      f"cannot identify image file {str(empty)!r}. Remove or replace the "
      "file.")


def test_corrupt_image_in_pipeline_names_file(tmp_path):
  root = make_mvtec(tmp_path / "c")
  recs = mvtec.read_mvtec(root)
  with open(recs[1].image_path, "wb") as f:
    f.write(b"garbage")
  with pytest.raises(errors.CorruptImageError) as e:
    pipeline.load_arrays(recs, pipeline.Preprocess(image_size=8),
                         num_workers=2)
  assert recs[1].image_path in str(e.value)


def test_empty_category(tmp_path):
  root = make_mvtec(tmp_path / "c")
  for n in os.listdir(os.path.join(root, "train", "good")):
    os.remove(os.path.join(root, "train", "good", n))
  with pytest.raises(errors.EmptyCategoryError, match="train"):
    mvtec.read_mvtec(root)
  root2 = make_mvtec(tmp_path / "d", n_good=0, defects={"x": 0})
  with pytest.raises(errors.EmptyCategoryError, match="test"):
    mvtec.read_mvtec(root2)


def test_missing_mask_gets_none_and_a_warning(tmp_path, caplog):
  root = make_mvtec(tmp_path / "c", defects={"scratch": 3},
                    missing_masks=("scratch/001",))
  with caplog.at_level(std_logging.WARNING):
    recs = mvtec.read_mvtec(root)
  assert "no mask" in caplog.text
  by_name = {os.path.basename(r.image_path): r for r in recs
             if r.defect == "scratch"}
  assert by_name["001.png"].mask_path is None
  assert by_name["000.png"].mask_path is not None
  assert by_name["001.png"].label == 1
  test = [r for r in recs if r.split == "test"]
  with pytest.raises(errors.MissingMaskError) as e:
    pipeline.load_arrays(test, pipeline.Preprocess(image_size=8))
  msg = str(e.value)
  assert by_name["001.png"].image_path in msg
  assert os.path.join(root, "ground_truth", "scratch", "001_mask.png") in msg
  assert "config.dataset.allow_missing_masks=True" in msg


def test_load_mask_any_nonzero_and_colour(tmp_path):
  m = np.zeros((5, 6), np.uint8)
  m[1, 2] = 1  # VisA-style small region ids count as anomalous.
  m[3, 4] = 7
  _write(str(tmp_path / "m.png"), m)
  got = images.load_mask(tmp_path / "m.png")
  assert got.dtype == bool and got.sum() == 2 and got[1, 2] and got[3, 4]
  rgb = np.zeros((5, 6, 3), np.uint8)
  rgb[0, 0, 2] = 200
  _write(str(tmp_path / "rgb.png"), rgb)
  got = images.load_mask(tmp_path / "rgb.png")
  assert got.shape == (5, 6) and got.sum() == 1 and got[0, 0]


def test_load_image_grayscale_16bit_to_rgb(tmp_path):
  g = (np.arange(12, dtype=np.uint16).reshape(3, 4) * 5000)
  Image.fromarray(g).save(tmp_path / "g16.png")
  img = images.load_image(tmp_path / "g16.png")
  assert img.shape == (3, 4, 3) and img.dtype == np.uint8
  np.testing.assert_array_equal(img[..., 0], np.rint(g / 257.0))
  assert images.is_image_file("A.JPG") and images.is_image_file("b.TiFf")
  assert not images.is_image_file("c.txt")
