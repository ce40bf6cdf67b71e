"""Preprocessing, array loading, batching, sharding, folder reader, progress."""

import logging as std_logging
import os

import numpy as np
from PIL import Image
import pytest

from dicofun import progress as progress_lib
from dicofun.data import errors
from dicofun.data import folder
from dicofun.data import pipeline
from dicofun.data import records as records_lib

Record = records_lib.Record


def _save(path, arr):
  os.makedirs(os.path.dirname(str(path)), exist_ok=True)
  Image.fromarray(np.asarray(arr, np.uint8)).save(path)


def _square_pair(h=60, w=90, box=(20, 36, 40, 61)):
  img = np.full((h, w, 3), 30, np.uint8)
  mask = np.zeros((h, w), bool)
  r0, r1, c0, c1 = box
  img[r0:r1, c0:c1] = 230
  mask[r0:r1, c0:c1] = True
  return img, mask


@pytest.mark.parametrize("crop", [1.0, 0.875])
def test_image_and_mask_stay_aligned(crop):
  img, mask = _square_pair()
  pre = pipeline.Preprocess(image_size=32, crop_fraction=crop,
                            mean=(0., 0., 0.), std=(1., 1., 1.))
  x, m = pre.image(img), pre.mask(mask)
  assert x.shape == (32, 32, 3) and x.dtype == np.float32
  assert m.shape == (32, 32) and m.dtype == np.float32
  bright = x[..., 0] > 0.5
  iou = (bright & (m > 0)).sum() / (bright | (m > 0)).sum()
  assert iou > 0.8
  centroid = lambda a: np.argwhere(a).mean(0)
  np.testing.assert_allclose(centroid(bright), centroid(m > 0), atol=0.6)


def test_mask_is_nearest_and_binary_hand_values():
  h, w = 7, 11
  mask = np.random.default_rng(0).random((h, w)) > 0.6
  pre = pipeline.Preprocess(image_size=5, crop_fraction=1.0)
  got = pre.mask(mask)
  assert set(np.unique(got)) <= {0.0, 1.0}
  # Nearest neighbour with half-pixel centres, computed by hand.
  rows = np.floor((np.arange(5) + 0.5) * h / 5).astype(int)
  cols = np.floor((np.arange(5) + 0.5) * w / 5).astype(int)
  np.testing.assert_array_equal(got, mask[rows][:, cols].astype(np.float32))


def test_crop_fraction_sizes_and_edge_defect():
  assert pipeline.Preprocess(image_size=224).resize_size == 256
  assert pipeline.Preprocess(image_size=224, crop_fraction=1.0).resize_size == 224
  assert pipeline.Preprocess(image_size=448).resize_size == 512
  mask = np.zeros((40, 80), bool)
  mask[:, :3] = True  # A defect along the left edge.
  kept = pipeline.Preprocess(image_size=32, crop_fraction=1.0).mask(mask)
  cut = pipeline.Preprocess(image_size=32, crop_fraction=0.875).mask(mask)
  assert kept.shape == cut.shape == (32, 32)
  assert kept.sum() > 0 and cut.sum() == 0
  with pytest.raises(ValueError):
    pipeline.Preprocess(crop_fraction=0.0)
  with pytest.raises(ValueError):
    pipeline.Preprocess(crop_fraction=1.2)


def test_normalisation_hand_value_and_key():
  pre = pipeline.Preprocess(image_size=4, crop_fraction=1.0)
  x = pre.image(np.full((9, 6, 3), 51, np.uint8))
  want = (0.2 - np.array(pre.mean)) / np.array(pre.std)
  np.testing.assert_allclose(x, np.broadcast_to(want, (4, 4, 3)), atol=1e-5)
  gray = pre.image(np.full((9, 6), 51, np.uint8))
  np.testing.assert_allclose(gray, x)
  k = pre.key()
  assert k == pipeline.Preprocess(image_size=4, crop_fraction=1.0).key()
  assert k != pipeline.Preprocess(image_size=4, crop_fraction=0.875).key()
  assert k != pipeline.Preprocess(image_size=4, crop_fraction=1.0,
                                  mean=(0.5,) * 3, std=(0.5,) * 3).key()
  assert k != pipeline.Preprocess(image_size=8, crop_fraction=1.0).key()


def _records(tmp_path, n_normal=5, n_anom=3, missing=()):
  rng = np.random.default_rng(1)
  recs = []
  for i in range(n_normal):
    p = tmp_path / f"n{i}.png"
    _save(p, rng.integers(0, 255, (12, 16, 3)))
    recs.append(Record(str(p), None, 0, "good", "test"))
  for i in range(n_anom):
    img, mask = _square_pair(12, 16, (2 + i, 8, 3, 9))
    p, mp = tmp_path / f"a{i}.png", tmp_path / f"a{i}_mask.png"
    _save(p, img)
    _save(mp, mask * 255)
    recs.append(Record(str(p), None if i in missing else str(mp), 1, "x",
                       "test"))
  return recs


def test_load_arrays_and_missing_mask(tmp_path, caplog):
  recs = _records(tmp_path, missing=(1,))
  pre = pipeline.Preprocess(image_size=8, crop_fraction=1.0)
  with pytest.raises(errors.MissingMaskError, match="allow_missing_masks"):
    pipeline.load_arrays(recs, pre)
  with caplog.at_level(std_logging.WARNING):
    arr = pipeline.load_arrays(recs, pre, num_workers=3,
                               allow_missing_mask=True)
  assert caplog.text.count("have no mask") == 1
  assert "1 anomalous" in caplog.text
  assert arr["image"].shape == (8, 8, 8, 3)
  assert arr["label"].dtype == np.int32
  assert arr["label"].tolist() == [0] * 5 + [1] * 3
  assert arr["has_mask"].tolist() == [True] * 6 + [False, True]
  assert (arr["mask"][:5] == 0).all() and (arr["mask"][6] == 0).all()
  assert arr["mask"][5].sum() > 0 and arr["mask"][7].sum() > 0
  # Rows are in record order (thread pool keeps order).
  for i in (0, 4):
    np.testing.assert_allclose(
        arr["image"][i],
        pre.image(np.asarray(Image.open(recs[i].image_path))), atol=1e-6)
  masks_only = pipeline.load_arrays(recs, pre, allow_missing_mask=True,
                                    with_images=False)
  assert "image" not in masks_only
  for k in ("mask", "label", "has_mask"):
    np.testing.assert_array_equal(masks_only[k], arr[k])


def test_iterate_batches_shuffle_determinism(tmp_path):
  recs = _records(tmp_path, n_normal=7, n_anom=3)
  pre = pipeline.Preprocess(image_size=8, crop_fraction=1.0)
  kw = dict(batch_size=4, process_index=0, process_count=1, num_workers=2)
  order = lambda **k: np.concatenate(
      [b["index"] for b in pipeline.iterate_batches(recs, pre, **kw, **k)])
  np.testing.assert_array_equal(order(), np.arange(10))
  a = order(shuffle=True, seed=0)
  np.testing.assert_array_equal(a, order(shuffle=True, seed=0))
  np.testing.assert_array_equal(a, np.random.default_rng(0).permutation(10))
  assert not np.array_equal(a, order(shuffle=True, seed=1))
  assert sorted(a) == list(range(10))
  batches = list(pipeline.iterate_batches(recs, pre, shuffle=True, seed=0,
                                          drop_last=True, **kw))
  assert [len(b["index"]) for b in batches] == [4, 4]
  ref = pipeline.load_arrays(recs, pre)
  for b in batches:
    assert b["image"].shape == (4, 8, 8, 3) and b["mask"].shape == (4, 8, 8)
    np.testing.assert_allclose(b["image"], ref["image"][b["index"]])
    np.testing.assert_array_equal(b["mask"], ref["mask"][b["index"]])
    np.testing.assert_array_equal(b["label"], ref["label"][b["index"]])
  assert pipeline.num_batches(10, batch_size=4, drop_last=True) == 2
  assert pipeline.num_batches(10, batch_size=4, drop_last=False) == 3


def test_shard_indices_disjoint_cover_and_remainder():
  shards = [pipeline.shard_indices(12, process_index=i, process_count=3)
            for i in range(3)]
  assert [len(s) for s in shards] == [4, 4, 4]
  np.testing.assert_array_equal(np.concatenate(shards), np.arange(12))
  np.testing.assert_array_equal(shards[1], [4, 5, 6, 7])
  # Remainder: dropped without padding, padded with -1 otherwise.
  dropped = [pipeline.shard_indices(11, process_index=i, process_count=3)
             for i in range(3)]
  assert [len(s) for s in dropped] == [3, 3, 3]
  assert len(set(np.concatenate(dropped))) == 9
  padded = [pipeline.shard_indices(11, process_index=i, process_count=3,
                                   pad=True) for i in range(3)]
  assert [len(s) for s in padded] == [4, 4, 4]
  flat = np.concatenate(padded)
  assert sorted(flat[flat >= 0]) == list(range(11))
  assert (flat == -1).sum() == 1
  with pytest.raises(ValueError):
    pipeline.shard_indices(4, process_index=2, process_count=2)


def test_iterate_batches_processes_read_disjoint_shards(tmp_path):
  recs = _records(tmp_path, n_normal=6, n_anom=3)  # 9 records, 2 processes.
  pre = pipeline.Preprocess(image_size=8, crop_fraction=1.0)
  seen = []
  for p in range(2):
    idx = [b["index"] for b in pipeline.iterate_batches(
        recs, pre, batch_size=2, shuffle=True, seed=5, process_index=p,
        process_count=2, num_workers=2)]
    assert [len(i) for i in idx] == [2, 2, 1]  # Equal steps on both.
    seen.append(np.concatenate(idx))
  allv = np.concatenate(seen)
  assert sorted(allv[allv >= 0]) == list(range(9))
  assert (allv == -1).sum() == 1
  assert not set(seen[0]) & set(seen[1][seen[1] >= 0])


def test_iterate_batches_default_process_from_jax(tmp_path):
  recs = _records(tmp_path, n_normal=3, n_anom=0)
  pre = pipeline.Preprocess(image_size=8, crop_fraction=1.0)
  idx = [b["index"] for b in pipeline.iterate_batches(recs, pre, batch_size=2)]
  assert np.concatenate(idx).tolist() == [0, 1, 2]


def test_folder_reader(tmp_path):
  rng = np.random.default_rng(0)
  for i in range(10):
    _save(tmp_path / "ok" / f"img{i:02d}.png", rng.integers(0, 255, (6, 6, 3)))
  for i in range(3):
    _save(tmp_path / "bad" / f"b{i}.jpg", rng.integers(0, 255, (6, 6, 3)))
  _save(tmp_path / "masks" / "b0.png", np.full((6, 6), 255))
  _save(tmp_path / "masks" / "b1_mask.bmp", np.full((6, 6), 255))
  recs = folder.read_folder(str(tmp_path / "ok"),
                            abnormal_dir=str(tmp_path / "bad"),
                            mask_dir=str(tmp_path / "masks"), test_fraction=0.2,
                            seed=0, category="mine")
  assert records_lib.count_by(recs, "split", "label") == {
      ("train", 0): 8, ("test", 0): 2, ("test", 1): 3}
  masks = {os.path.basename(r.image_path): r.mask_path for r in recs
           if r.label == 1}
  assert masks["b0.jpg"].endswith("b0.png")
  assert masks["b1.jpg"].endswith("b1_mask.bmp")
  assert masks["b2.jpg"] is None
  assert {r.category for r in recs} == {"mine"}
  test_normals = lambda seed: sorted(
      r.image_path for r in folder.read_folder(str(tmp_path / "ok"), seed=seed)
      if r.split == "test")
  assert test_normals(0) == test_normals(0)
  assert test_normals(0) == sorted(
      str(tmp_path / "ok" / f"img{i:02d}.png")
      for i in np.random.default_rng(0).permutation(10)[:2])
  assert any(test_normals(0) != test_normals(s) for s in (1, 2, 3))
  with pytest.raises(errors.DatasetNotFoundError, match="nowhere"):
    folder.read_folder(str(tmp_path / "nowhere"))
  with pytest.raises(errors.DatasetNotFoundError, match="nomask"):
    folder.read_folder(str(tmp_path / "ok"), abnormal_dir=str(tmp_path / "bad"),
                       mask_dir=str(tmp_path / "nomask"))


def test_progress_yields_all_and_logs_final_line(caplog):
  with caplog.at_level(std_logging.INFO):
    out = list(progress_lib.progress(iter(range(7)), total=7, desc="things",
                                     every_s=0.0))
  assert out == list(range(7))
  assert "things: 7/7" in caplog.text
  assert "things: 1/7" in caplog.text  # every_s=0 logs each step.
  assert "ETA" in caplog.text
  assert list(progress_lib.progress([1, 2])) == [1, 2]


def test_load_arrays_quiet_and_without_masks(tmp_path, caplog):
  recs = _records(tmp_path, missing=(0,))
  pre = pipeline.Preprocess(image_size=8, crop_fraction=1.0)
  with caplog.at_level(std_logging.INFO):
    arr = pipeline.load_arrays(recs, pre, allow_missing_mask=True, desc=None,
                               with_masks=False)
  assert caplog.text == ""
  assert arr["image"].shape == (8, 8, 8, 3)
  assert (arr["mask"] == 0).all()
  assert arr["has_mask"].tolist() == [True] * 5 + [False, True, True]


def test_progress_tqdm_path(monkeypatch, caplog):
  tqdm = pytest.importorskip("tqdm")
  monkeypatch.setattr(progress_lib, "_tqdm_or_none", lambda: tqdm.tqdm)
  with caplog.at_level(std_logging.INFO):
    out = list(progress_lib.progress(range(5), desc="bar"))
  assert out == list(range(5))
  assert "bar: 5/5" in caplog.text
