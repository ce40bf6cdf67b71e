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


def _same_up_to_ties(d_a, i_a, d_b, i_b, bank, q):
  """Indices equal, or the differing neighbours are equally far (float32)."""
  diff = np.nonzero(np.any(i_a != i_b, axis=1))[0]
  for r in diff:
    da = ((bank[i_a[r]].astype(np.float64) - q[r]) ** 2).sum(1)
    db = ((bank[i_b[r]].astype(np.float64) - q[r]) ** 2).sum(1)
    np.testing.assert_allclose(da, db, rtol=2e-6)
  return len(diff)


@pytest.mark.parametrize("k", [1, 5])
def test_host_equals_xla_path_on_benchmark_like_data(k):
  q, b = _data(700, 20_000, 512)
  d_h, i_h = knn.knn(q, b, k=k, backend="host")
  d_x, i_x = knn.knn(q, b, k=k, backend="xla")
  assert _same_up_to_ties(d_h, i_h, d_x, i_x, b, q) == 0
  np.testing.assert_allclose(d_h, d_x, rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("k", [1, 5])
def test_identical_neighbours_to_faiss(k):
  faiss = pytest.importorskip("faiss")
  q, b = _data(1000, 30_000, 512, seed=3)
  index = faiss.IndexFlatL2(512)
  index.add(b)
  d_f, i_f = index.search(q, k)
  d_h, i_h = knn.knn(q, b, k=k)  # The default (host BLAS on CPU).
  assert _same_up_to_ties(d_h, i_h, d_f, i_f, b, q) == 0
  np.testing.assert_allclose(d_h, d_f, rtol=1e-4, atol=1e-2)


def test_backend_choice():
  assert knn.use_host_blas(None)  # CPU-only test run.
  q, b = _data(5, 50, 4)
  with pytest.raises(ValueError, match="backend"):
    knn.knn(q, b, backend="gpu")
