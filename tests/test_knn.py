"""Tests of dicofun.ops.knn against brute-force numpy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dicofun.ops import knn


def _brute(q, b, k, metric="l2"):
  q = q.astype(np.float64)
  b = b.astype(np.float64)
  if metric == "l2":
    d = ((q[:, None, :] - b[None, :, :]) ** 2).sum(-1)
  else:
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    bn = b / np.linalg.norm(b, axis=1, keepdims=True)
    d = 1.0 - qn @ bn.T
  i = np.argsort(d, axis=1, kind="stable")[:, :k]
  return np.take_along_axis(d, i, 1), i


@pytest.mark.parametrize("metric", ["l2", "cosine"])
@pytest.mark.parametrize("n_q,m,k", [(37, 53, 1), (100, 300, 3), (9, 5, 5),
                                     (130, 257, 2)])
def test_knn_matches_brute_force(metric, n_q, m, k):
  rng = np.random.default_rng(n_q * 1000 + m)
  q = rng.normal(size=(n_q, 13)).astype(np.float32)
  b = rng.normal(size=(m, 13)).astype(np.float32)
  # Small chunks so that padding of both queries and bank is exercised.
  d, i = knn.knn(q, b, k=k, metric=metric, query_chunk=32, bank_chunk=64)
  d_ref, i_ref = _brute(q, b, k, metric)
  assert d.shape == (n_q, k) and d.dtype == np.float32
  assert i.shape == (n_q, k) and i.dtype == np.int32
  np.testing.assert_array_equal(i, i_ref)
  np.testing.assert_allclose(d, d_ref, rtol=1e-4, atol=1e-4)
  assert (d >= 0).all()


def test_default_chunks_and_jax_input():
  rng = np.random.default_rng(1)
  q = rng.normal(size=(50, 8)).astype(np.float32)
  b = rng.normal(size=(70, 8)).astype(np.float32)
  d, i = knn.knn(jnp.asarray(q), jnp.asarray(b), k=2)
  d_ref, i_ref = _brute(q, b, 2)
  np.testing.assert_array_equal(i, i_ref)
  np.testing.assert_allclose(d, d_ref, rtol=1e-4, atol=1e-4)


def test_hand_values():
  b = np.array([[0.0, 0.0], [3.0, 4.0], [1.0, 0.0]], np.float32)
  q = np.array([[3.0, 3.0]], np.float32)
  d, i = knn.knn(q, b, k=3)
  np.testing.assert_array_equal(i, [[1, 2, 0]])
  np.testing.assert_allclose(d, [[1.0, 13.0, 18.0]], atol=1e-5)
  d, i = knn.knn(q, b, k=1, metric="cosine")
  np.testing.assert_array_equal(i, [[1]])
  np.testing.assert_allclose(d, [[1.0 - 21.0 / (5 * np.sqrt(18))]], atol=1e-6)


@pytest.mark.parametrize("k", [1, 3])
def test_ties_lower_index_first(k):
  # Integer-valued data: all distances are exact in float32, so duplicates
  # tie exactly, across chunk boundaries too (bank_chunk=8).
  rng = np.random.default_rng(2)
  base = rng.integers(-3, 4, size=(6, 4)).astype(np.float32)
  bank = np.concatenate([base, base, base[::-1], base])  # 24 rows
  q = rng.integers(-3, 4, size=(20, 4)).astype(np.float32)
  d, i = knn.knn(q, bank, k=k, bank_chunk=8, query_chunk=8)
  d_ref, i_ref = _brute(q, bank, k)  # stable argsort: lower index first
  np.testing.assert_array_equal(i, i_ref)
  np.testing.assert_allclose(d, d_ref, atol=1e-5)


def test_errors():
  b = np.zeros((3, 2), np.float32)
  q = np.zeros((4, 2), np.float32)
  with pytest.raises(ValueError, match="k=4"):
    knn.knn(q, b, k=4)
  with pytest.raises(ValueError, match="empty"):
    knn.knn(q, np.zeros((0, 2), np.float32))
  with pytest.raises(ValueError, match="metric"):
    knn.knn(q, b, metric="l1")
  d, i = knn.knn(np.zeros((0, 2), np.float32), b, k=2)
  assert d.shape == (0, 2) and i.shape == (0, 2)


def test_knn_padded_masks_rows_and_jits():
  rng = np.random.default_rng(3)
  q = rng.normal(size=(45, 6)).astype(np.float32)
  b = rng.normal(size=(40, 6)).astype(np.float32)
  valid = np.zeros(40, bool)
  valid[[1, 5, 7, 20, 33, 39]] = True
  fn = jax.jit(lambda q, b, v: knn.knn_padded(q, b, v, k=3, query_chunk=16,
                                              bank_chunk=16))
  d, i = fn(q, b, valid)
  d_ref, i_ref = _brute(q, b[valid], 3)
  np.testing.assert_array_equal(np.asarray(i), np.flatnonzero(valid)[i_ref])
  np.testing.assert_allclose(np.asarray(d), d_ref, rtol=1e-4, atol=1e-4)
  # Fewer valid rows than k: missing neighbours are (inf, -1).
  v2 = np.zeros(40, bool)
  v2[[4, 9]] = True
  d, i = knn.knn_padded(q, b, v2, k=3, metric="cosine")
  assert np.all(np.asarray(i)[:, 2] == -1)
  assert np.all(np.isinf(np.asarray(d)[:, 2]))
  assert set(np.asarray(i)[:, :2].ravel()) <= {4, 9}


def _brute_mutual(x, valid=None):
  n = len(x)
  valid = np.ones(n, bool) if valid is None else valid
  d = ((x[:, None].astype(np.float64) - x[None]) ** 2).sum(-1)
  d[:, ~valid] = np.inf
  np.fill_diagonal(d, np.inf)
  nn = np.argmin(d, axis=1)
  return [(i, int(nn[i])) for i in range(n)
          if valid[i] and i < nn[i] and nn[nn[i]] == i
          and np.isfinite(d[i, nn[i]])]


def test_mutual_nn_pairs_vs_loop():
  rng = np.random.default_rng(4)
  x = rng.normal(size=(61, 5)).astype(np.float32)
  pairs = knn.mutual_nn_pairs_np(x)
  assert pairs == _brute_mutual(x)
  assert pairs  # random data always has mutual pairs (the closest pair)
  valid = rng.random(61) < 0.6
  assert knn.mutual_nn_pairs_np(x, valid=valid) == _brute_mutual(x, valid)


def test_mutual_nn_pairs_fixed_shape_and_duplicates():
  x = np.array([[0.0], [0.0], [10.0], [10.5], [30.0]], np.float32)
  i, j, ok = jax.jit(knn.mutual_nn_pairs)(jnp.asarray(x))
  assert i.shape == j.shape == ok.shape == (5,)
  got = [(int(a), int(b)) for a, b, o in zip(i, j, ok) if o]
  # Exact duplicates are each other's nearest neighbour; 30 pairs with no
  # one (its nn 10.5 prefers 10).
  assert got == [(0, 1), (2, 3)]
