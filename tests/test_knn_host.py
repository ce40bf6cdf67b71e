"""The host-BLAS kNN path (issue 16): exact answers, ties, faiss agreement."""

import numpy as np
import pytest

from dicofun.ops import knn


def _stable_ref(d, k):
  i = np.argsort(d, axis=1, kind="stable")[:, :k]
  return np.take_along_axis(d, i, 1), i


@pytest.mark.parametrize("k", [1, 2, 5])
def test_group_topk_hand_case_with_ties(k):
  # Width 4096 takes the grouped search (groups: columns j mod 256).
  # Integer values tie a lot; row 0 has six equal smallest values (-9), two
  # of them in one group (7, 263), so at k = 5 only the lower columns may
  # win; row 1 ties everywhere (the exact fallback); row 2's minima share
  # few groups.
  rng = np.random.default_rng(0)
  d = rng.integers(0, 50, size=(6, 4096)).astype(np.float32)
  d[0, [7, 263, 4095, 64, 65, 3000]] = -9.0
  d[1] = 3.0  # Every column ties: the answer is columns 0..k-1.
  d[2, ::256] = -1.0  # All minima in group 0.
  val, idx = knn._host_topk(d, k)  # pylint: disable=protected-access
  ref_val, ref_idx = _stable_ref(d, k)
  np.testing.assert_array_equal(idx, ref_idx)
  np.testing.assert_array_equal(val, ref_val)
  if k == 5:
    assert idx[0].tolist() == [7, 64, 65, 263, 3000]
    assert idx[1].tolist() == [0, 1, 2, 3, 4]
    assert idx[2].tolist() == [0, 256, 512, 768, 1024]


def test_group_topk_random_rows_match_stable_sort():
  rng = np.random.default_rng(1)
  for width in (5000, 16384, 16500):
    d = rng.standard_normal((40, width)).astype(np.float32)
    d[:, width // 3] = d[:, 11]  # An exact duplicate column.
    for k in (1, 3, 5):
      val, idx = knn._host_topk(d, k)  # pylint: disable=protected-access
      ref_val, ref_idx = _stable_ref(d, k)
      np.testing.assert_array_equal(idx, ref_idx)
      np.testing.assert_array_equal(val, ref_val)


@pytest.mark.parametrize("k", [1, 2, 5])
def test_merge_below_equals_stable_sort_of_both_tiles(k):
  # Small integers tie a lot: entries equal to a row's k-th held distance
  # must lose to the held (lower) index, and equal candidates of the new
  # tile keep column order.
  rng = np.random.default_rng(2)
  first = rng.integers(0, 6, size=(30, 40)).astype(np.float32)
  second = rng.integers(0, 6, size=(30, 300)).astype(np.float32)
  second[0] = 99.0  # No candidate in row 0: its list is unchanged.
  second[1, [5, 6, 250]] = -1.0  # Three new best, one of them past k.
  best_d, best_i = _stable_ref(first, k)
  best_d, best_i = best_d.copy(), best_i.astype(np.int64)
  knn._merge_below(best_d, best_i, second, 40)  # pylint: disable=protected-access
  ref_d, ref_i = _stable_ref(np.concatenate([first, second], axis=1), k)
  np.testing.assert_array_equal(best_i, ref_i)
  np.testing.assert_array_equal(best_d, ref_d)
  assert best_i[1].tolist()[:min(k, 3)] == [45, 46, 290][:min(k, 3)]


@pytest.mark.parametrize("k", [2, 5, 7])
def test_host_path_exact_on_tie_heavy_integer_data(k):
  # Many bank tiles (bank_chunk=512 of 5,000 rows): every tile after the
  # first goes through the candidate merge; integer coordinates make many
  # exactly equal distances, where the lower bank index must win.
  rng = np.random.default_rng(4)
  q = rng.integers(0, 3, (200, 8)).astype(np.float32)
  b = rng.integers(0, 3, (5000, 8)).astype(np.float32)
  _, idx = knn.knn_host(q, b, k=k, bank_chunk=512)
  full = ((q[:, None, :].astype(np.float64) - b[None]) ** 2).sum(-1)
  np.testing.assert_array_equal(idx, _stable_ref(full, k)[1])


def _data(n_q, m, d, seed=0):
  rng = np.random.default_rng(seed)
  return (rng.standard_normal((n_q, d), dtype=np.float32),
          rng.standard_normal((m, d), dtype=np.float32))


# Float32 rounding of a squared distance: the expanded formula rounds
# ‖q‖² − 2q·b + ‖b‖² (each ~512 here) to ~1e-7 of its terms, so two rows
# whose float64 distances differ by less than this may come in either order
# on CPUs whose BLAS sums differently (issue 25 #14: 830.621923 against
# 830.621956 at a query's 5th neighbour).
_F32_TIE_RTOL = 2e-6


def _check_exact_order(d, idx, bank, q, *, chunk=250):
  """``idx`` is each query's k nearest bank rows in the exact (float64)
  order, where rows whose float64 distances are equal within float32
  rounding may swap or replace one another; ``d`` are their distances."""
  k = idx.shape[1]
  q64, b64 = q.astype(np.float64), bank.astype(np.float64)
  b_sq = (b64 * b64).sum(1)
  for s in range(0, len(q), chunk):
    qs, ids = q64[s:s + chunk], idx[s:s + chunk]
    full = (qs * qs).sum(1)[:, None] - 2 * qs @ b64.T + b_sq[None]
    exact = np.sort(np.partition(full, k - 1, axis=1)[:, :k], axis=1)
    got = np.take_along_axis(full, ids, axis=1)
    assert all(len(set(row)) == k for row in ids.tolist())  # Distinct rows.
    np.testing.assert_allclose(got, exact, rtol=_F32_TIE_RTOL)
    np.testing.assert_allclose(d[s:s + chunk], got, rtol=1e-5, atol=1e-3)


def test_exact_order_check_can_fail():
  q, b = _data(40, 500, 16)
  d, i = knn.knn(q, b, k=3, backend="host")
  _check_exact_order(d, i, b, q)
  # The 4th neighbour instead of the 3rd is no float32 tie here.
  d4, i4 = knn.knn(q, b, k=4, backend="host")
  with pytest.raises(AssertionError):
    _check_exact_order(d4[:, [0, 1, 3]], i4[:, [0, 1, 3]], b, q)


@pytest.mark.parametrize("k", [1, 5])
def test_host_and_xla_paths_give_the_exact_order_on_benchmark_like_data(k):
  q, b = _data(700, 20_000, 512)
  d_h, i_h = knn.knn(q, b, k=k, backend="host")
  d_x, i_x = knn.knn(q, b, k=k, backend="xla")
  _check_exact_order(d_h, i_h, b, q)
  _check_exact_order(d_x, i_x, b, q)
  np.testing.assert_allclose(d_h, d_x, rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("k", [1, 5])
def test_identical_neighbours_to_faiss(k):
  """Ours and faiss's both in the exact order (up to float32 ties); the
  two need not pick the same row of a near-tie."""
  faiss = pytest.importorskip("faiss")
  q, b = _data(1000, 30_000, 512, seed=3)
  index = faiss.IndexFlatL2(512)
  index.add(b)
  d_f, i_f = index.search(q, k)
  d_h, i_h = knn.knn(q, b, k=k)  # The default (host BLAS on CPU).
  _check_exact_order(d_h, i_h, b, q)
  _check_exact_order(d_f, i_f.astype(np.int64), b, q)
  np.testing.assert_allclose(d_h, d_f, rtol=1e-4, atol=1e-2)


def test_backend_choice():
  assert knn.use_host_blas(None)  # CPU-only test run.
  q, b = _data(5, 50, 4)
  with pytest.raises(ValueError, match="backend"):
    knn.knn(q, b, backend="gpu")
