"""Tests for the procedural MVTec-layout dataset (dicofun.data.synthetic)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

from dicofun.data import synthetic

_SMALL = dict(num_train=6, num_test_good=3, num_test_anomalous=8,
              image_size=48)


def _tree(category_dir: str) -> dict[str, str]:
  """Relative path -> sha256 of every file under ``category_dir``."""
  out = {}
  for dirpath, _, names in os.walk(category_dir):
    for n in names:
      p = os.path.join(dirpath, n)
      with open(p, "rb") as f:
        out[os.path.relpath(p, category_dir)] = hashlib.sha256(
            f.read()).hexdigest()
  return out


def _load(path: str) -> np.ndarray:
  return np.asarray(Image.open(path))


@pytest.mark.parametrize("category", synthetic.CATEGORIES)
def test_layout_counts_and_masks(tmp_path, category):
  d = synthetic.generate(str(tmp_path), category=category, **_SMALL)
  assert d == os.path.join(str(tmp_path), category)
  train = sorted(os.listdir(os.path.join(d, "train", "good")))
  assert train == [f"{i:03d}.png" for i in range(6)]
  assert len(os.listdir(os.path.join(d, "test", "good"))) == 3
  # 8 anomalies spread over the 4 defect types: 2 each.
  for defect in synthetic.DEFECTS:
    names = sorted(os.listdir(os.path.join(d, "test", defect)))
    assert names == ["000.png", "001.png"]
    masks = sorted(os.listdir(os.path.join(d, "ground_truth", defect)))
    assert masks == ["000_mask.png", "001_mask.png"]
    for n in names:
      img = _load(os.path.join(d, "test", defect, n))
      assert img.shape == (48, 48, 3) and img.dtype == np.uint8
      mask = _load(os.path.join(d, "ground_truth", defect,
                                n.replace(".png", "_mask.png")))
      assert mask.shape == (48, 48)
      assert set(np.unique(mask)) <= {0, 255}
      assert (mask == 255).sum() >= synthetic.MIN_MASK_PIXELS
      # A defect is local: it never covers most of the image.
      assert (mask == 255).mean() < 0.5
  assert not os.path.exists(os.path.join(d, "ground_truth", "good"))


def test_deterministic_and_seed_dependent(tmp_path):
  a = _tree(synthetic.generate(str(tmp_path / "a"), **_SMALL))
  b = _tree(synthetic.generate(str(tmp_path / "b"), **_SMALL))
  assert a == b
  c = _tree(synthetic.generate(str(tmp_path / "c"), seed=1, **_SMALL))
  assert set(c) == set(a)
  assert c["train/good/000.png"] != a["train/good/000.png"]


def test_normal_images_vary(tmp_path):
  d = synthetic.generate(str(tmp_path), category="object", **_SMALL)
  x0 = _load(os.path.join(d, "train", "good", "000.png")).astype(int)
  x1 = _load(os.path.join(d, "train", "good", "001.png")).astype(int)
  assert np.abs(x0 - x1).mean() > 1.0


def test_idempotent_and_regenerates_on_change(tmp_path):
  d = synthetic.generate(str(tmp_path), **_SMALL)
  manifest = os.path.join(d, "manifest.json")
  probe = os.path.join(d, "train", "good", "000.png")
  os.utime(probe, ns=(1, 1))  # A regeneration would rewrite the file.
  assert synthetic.generate(str(tmp_path), **_SMALL) == d
  assert os.stat(probe).st_mtime_ns == 1
  # Other arguments: regenerated, stale files gone.
  small = dict(_SMALL, num_train=2)
  synthetic.generate(str(tmp_path), **small)
  assert sorted(os.listdir(os.path.join(d, "train", "good"))) == [
      "000.png", "001.png"]
  with open(manifest) as f:
    assert json.load(f)["args"]["num_train"] == 2
  # A missing file triggers regeneration too.
  os.remove(os.path.join(d, "test", "blob", "000.png"))
  synthetic.generate(str(tmp_path), **small)
  assert os.path.isfile(os.path.join(d, "test", "blob", "000.png"))


def test_refuses_foreign_directory(tmp_path):
  foreign = tmp_path / "texture"
  foreign.mkdir()
  (foreign / "keep.txt").write_text("user data")
  with pytest.raises(FileExistsError):
    synthetic.generate(str(tmp_path), **_SMALL)
  assert (foreign / "keep.txt").read_text() == "user data"


@pytest.mark.parametrize("category", synthetic.CATEGORIES)
def test_mask_covers_changed_pixels_and_sizes_vary(category):
  areas = []
  for i in range(24):
    defect = synthetic.DEFECTS[i % len(synthetic.DEFECTS)]
    s = synthetic.make_sample(category, image_size=64, index=i // 4,
                              defect=defect)
    diff = np.abs(s.image.astype(int) - s.clean.astype(int)).max(-1)
    assert diff.max() > synthetic.MASK_THRESHOLD
    # Every pixel changed beyond the threshold is in the mask ...
    assert not np.any((diff > synthetic.MASK_THRESHOLD) & ~s.mask)
    # ... and every mask pixel was changed.
    assert np.all(diff[s.mask] > 0)
    areas.append(s.mask.mean())
  areas = np.array(areas)
  assert (areas < 0.02).any(), areas
  assert (areas > 0.02).any(), areas
  normal = synthetic.make_sample(category, image_size=64, split="train")
  assert not normal.mask.any()
  np.testing.assert_array_equal(normal.image, normal.clean)


def test_low_contrast_anomalies_exist():
  # The median change inside some masks is small (faint defects).
  medians = []
  for i in range(16):
    defect = synthetic.DEFECTS[i % len(synthetic.DEFECTS)]
    s = synthetic.make_sample("texture", image_size=64, index=i // 4,
                              defect=defect)
    diff = np.abs(s.image.astype(int) - s.clean.astype(int)).max(-1)
    medians.append(np.median(diff[s.mask]))
  assert min(medians) < 30, medians


def test_saved_files_match_make_sample(tmp_path):
  d = synthetic.generate(str(tmp_path), category="object", **_SMALL)
  s = synthetic.make_sample("object", image_size=48, split="test", index=1,
                            defect="crack")
  np.testing.assert_array_equal(
      _load(os.path.join(d, "test", "crack", "001.png")), s.image)
  np.testing.assert_array_equal(
      _load(os.path.join(d, "ground_truth", "crack", "001_mask.png")) > 0,
      s.mask)


def test_bad_arguments(tmp_path):
  with pytest.raises(ValueError, match="category"):
    synthetic.generate(str(tmp_path), category="nope")
  with pytest.raises(ValueError):
    synthetic.generate(str(tmp_path), image_size=8)
  with pytest.raises(ValueError, match="defect"):
    synthetic.make_sample("texture", defect="dent")


def test_readable_as_mvtec(tmp_path):
  from dicofun.data import mvtec  # pylint: disable=g-import-not-at-top
  from dicofun.data import records  # pylint: disable=g-import-not-at-top
  d = synthetic.generate(str(tmp_path), category="texture", **_SMALL)
  recs = mvtec.read_mvtec(d, category="texture")
  counts = records.count_by(recs, "split", "label")
  assert counts == {("train", 0): 6, ("test", 0): 3, ("test", 1): 8}
  for r in recs:
    if r.label == records.ANOMALOUS:
      assert r.mask_path is not None and os.path.isfile(r.mask_path)
    else:
      assert r.mask_path is None and r.defect == "good"
  assert {r.defect for r in recs if r.label} == set(synthetic.DEFECTS)


def test_module_command_runs_without_the_runpy_warning(tmp_path):
  # dicofun.data imports the generator; a plain module run with -m would
  # warn "found in sys.modules" (it is a package with a __main__ instead).
  root = tmp_path / "line"
  proc = subprocess.run(
      [sys.executable, "-W", "error::RuntimeWarning", "-m",
       "dicofun.data.synthetic", f"--root={root}", "--layout=inspect",
       "--num_train=2", "--num_test_anomalous=1", "--image_size=16"],
      capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr
  assert "RuntimeWarning" not in proc.stderr
  assert sorted(os.listdir(root / "good")) == ["000.png", "001.png"]
  assert len(os.listdir(root / "defect")) == 1


def test_inspect_folder_again_with_the_same_args_is_a_no_op(tmp_path):
  root = str(tmp_path / "line")
  kw = dict(num_good=2, num_defective=1, image_size=16)
  synthetic.write_inspect_folder(root, **kw)
  first = os.path.getmtime(os.path.join(root, "good", "000.png"))
  assert synthetic.write_inspect_folder(root, **kw) == root
  assert os.path.getmtime(os.path.join(root, "good", "000.png")) == first
  with pytest.raises(FileExistsError, match="not empty"):
    synthetic.write_inspect_folder(root, **{**kw, "num_good": 3})
  other = tmp_path / "other"
  other.mkdir()
  (other / "x.png").write_bytes(b"")
  with pytest.raises(FileExistsError, match="not empty"):
    synthetic.write_inspect_folder(str(other), **kw)
