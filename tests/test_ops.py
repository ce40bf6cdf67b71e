"""Tests of dicofun.ops.coreset, .lof and .maps against references."""

import itertools

import jax
import numpy as np
import pytest
from scipy import ndimage
from sklearn.neighbors import LocalOutlierFactor

from dicofun.ops import coreset
from dicofun.ops import lof
from dicofun.ops import maps


def _radius(x, centres):
  d = ((x[:, None, :] - x[centres][None]) ** 2).sum(-1)
  return np.sqrt(d.min(1).max())


# ----------------------------------------------------------------- coreset


def test_coreset_count_order_and_determinism():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(500, 40)).astype(np.float32)
  sel = coreset.greedy_coreset(x, fraction=0.1, projection_dim=16, seed=3)
  assert sel.shape == (50,)
  assert len(set(sel.tolist())) == 50
  assert sel[0] == np.random.default_rng(3).integers(500)
  again = coreset.greedy_coreset(x, fraction=0.1, projection_dim=16, seed=3)
  np.testing.assert_array_equal(sel, again)
  other = coreset.greedy_coreset(x, fraction=0.1, projection_dim=16, seed=4)
  assert not np.array_equal(sel, other)
  assert coreset.greedy_coreset(x, num=7).shape == (7,)
  with pytest.raises(ValueError):
    coreset.greedy_coreset(x)
  with pytest.raises(ValueError):
    coreset.greedy_coreset(x, fraction=0.5, num=3)


def test_coreset_greedy_rule_without_projection():
  # No projection (D ≤ projection_dim): every pick after the first must be
  # the point farthest from those already picked.
  rng = np.random.default_rng(1)
  x = rng.normal(size=(120, 3)).astype(np.float32)
  sel = coreset.greedy_coreset(x, num=10, projection_dim=128, seed=0)
  for t in range(1, 10):
    d = ((x[:, None] - x[sel[:t]][None]) ** 2).sum(-1).min(1)
    assert sel[t] == np.argmax(d)


def test_coreset_k_centre_bound_and_beats_random():
  rng = np.random.default_rng(2)
  x = rng.normal(size=(14, 2)).astype(np.float32)
  sel = coreset.greedy_coreset(x, num=3, projection_dim=0, seed=0)
  opt = min(_radius(x, list(c)) for c in itertools.combinations(range(14), 3))
  assert _radius(x, sel) <= 2.0 * opt + 1e-6
  # On clustered data with a projection, the greedy cover beats random.
  y = np.concatenate([rng.normal(size=(200, 64)) + 8 * rng.normal(size=(1, 64))
                      for _ in range(5)]).astype(np.float32)
  sel = coreset.greedy_coreset(y, num=20, projection_dim=16, seed=0)
  rand = rng.choice(len(y), 20, replace=False)
  assert _radius(y, sel) < _radius(y, rand)
  # Every cluster gets a centre.
  assert len(set((sel // 200).tolist())) == 5


def test_coreset_duplicates_never_repeat():
  x = np.zeros((10, 4), np.float32)
  x[:3] = 1.0
  sel = coreset.greedy_coreset(x, num=10, projection_dim=0)
  assert sorted(sel.tolist()) == list(range(10))


def test_project_chunked_equals_unchunked():
  rng = np.random.default_rng(3)
  x = rng.normal(size=(100, 32)).astype(np.float32)
  a = coreset.project(x, projection_dim=8, seed=1, chunk=1000)
  b = coreset.project(x, projection_dim=8, seed=1, chunk=30)
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5,
                             atol=1e-5)


# --------------------------------------------------------------------- LOF


def test_lof_matches_sklearn():
  rng = np.random.default_rng(4)
  n, p, c = 40, 7, 5
  feats = rng.normal(size=(n, p, c)).astype(np.float32)
  feats[3, 2] += 6.0  # a clear outlier at position 2
  # Tiny chunk bound so several position chunks (and padding) are used.
  out = lof.lof_per_position(feats, k=6, max_chunk_bytes=4 * 4 * n * n * 2)
  assert out.shape == (n, p)
  for pos in range(p):
    ref = -LocalOutlierFactor(n_neighbors=6).fit(
        feats[:, pos].astype(np.float64)).negative_outlier_factor_
    np.testing.assert_allclose(out[:, pos], ref, rtol=1e-4)
  assert np.argmax(out[:, 2]) == 3 and out[3, 2] > 2.0


def test_lof_errors():
  with pytest.raises(ValueError):
    lof.lof_per_position(np.zeros((6, 2, 3), np.float32), k=6)


# -------------------------------------------------------------------- maps


@pytest.mark.parametrize("sigma,shape", [(4.0, (2, 40, 33)),
                                         (1.5, (1, 7, 9)),
                                         (4.0, (1, 10, 12))])
def test_blur_matches_scipy(sigma, shape):
  rng = np.random.default_rng(5)
  x = rng.random(shape).astype(np.float32)
  got = np.asarray(maps.gaussian_blur(x, sigma))
  ref = np.stack([ndimage.gaussian_filter(m.astype(np.float64), sigma,
                                          mode="reflect", truncate=4.0)
                  for m in x])
  np.testing.assert_allclose(got, ref, atol=1e-4)


def test_patch_scores_to_map():
  rng = np.random.default_rng(6)
  s = rng.random((3, 4, 4)).astype(np.float32)
  m = np.asarray(maps.patch_scores_to_map(s, size=32, sigma=4.0))
  assert m.shape == (3, 32, 32) and m.dtype == np.float32
  up = np.asarray(jax.image.resize(s, (3, 32, 32), "bilinear",
                                   antialias=False))
  ref = np.stack([ndimage.gaussian_filter(u, 4.0) for u in up])
  np.testing.assert_allclose(m, ref, atol=1e-4)
  # A constant grid stays constant.
  c = np.asarray(maps.patch_scores_to_map(np.full((1, 2, 2), 0.7), size=16))
  np.testing.assert_allclose(c, 0.7, atol=1e-6)
  # Half-pixel bilinear: upsampling ×2 of [0, 1] gives [0, .25, .75, 1].
  r = np.asarray(maps.patch_scores_to_map(
      np.array([[[0.0, 1.0]] * 2]), size=4, sigma=0.0))
  np.testing.assert_allclose(r[0, 0], [0.0, 0.25, 0.75, 1.0], atol=1e-6)


def test_local_average_and_resize():
  x = np.arange(2 * 4 * 5 * 3, dtype=np.float32).reshape(2, 4, 5, 3)
  out = np.asarray(maps.local_average(x, 3))
  assert out.shape == x.shape
  # Interior: plain 3×3 mean.
  np.testing.assert_allclose(out[1, 2, 2], x[1, 1:4, 1:4].mean((0, 1)),
                             rtol=1e-6)
  # Corner with zero padding counted (PatchCore / AvgPool2d default).
  np.testing.assert_allclose(out[0, 0, 0], x[0, :2, :2].sum((0, 1)) / 9.0,
                             rtol=1e-6)
  valid = np.asarray(maps.local_average(x, 3, count_include_pad=False))
  np.testing.assert_allclose(valid[0, 0, 0], x[0, :2, :2].mean((0, 1)),
                             rtol=1e-6)
  np.testing.assert_allclose(valid[1, 2, 2], out[1, 2, 2], rtol=1e-6)
  r = np.asarray(maps.resize_features(x, (8, 10)))
  assert r.shape == (2, 8, 10, 3)
  np.testing.assert_allclose(r[:, 0, 0], x[:, 0, 0], atol=1e-5)
