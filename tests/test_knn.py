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


@pytest.mark.parametrize("backend", ["xla", "host"])
@pytest.mark.parametrize("metric", ["l2", "cosine"])
@pytest.mark.parametrize("n_q,m,k", [(37, 53, 1), (100, 300, 3), (9, 5, 5),
                                     (130, 257, 2)])
def test_knn_matches_brute_force(metric, n_q, m, k, backend):
  rng = np.random.default_rng(n_q * 1000 + m)
  q = rng.normal(size=(n_q, 13)).astype(np.float32)
  b = rng.normal(size=(m, 13)).astype(np.float32)
  # Small chunks so that padding of both queries and bank is exercised.
  d, i = knn.knn(q, b, k=k, metric=metric, query_chunk=32, bank_chunk=64,
                 backend=backend)
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


@pytest.mark.parametrize("backend", ["xla", "host"])
@pytest.mark.parametrize("k", [1, 3])
def test_ties_lower_index_first(k, backend):
  # Integer-valued data: all distances are exact in float32, so duplicates
  # tie exactly, across chunk boundaries too (bank_chunk=8).
  rng = np.random.default_rng(2)
  base = rng.integers(-3, 4, size=(6, 4)).astype(np.float32)
  bank = np.concatenate([base, base, base[::-1], base])  # 24 rows
  q = rng.integers(-3, 4, size=(20, 4)).astype(np.float32)
  d, i = knn.knn(q, bank, k=k, bank_chunk=8, query_chunk=8, backend=backend)
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


def _mutual_pairs_list(x, valid=None, **kwargs):
  """``knn.mutual_nn_pairs`` (jitted) as a sorted list of (i, j), i < j."""
  fn = jax.jit(lambda a, v: knn.mutual_nn_pairs(a, valid=v, **kwargs))
  j, ok = fn(jnp.asarray(x, jnp.float32),
             None if valid is None else jnp.asarray(valid, bool))
  j, ok = np.asarray(j), np.asarray(ok)
  return [(int(a), int(j[a])) for a in np.flatnonzero(ok)]


def test_mutual_nn_pairs_vs_loop():
  rng = np.random.default_rng(4)
  x = rng.normal(size=(61, 5)).astype(np.float32)
  pairs = _mutual_pairs_list(x)
  assert pairs == _brute_mutual(x)
  assert pairs  # random data always has mutual pairs (the closest pair)
  valid = rng.random(61) < 0.6
  assert _mutual_pairs_list(x, valid=valid) == _brute_mutual(x, valid)
  # Several query and bank chunks.
  assert _mutual_pairs_list(x, valid=valid, query_chunk=16,
                            bank_chunk=8) == _brute_mutual(x, valid)


def test_mutual_nn_pairs_match_brute_force():
  # (Formerly FUN-AD's own IRMB mutual pairs, chunk=16.)
  rng = np.random.default_rng(0)
  f = rng.normal(size=(50, 4)).astype(np.float32)
  partner, valid = knn.mutual_nn_pairs(jnp.asarray(f), query_chunk=None,
                                       bank_chunk=16)
  dm = ((f[:, None] - f[None]) ** 2).sum(-1)
  np.fill_diagonal(dm, np.inf)
  nn = dm.argmin(1)
  want = {(i, int(nn[i])) for i in range(50) if nn[nn[i]] == i and i < nn[i]}
  got = {(int(i), int(partner[i])) for i in np.flatnonzero(np.asarray(valid))}
  assert got == want and len(want) > 0


def test_mutual_nn_pairs_fixed_shape_and_duplicates():
  x = np.array([[0.0], [0.0], [10.0], [10.5], [30.0]], np.float32)
  j, ok = jax.jit(knn.mutual_nn_pairs)(jnp.asarray(x))
  assert j.shape == ok.shape == (5,)
  got = [(int(a), int(j[a])) for a in np.flatnonzero(np.asarray(ok))]
  # Exact duplicates are each other's nearest neighbour; 30 pairs with no
  # one (its nn 10.5 prefers 10).
  assert got == [(0, 1), (2, 3)]
  # Fewer than 2 rows: no pairs.
  j, ok = knn.mutual_nn_pairs(jnp.zeros((1, 3)))
  assert j.shape == ok.shape == (1,) and not bool(ok[0])


def test_knn_padded_hand_values_and_chunking():
  # (Formerly FUN-AD's IRMB ``chunked_topk`` test, chunk=2.)
  bank = jnp.array([[0., 0.], [3., 0.], [0., 4.], [10., 10.]])
  valid = jnp.array([True, True, True, False])
  q = jnp.array([[0., 0.], [1., 0.], [10., 10.]])
  dist, idx = knn.knn_padded(q, bank, valid, k=2, query_chunk=None,
                             bank_chunk=2)
  np.testing.assert_array_equal(np.asarray(idx[:2, 0]), [0, 0])
  np.testing.assert_allclose(np.asarray(dist[1]), [1.0, 4.0], rtol=1e-6)
  # q2's identical bank row is invalid: nearest valid (0, 4), then (3, 0).
  np.testing.assert_array_equal(np.asarray(idx[2]), [2, 1])
  np.testing.assert_allclose(np.asarray(dist[2]), [136.0, 149.0], rtol=1e-6)


def _expanded_np(q, b):
  """max(‖q‖² − 2 q·b + ‖b‖², 0), the expression knn_padded evaluates."""
  q_sq = (q * q).sum(-1)
  b_sq = (b * b).sum(-1)
  return np.maximum(q_sq[:, None] - 2.0 * (q @ b.T) + b_sq[None, :], 0.0)


def _brute_padded(q, b, valid, k, exclude_self=False):
  """Reference: float64 expanded distances, masked, stable (lowest index
  first) sort; missing neighbours (inf, -1)."""
  d = _expanded_np(q.astype(np.float64), b.astype(np.float64))
  d[:, ~valid] = np.inf
  if exclude_self:
    n = min(len(q), len(b))
    d[np.arange(n), np.arange(n)] = np.inf
  i = np.argsort(d, axis=1, kind="stable")[:, :k]
  dd = np.take_along_axis(d, i, 1)
  return dd, np.where(np.isfinite(dd), i, -1)


@pytest.mark.parametrize("exclude_self", [False, True])
@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("query_chunk,bank_chunk", [(None, 4096), (8, 7),
                                                    (None, 5)])
def test_knn_padded_exact_on_integer_data_with_ties(k, exclude_self,
                                                    query_chunk, bank_chunk):
  # Integer data: every product and sum is exact in float32, so the
  # expanded formula gives the exact distance, duplicates tie exactly (at 0
  # and elsewhere) and the result must equal the reference bit for bit:
  # same values, lowest index first among ties, invalid rows never returned.
  rng = np.random.default_rng(10 + k)
  base = rng.integers(-3, 4, size=(7, 5)).astype(np.float32)
  x = np.concatenate([base, base[::-1], base, rng.integers(
      -3, 4, size=(9, 5)).astype(np.float32)])  # 30 rows, many duplicates
  valid = rng.random(30) < 0.7
  valid[:3] = [True, False, True]
  fn = jax.jit(lambda a, v: knn.knn_padded(
      a, a, v, k=k, query_chunk=query_chunk, bank_chunk=bank_chunk,
      exclude_self=exclude_self))
  d, i = map(np.asarray, fn(x, valid))
  d_ref, i_ref = _brute_padded(x, x, valid, k, exclude_self)
  assert d.dtype == np.float32 and i.dtype == np.int32
  np.testing.assert_array_equal(i, i_ref)
  np.testing.assert_array_equal(d, d_ref.astype(np.float32))
  # Fewer valid rows than k: (inf, -1).
  v1 = np.zeros(30, bool)
  v1[4] = True
  d, i = map(np.asarray, fn(x, v1))
  d_ref, i_ref = _brute_padded(x, x, v1, k, exclude_self)
  np.testing.assert_array_equal(i, i_ref)
  np.testing.assert_array_equal(d, d_ref.astype(np.float32))


@pytest.mark.parametrize("k", [1, 2])
def test_knn_padded_random_data_with_duplicates(k):
  # Float data of a large norm (‖x‖² ≈ 2300) with copies of bank rows among
  # the queries and duplicated bank rows. Values: the expanded formula in
  # float32 (what FUN-AD's 1e-2 self-match rule sees), checked against a
  # float32 numpy evaluation of the same expression; indices: the reference
  # order wherever the float64 gap to the next candidate is resolvable.
  rng = np.random.default_rng(20 + k)
  d_feat = 256
  b = (3.0 * rng.normal(size=(300, d_feat))).astype(np.float32)
  b[200:240] = b[:40]  # duplicated bank rows
  q = (3.0 * rng.normal(size=(120, d_feat))).astype(np.float32)
  q[:50] = b[rng.choice(300, 50, replace=False)]  # queries in the bank
  valid = rng.random(300) < 0.8
  fn = jax.jit(lambda a, bb, v: knn.knn_padded(a, bb, v, k=k, query_chunk=32,
                                               bank_chunk=64))
  d, i = map(np.asarray, fn(q, b, valid))
  d32 = _expanded_np(q, b)
  d32[:, ~valid] = np.inf
  d_ref, i_ref = _brute_padded(q, b, valid, k + 1)
  # Returned values are the expanded float32 distances of the returned rows.
  np.testing.assert_allclose(d, np.take_along_axis(d32, i, 1), rtol=1e-5,
                             atol=1e-2)
  np.testing.assert_allclose(d, d_ref[:, :k], rtol=1e-5, atol=1e-2)
  # Copies of valid bank rows: nearest distance below FUN-AD's 1e-2.
  in_bank = np.array([valid[np.flatnonzero((b == r).all(1))].any()
                      for r in q])
  assert in_bank.sum() > 20
  assert (d[in_bank, 0] < 1e-2).all()
  # Indices equal the reference where the float64 order is unambiguous
  # (exact ties are checked bit for bit on integer data above).
  gap = np.diff(d_ref, axis=1)[:, :k].min(1) > 1e-2
  np.testing.assert_array_equal(i[gap], i_ref[gap, :k])
  # Ascending, lowest index first among equal returned values.
  assert (np.diff(d, axis=1) >= 0).all()
  if k > 1:
    eq = d[:, 0] == d[:, 1]
    assert (i[eq, 0] < i[eq, 1]).all()
