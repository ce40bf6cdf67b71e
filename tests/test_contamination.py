"""Contamination protocol (METHODS §4)."""

import json
import logging as std_logging
import numpy as np
import pytest

from dicofun.data import contamination
from dicofun.data import mvtec
from dicofun.data import records as records_lib

Record = records_lib.Record


@pytest.fixture(name="tile", scope="module")
def fixture_tile(magnetic_tile_dir):
  """shared/data/magnetic_tile (or its stand-in: see conftest.py)."""
  return mvtec.read_mvtec(magnetic_tile_dir, category="magnetic_tile")


def _toy(n_train=10, n_good=3, n_anom=4):
  recs = [Record(f"tr{i}", None, 0, "good", "train") for i in range(n_train)]
  recs += [Record(f"tg{i}", None, 0, "good", "test") for i in range(n_good)]
  recs += [Record(f"ta{i}", f"m{i}", 1, "cut", "test") for i in range(n_anom)]
  return recs


def test_magnetic_tile_ratio_01_moves_76(tile):
  res = contamination.contaminate(tile, ratio=0.1, seed=0)
  assert len(res.moved) == 76  # int(0.1 * 761)
  assert len(res.train) == 761 + 76
  assert len(res.test) == 583 - 76
  moved = {r.image_path for r in res.moved}
  assert len(moved) == 76
  assert not moved & {r.image_path for r in res.test}
  assert all(r.split == "train" and r.label == 1 for r in res.moved)
  assert sum(r.label for r in res.train) == 76
  assert all(r.split == "train" for r in res.train)
  assert all(r.split == "test" for r in res.test)
  # Test normals are untouched.
  assert sum(1 for r in res.test if r.label == 0) == 191
  j = res.to_json()
  assert j["ratio"] == 0.1 and j["seed"] == 0 and j["overlap"] is False
  assert sorted(j["moved"]) == sorted(moved)
  json.dumps(j)


def test_overlap_keeps_moved_in_test(tile):
  res = contamination.contaminate(tile, ratio=0.1, seed=0, overlap=True)
  assert len(res.moved) == 76 and len(res.test) == 583
  assert {r.image_path for r in res.moved} <= {r.image_path for r in res.test}
  # The same draw as without overlap.
  no = contamination.contaminate(tile, ratio=0.1, seed=0)
  assert res.moved == no.moved


def test_deterministic_by_seed_and_order_independent(tile):
  a = contamination.contaminate(tile, ratio=0.05, seed=0)
  b = contamination.contaminate(list(reversed(tile)), ratio=0.05, seed=0)
  assert len(a.moved) == 38
  assert [r.image_path for r in a.moved] == [r.image_path for r in b.moved]
  c = contamination.contaminate(tile, ratio=0.05, seed=1)
  assert {r.image_path for r in a.moved} != {r.image_path for r in c.moved}


def test_draw_matches_the_spec_formula():
  recs = _toy(n_train=30, n_anom=8)
  res = contamination.contaminate(recs, ratio=0.1, seed=3)
  anomalies = sorted(r.image_path for r in recs if r.label == 1)
  perm = np.random.default_rng(3).permutation(len(anomalies))
  assert [r.image_path for r in res.moved] == [anomalies[i] for i in perm[:3]]


def test_too_few_anomalies_uses_all(caplog):
  recs = _toy(n_train=100, n_anom=4)
  with caplog.at_level(std_logging.WARNING):
    res = contamination.contaminate(recs, ratio=0.2, seed=0)
  assert len(res.moved) == 4
  assert "only 4" in caplog.text
  assert [r for r in res.test if r.label == 1] == []
  assert len(res.test) == 3


def test_ratio_zero_and_bounds():
  recs = _toy()
  res = contamination.contaminate(recs, ratio=0.0)
  assert res.moved == [] and len(res.train) == 10 and len(res.test) == 7
  for bad in (-0.1, 1.0, 1.5):
    with pytest.raises(ValueError):
      contamination.contaminate(recs, ratio=bad)


def test_result_is_frozen():
  res = contamination.contaminate(_toy(), ratio=0.2)
  assert len(res.moved) == 2
  with pytest.raises(Exception):
    res.train = []  # type: ignore[misc]
