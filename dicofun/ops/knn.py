"""Exact k-nearest-neighbour search as chunked matrix products.

Every nearest-neighbour question in dicofun (PatchCore/SoftPatch scoring,
FUN-AD's memory-bank distances and mutual pairs) goes through this module.

Design:

* Distances are computed block by block: a (query_chunk, bank_chunk) tile
  of the distance matrix at a time, so peak memory is
  O(query_chunk × bank_chunk) whatever the bank size. A ``lax.scan`` walks
  the bank chunks and keeps a running top-k per query (merge of the current
  best with the chunk's own top-k).
* Shapes are fixed: queries and bank are zero-padded to multiples of the
  chunk sizes and padded bank rows get distance +inf, so one compilation
  serves every query count for a given padded bank. Chunk sizes are reduced
  for small inputs but only to a small set of sizes (powers of two for
  queries; 3-significant-bit sizes for the bank, ≤ 12.5% padding), which
  bounds the number of compilations. The compiled block depends on the
  padded bank shape, so a fixed bank serves any number of queries with one
  compilation.
* Metrics: squared L2, ``||q||² − 2 q·b + ||b||²`` clamped at 0, or cosine
  distance ``1 − cos(q, b)`` (clamped at 0). The matmul runs at
  ``Precision.HIGHEST`` so GPUs/TPUs do not silently drop to TF32/bf16.
* Two entry points: ``knn`` (host arrays in, numpy out; optional mesh)
  ranks the partial distance ``||b||² − 2 q·b`` and adds ``||q||²`` to the
  k winners only; ``knn_padded`` (pure, jittable, fixed-size bank with a
  validity mask, optional ``exclude_self``) ranks the complete clamped
  distance ``max(||q||² − 2 q·b + ||b||², 0)`` in every tile, so callers
  that compare distances with thresholds get exactly that expression.
  ``mutual_nn_pairs`` builds on ``knn_padded``.
* Ties: among exactly equal computed distances the lower bank index comes
  first (``lax.top_k`` is stable, the merge puts earlier chunks first and
  the sharded merge puts lower shards first). Note that the expanded L2
  formula can give slightly different values for mathematically equal
  distances, so "equal" means equal after float32 rounding.
* Multi-device: with ``mesh=...`` the bank is split by rows over the mesh's
  first axis (``data``); each device finds its local top-k with global
  indices, the candidates are all-gathered and merged. Indices are the same
  as on one device.
* Host BLAS on CPU **(ours)**: on a CPU-only single-process run ``knn``
  computes each distance tile with the host's BLAS sgemm (numpy) instead of
  XLA's dot — on the 2-core Xeon of BENCHMARKS.md's Speed section OpenBLAS
  ran a float32 GEMM at about 1.3–2× XLA CPU's rate. Query chunks run on one
  thread per core, each with a single-threaded BLAS (so the passes around
  the GEMM — bias, argmin/top-k — run on every core too); the ``‖b‖²`` term
  and the transposed bank chunks are computed once per call. k = 1 uses
  numpy's argmin; k > 1, first tile: the k smallest column groups of 16 by
  their minimum (the k nearest lie in at most k groups, lower group first
  on ties), and only those candidates are sorted; every later tile: only
  the entries below a row's current k-th distance (few once k are held)
  are merged in, so k = 5 costs about what k = 1 does. Same tie rule as
  the XLA path; ``backend="xla"`` forces the XLA path (GPU/TPU always use it;
  ``knn_padded`` is always XLA).
"""

from __future__ import annotations

import concurrent.futures
import functools
import math
import os
from typing import Any, Optional, Union

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
import threadpoolctl

from dicofun import parallel

Array = Union[np.ndarray, jax.Array]
P = jax.sharding.PartitionSpec

_METRICS = ("l2", "cosine")
BACKENDS = ("auto", "xla", "host")
# Columns per group of the host top-k (see ``_host_topk``): 16 measured
# fastest of 8–128 on 1024 × 16384 tiles (narrow groups: fewer candidates).
_GROUP = 16
# Host tiles of at most 512 × 8192 (16 MB per thread): of 256–2048 ×
# 4096–16384 these measured fastest (4096 × 65536 × 512, k = 5).
_HOST_QUERY_CHUNK = 512
_HOST_BANK_CHUNK = 8192
_MIN_CHUNK = 8
_EPS = 1e-12


def _pow2_at_least(n: int) -> int:
  return 1 << max(0, int(n) - 1).bit_length()


def _pick_chunk(n: int, cap: int) -> int:
  """Smallest power of two ≥ ``n``, capped at ``cap`` (≥ ``_MIN_CHUNK``)."""
  return int(max(_MIN_CHUNK, min(int(cap), _pow2_at_least(max(n, 1)))))


def _round_up_coarse(n: int) -> int:
  """``n`` rounded up to 3 significant bits (8, 9, ..., 15 × 2^e).

  Bank chunk sizes come from this small set (8 per octave) so compilations
  stay few, while padding wastes at most 12.5% of the work (powers of two
  could waste almost half).
  """
  n = max(int(n), _MIN_CHUNK)
  shift = max(0, n.bit_length() - 4)
  return -(-n >> shift) << shift


def _check_metric(metric: str) -> None:
  if metric not in _METRICS:
    raise ValueError(f"metric must be one of {_METRICS}, got {metric!r}")


def _normalize(x: jax.Array) -> jax.Array:
  n = jnp.sqrt(jnp.sum(x * x, axis=-1, keepdims=True))
  return x / jnp.maximum(n, _EPS)


def _bank_bias(bank: jax.Array, valid: jax.Array, metric: str) -> jax.Array:
  """Per-row additive term of the distance; +inf masks a row out."""
  if metric == "l2":
    bias = jnp.sum(bank * bank, axis=-1)
  else:
    bias = jnp.ones(bank.shape[:-1], jnp.float32)
  return jnp.where(valid, bias, jnp.inf)


def _scale(metric: str) -> float:
  return 2.0 if metric == "l2" else 1.0


def _finalize(d: jax.Array, q: jax.Array, metric: str) -> jax.Array:
  """Adds the query term to partial distances and clamps rounding noise."""
  if metric == "l2":
    d = d + jnp.sum(q * q, axis=-1, keepdims=True)
  return jnp.maximum(d, 0.0)


def _merge(best_d, best_i, cand_d, cand_i, k):
  """Top-k (smallest) of the union; earlier columns win ties."""
  d = jnp.concatenate([best_d, cand_d], axis=1)
  i = jnp.concatenate([best_i, cand_i], axis=1)
  neg, pos = lax.top_k(-d, k)
  return -neg, jnp.take_along_axis(i, pos, axis=1)


def _running_topk(tile, xs, *, qc, bc, k, offset):
  """Running top-k (smallest) of ``tile`` distances over bank chunks.

  Args:
    tile: ``tile(xs_c) -> (qc, bc)`` distances of the query chunk to one
      bank chunk (+inf for rows that must never be returned).
    xs: per-chunk inputs of ``tile``, leading axis = chunk; the first entry
      is the chunk number (int32).
    qc: queries in the chunk.
    bc: bank rows per chunk.
    k: neighbours.
    offset: global index of the first bank row (scalar, may be traced).

  Returns:
    (qc, k) distances and int32 indices; -1 where fewer than k rows have a
    finite distance. Equal distances: lower index first.
  """
  kk = min(k, bc)
  offset = jnp.asarray(offset, jnp.int32)

  def body(carry, xs_c):
    best_d, best_i = carry
    d = tile(xs_c)
    base = offset + xs_c[0] * bc
    if k == 1:
      # argmin returns the first minimum; strict < keeps earlier chunks on
      # ties. Cheaper than top_k for the common k = 1 case.
      j = jnp.argmin(d, axis=1).astype(jnp.int32)
      m = jnp.take_along_axis(d, j[:, None], axis=1)
      better = m < best_d
      return (jnp.where(better, m, best_d),
              jnp.where(better, (j + base)[:, None], best_i)), None
    neg, pos = lax.top_k(-d, kk)
    return _merge(best_d, best_i, -neg, pos.astype(jnp.int32) + base, k), None

  init = (jnp.full((qc, k), jnp.inf, jnp.float32),
          jnp.full((qc, k), -1, jnp.int32))
  (best_d, best_i), _ = lax.scan(body, init, xs)
  return best_d, best_i


def _scan_bank(q, bank_c, bias_c, *, k, scale, precision, offset):
  """Running top-k of partial distances of ``q`` over bank chunks.

  Args:
    q: (qc, D) queries (already normalised for cosine).
    bank_c: (nc, bc, D) bank chunks.
    bias_c: (nc, bc) per-row bias (+inf for masked rows).
    k: neighbours.
    scale: 2 for L2, 1 for cosine.
    precision: matmul precision.
    offset: global index of ``bank_c[0, 0]`` (scalar, may be traced).

  Returns:
    (qc, k) partial distances (without the query term) and int32 indices;
    -1 where fewer than k rows are valid.
  """
  def tile(xs_c):
    _, b, bias = xs_c
    return bias[None, :] - scale * jnp.dot(q, b.T, precision=precision)

  nc = bank_c.shape[0]
  return _running_topk(
      tile, (jnp.arange(nc, dtype=jnp.int32), bank_c, bias_c),
      qc=q.shape[0], bc=bank_c.shape[1], k=k, offset=offset)


def _query_block(q, bank_c, bias_c, *, k, metric, precision):
  """One query chunk against the whole (chunked) bank on one device."""
  if metric == "cosine":
    q = _normalize(q)
  d, i = _scan_bank(q, bank_c, bias_c, k=k, scale=_scale(metric),
                    precision=precision, offset=0)
  return _finalize(d, q, metric), i


def _query_block_sharded(q, bank_c, bias_c, *, k, metric, precision, axis):
  """Per-device body of the sharded search (inside ``shard_map``)."""
  if metric == "cosine":
    q = _normalize(q)
  nc_local, bc = bank_c.shape[0], bank_c.shape[1]
  offset = lax.axis_index(axis) * (nc_local * bc)
  d, i = _scan_bank(q, bank_c, bias_c, k=k, scale=_scale(metric),
                    precision=precision, offset=offset)
  # (ndev, qc, k) in shard order; shard s holds lower indices than s + 1, so
  # flattening in that order keeps the lower-index-first tie rule.
  all_d = lax.all_gather(d, axis)
  all_i = lax.all_gather(i, axis)
  ndev, qc = all_d.shape[0], all_d.shape[1]
  all_d = jnp.transpose(all_d, (1, 0, 2)).reshape(qc, ndev * k)
  all_i = jnp.transpose(all_i, (1, 0, 2)).reshape(qc, ndev * k)
  neg, pos = lax.top_k(-all_d, k)
  d = -neg
  i = jnp.take_along_axis(all_i, pos, axis=1)
  return _finalize(d, q, metric), i


@functools.lru_cache(maxsize=64)
def _compiled_block(k: int, metric: str, precision: Any, mesh: Any):
  """Jitted query-chunk function (cached per static settings)."""
  if mesh is None:
    return jax.jit(functools.partial(_query_block, k=k, metric=metric,
                                     precision=precision))
  axis = mesh.axis_names[0]
  fn = functools.partial(_query_block_sharded, k=k, metric=metric,
                         precision=precision, axis=axis)
  sm = jax.shard_map(fn, mesh=mesh,
                     in_specs=(P(), P(axis), P(axis)),
                     out_specs=(P(), P()), check_vma=False)
  return jax.jit(sm)


@functools.lru_cache(maxsize=8)
def _compiled_bias(metric: str):
  return jax.jit(functools.partial(_bank_prep, metric=metric))


def _bank_prep(bank_c, valid_c, *, metric):
  if metric == "cosine":
    bank_c = _normalize(bank_c)
  return bank_c, _bank_bias(bank_c, valid_c, metric)


def _put(x: np.ndarray, sharding) -> jax.Array:
  """Places a host array (same on every process) with ``sharding``."""
  if sharding is None:
    return jax.device_put(x)
  return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])


def knn(queries: Array, bank: Array, *, k: int = 1, metric: str = "l2",
        query_chunk: int = 1024, bank_chunk: int = 16384,
        mesh: Optional[jax.sharding.Mesh] = None,
        precision: Any = lax.Precision.HIGHEST,
        backend: str = "auto", workers: Optional[int] = None
        ) -> tuple[np.ndarray, np.ndarray]:
  """Exact k nearest bank rows of every query.

  Args:
    queries: (Q, D) float array (numpy or jax).
    bank: (M, D) float array, M ≥ k.
    k: number of neighbours.
    metric: ``"l2"`` (squared Euclidean) or ``"cosine"`` (1 − cosine).
    query_chunk: maximum queries per compiled block (reduced to a power of
      two ≥ Q for small Q); the host path caps it at 512.
    bank_chunk: maximum bank rows per distance tile (per device); the bank
      is split into equal tiles of a 3-significant-bit size ≤ this (the
      host path: at most 8192 rows, a multiple of 16).
    mesh: optional mesh; the bank is then split by rows over its first
      axis and results are identical to the single-device search. In a
      multi-process run every process passes the same queries and bank.
    precision: matmul precision (default HIGHEST: exact float32).
    backend: ``"auto"`` (host BLAS when ``use_host_blas(mesh)``, else XLA),
      ``"xla"`` or ``"host"`` (see the module docstring).
    workers: host backend only: threads (default: usable cores).

  Returns:
    ``(dists, idx)``: (Q, k) float32 distances, ascending, and (Q, k) int32
    bank row indices (numpy). Equal distances: lower index first.

  Raises:
    ValueError: empty bank, k < 1, k > M, mismatched dims, unknown metric.
  """
  _check_metric(metric)
  if backend not in BACKENDS:
    raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
  if bank.ndim != 2 or queries.ndim != 2:
    raise ValueError(f"queries and bank must be 2-D, got {queries.shape} "
                     f"and {bank.shape}")
  m, dim = bank.shape
  if m == 0:
    raise ValueError("knn: the bank is empty")
  if k < 1 or k > m:
    raise ValueError(f"knn: k={k} must be in [1, bank size={m}]")
  if queries.shape[1] != dim:
    raise ValueError(f"dims differ: queries {queries.shape}, bank {bank.shape}")
  n_q = queries.shape[0]
  if n_q == 0:
    return np.zeros((0, k), np.float32), np.zeros((0, k), np.int32)
  if backend == "host" or (backend == "auto" and use_host_blas(mesh)):
    return knn_host(queries, bank, k=k, metric=metric,
                    query_chunk=min(int(query_chunk), _HOST_QUERY_CHUNK),
                    bank_chunk=min(int(bank_chunk), _HOST_BANK_CHUNK),
                    workers=workers)

  ndev = 1 if mesh is None else int(mesh.devices.size)
  # Number of chunks per device first, then the smallest allowed chunk size
  # that holds the device's rows.
  per_dev = math.ceil(m / ndev)
  nc_local = math.ceil(per_dev / max(int(bank_chunk), 1))
  bc = min(_round_up_coarse(math.ceil(per_dev / nc_local)),
           max(int(bank_chunk), _MIN_CHUNK))
  nc_local = math.ceil(per_dev / bc)
  nc = nc_local * ndev
  qc = _pick_chunk(n_q, query_chunk)

  bank_np = np.asarray(bank, dtype=np.float32)
  pad = nc * bc - m
  valid = np.ones((nc * bc,), bool)
  if pad:
    bank_np = np.concatenate([bank_np, np.zeros((pad, dim), np.float32)])
    valid[m:] = False
  bank_np = bank_np.reshape(nc, bc, dim)
  valid = valid.reshape(nc, bc)

  if mesh is None:
    bank_sh = valid_sh = q_sh = None
  else:
    axis = mesh.axis_names[0]
    bank_sh = jax.sharding.NamedSharding(mesh, P(axis))
    valid_sh = bank_sh
    q_sh = jax.sharding.NamedSharding(mesh, P())
  bank_c, bias_c = _compiled_bias(metric)(_put(bank_np, bank_sh),
                                          _put(valid, valid_sh))
  del bank_np
  block = _compiled_block(int(k), metric, precision, mesh)

  on_device = isinstance(queries, jax.Array)
  outs = []
  for start in range(0, n_q, qc):
    q = queries[start:start + qc]
    if on_device and mesh is None:
      q = q.astype(jnp.float32)
      if q.shape[0] < qc:
        q = jnp.pad(q, ((0, qc - q.shape[0]), (0, 0)))
    else:
      q = np.asarray(q, np.float32)
      if q.shape[0] < qc:
        q = np.pad(q, ((0, qc - q.shape[0]), (0, 0)))
      q = _put(q, q_sh)
    outs.append(block(q, bank_c, bias_c))  # dispatch is asynchronous
    if mesh is not None:
      # A sharded block ends in an all-gather. On CPU host devices, many
      # in-flight collective programs can starve the shared thread pool and
      # deadlock XLA's rendezvous (seen with 2 devices on 2 cores), so
      # collective blocks run one at a time.
      jax.block_until_ready(outs[-1])
  dists = np.concatenate(
      [parallel.replicated_to_host(d) for d, _ in outs])[:n_q]
  idx = np.concatenate(
      [parallel.replicated_to_host(i) for _, i in outs])[:n_q]
  return dists.astype(np.float32), idx.astype(np.int32)


def use_host_blas(mesh: Optional[jax.sharding.Mesh] = None) -> bool:
  """Whether ``knn(backend="auto")`` takes the host-BLAS path.

  True on a single-process run whose default backend is the CPU and whose
  mesh (if any) holds only CPU devices: then the host's BLAS computes the
  distance tiles. GPUs/TPUs and multi-process runs keep the XLA path.
  """
  if jax.process_count() != 1 or jax.default_backend() != "cpu":
    return False
  return mesh is None or all(d.platform == "cpu" for d in mesh.devices.flat)


def _cores() -> int:
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:
    return os.cpu_count() or 1


def _stable_smallest(d: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
  """k smallest of every row, lower column first on ties (exact).

  ``np.partition`` finds the k-th value v; the row's entries below v and
  then its first entries equal to v (column order) are the answer.
  """
  rows = d.shape[0]
  if d.shape[1] == k:
    pos = np.broadcast_to(np.arange(k), (rows, k))
  else:
    kth = np.partition(d, k - 1, axis=1)[:, k - 1:k]
    lt = d < kth
    eq = d == kth
    need = k - lt.sum(axis=1, keepdims=True)
    take = lt | (eq & (np.cumsum(eq, axis=1) <= need))
    pos = np.nonzero(take)[1].reshape(rows, k)
  val = np.take_along_axis(d, pos, axis=1)
  o = np.argsort(val, axis=1, kind="stable")
  return np.take_along_axis(val, o, axis=1), np.take_along_axis(pos, o, axis=1)


def _host_topk(d: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
  """k smallest of every row of ``d`` (lower column first on ties).

  Columns are split into groups (column j in group j mod G, G = width /
  ``_GROUP``, so a group's minimum is one strided pass). The k smallest
  entries lie in the k groups with the smallest minima whenever the k-th
  smallest minimum is not shared by another group; only those k groups'
  ``k · _GROUP`` entries are then searched. Rows with such a tie take the
  exact search over all columns.
  """
  rows, width = d.shape
  if width <= 4 * k * _GROUP:
    return _stable_smallest(d, k)
  if width % _GROUP:
    padded = np.full((rows, -(-width // _GROUP) * _GROUP), np.inf, d.dtype)
    padded[:, :width] = d
    d = padded
  groups = d.shape[1] // _GROUP
  gmin = d.reshape(rows, _GROUP, groups).min(axis=1)
  gsel = np.argpartition(gmin, k - 1, axis=1)[:, :k]
  kth = np.take_along_axis(gmin, gsel, axis=1).max(axis=1, keepdims=True)
  tied = (gmin <= kth).sum(axis=1) > k
  gsel.sort(axis=1)
  # (rows, _GROUP, k) flattened: ascending column indices within a row.
  cols = (gsel[:, None, :]
          + groups * np.arange(_GROUP)[None, :, None]).reshape(rows, -1)
  cand = np.take_along_axis(d, cols, axis=1)
  val, pos = _stable_smallest(cand, k)
  idx = np.take_along_axis(cols, pos, axis=1)
  if tied.any():
    val[tied], idx[tied] = _stable_smallest(d[tied], k)
  return val, idx


def _merge_below(best_d: np.ndarray, best_i: np.ndarray, d: np.ndarray,
                 base: int) -> None:
  """Merges a later tile into full running top-k lists, in place.

  Only entries strictly below a row's current k-th distance can enter its
  list (an equal one loses the tie to the lower index already held), and
  once every row holds k finite distances such entries are rare: for
  random data about ``k · width / columns_seen`` a row. One comparison pass
  and a flat ``np.flatnonzero`` find them (the 2-D ``np.nonzero`` ran 16×
  slower on 512 × 8192 tiles), and one stable sort merges them with the
  held lists.

  Args:
    best_d: (rows, k) ascending distances, all finite (updated).
    best_i: (rows, k) their indices (updated).
    d: (rows, width) the tile's distances.
    base: global index of the tile's first column.
  """
  k = best_d.shape[1]
  width = d.shape[1]
  flat = np.flatnonzero(d < best_d[:, -1:])
  if flat.size == 0:
    return
  r, c = np.divmod(flat, width)
  hit = np.unique(r)  # Ascending rows; ``pos`` numbers them 0..len-1.
  pos = np.searchsorted(hit, r)
  # Held entries first, then candidates in column order: with the stable
  # sort below, equal distances keep the lower index first.
  row = np.concatenate([np.repeat(np.arange(hit.size), k), pos])
  val = np.concatenate([best_d[hit].ravel(), d.ravel()[flat]])
  ind = np.concatenate([best_i[hit].ravel(), c.astype(best_i.dtype) + base])
  order = np.lexsort((val, row))
  start = np.searchsorted(row[order], np.arange(hit.size))
  take = order[start[:, None] + np.arange(k)[None, :]]
  best_d[hit] = val[take]
  best_i[hit] = ind[take]


def knn_host(queries: Array, bank: Array, *, k: int = 1, metric: str = "l2",
             query_chunk: int = _HOST_QUERY_CHUNK,
             bank_chunk: int = _HOST_BANK_CHUNK,
             workers: Optional[int] = None
             ) -> tuple[np.ndarray, np.ndarray]:
  """``knn`` with the distance tiles computed by the host's BLAS (CPU).

  Args and returns as ``knn`` (``workers``: threads, default the usable
  cores; each runs whole query chunks with a single-threaded BLAS).
  """
  q_all = np.asarray(queries, np.float32)
  b = np.asarray(bank, np.float32)
  if metric == "cosine":
    q_all = q_all / np.maximum(
        np.sqrt(np.sum(q_all * q_all, axis=1, keepdims=True)), _EPS)
    b = b / np.maximum(np.sqrt(np.sum(b * b, axis=1, keepdims=True)), _EPS)
  m = b.shape[0]
  n_q = q_all.shape[0]
  # −2 (or −1) scales the bank once: a power-of-two factor commutes
  # exactly with the GEMM's rounding, and saves a pass per tile.
  scale = np.float32(-_scale(metric))
  nb = math.ceil(m / max(int(bank_chunk), 1))
  bc = -(-math.ceil(m / nb) // _GROUP) * _GROUP
  chunks = []
  for s in range(0, m, bc):
    part = b[s:s + bc]
    bias = (np.sum(part * part, axis=1) if metric == "l2"
            else np.ones(part.shape[0], np.float32))
    chunks.append((s, np.ascontiguousarray(part.T * scale),
                   bias.astype(np.float32)))
  n_workers = max(1, int(workers or _cores()))
  # Equal query chunks, a multiple of the workers in number, so no core
  # idles at the end (5 chunks on 2 cores would waste 1/6 of the time).
  nqc = math.ceil(n_q / max(1, int(query_chunk)))
  if n_workers > 1 and nqc > 1:
    nqc = -(-nqc // n_workers) * n_workers
  qc = max(1, math.ceil(n_q / nqc))
  dists = np.empty((n_q, k), np.float32)
  idx = np.empty((n_q, k), np.int32)

  def one(start: int) -> None:
    q = q_all[start:start + qc]
    rows = q.shape[0]
    best_d = np.full((rows, k), np.inf, np.float32)
    best_i = np.full((rows, k), -1, np.int64)
    ar = np.arange(rows)
    for base, bt, bias in chunks:
      d = q @ bt
      d += bias
      if k == 1:
        j = d.argmin(axis=1)
        v = d[ar, j]
        better = v < best_d[:, 0]
        best_d[better, 0] = v[better]
        best_i[better, 0] = j[better] + base
        continue
      if np.isfinite(best_d[:, -1]).all():
        _merge_below(best_d, best_i, d, base)
        continue
      cd, ci = _host_topk(d, min(k, d.shape[1]))
      # Earlier chunks first: a stable sort keeps them ahead on ties.
      all_d = np.concatenate([best_d, cd], axis=1)
      all_i = np.concatenate([best_i, ci + base], axis=1)
      pos = np.argsort(all_d, axis=1, kind="stable")[:, :k]
      best_d = np.take_along_axis(all_d, pos, axis=1)
      best_i = np.take_along_axis(all_i, pos, axis=1)
    if metric == "l2":
      best_d += np.sum(q * q, axis=1, keepdims=True)
    dists[start:start + rows] = np.maximum(best_d, 0.0)
    idx[start:start + rows] = best_i

  starts = range(0, n_q, qc)
  n_workers = min(n_workers, len(starts))
  if n_workers == 1:
    for st in starts:
      one(st)
  else:
    # One BLAS thread per worker: the cores are shared out by query chunk,
    # so the passes around each GEMM run in parallel too.
    with threadpoolctl.threadpool_limits(1, user_api="blas"):
      with concurrent.futures.ThreadPoolExecutor(n_workers) as pool:
        list(pool.map(one, starts))
  return dists, idx


def _exact_tile(q, q_sq, q_ids, b, valid, ids, *, metric, precision,
                exclude_self):
  """Complete distances of one (query chunk, bank chunk) tile.

  L2: ``max(‖q‖² − 2 q·b + ‖b‖², 0)``, evaluated in this order; cosine:
  ``max(1 − q·b, 0)`` of normalised rows. Invalid bank rows (and the query's
  own row with ``exclude_self``) get +inf, so ties between equal computed
  distances (e.g. several clamped to 0) go to the lowest index.
  """
  cross = jnp.matmul(q, b.T, precision=precision)
  if metric == "l2":
    b_sq = jnp.sum(b * b, axis=-1)
    d = jnp.maximum(q_sq[:, None] - 2.0 * cross + b_sq[None, :], 0.0)
  else:
    d = jnp.maximum(1.0 - cross, 0.0)
  mask = valid[None, :]
  if exclude_self:
    mask = mask & (ids[None, :] != q_ids[:, None])
  return jnp.where(mask, d, jnp.inf)


def knn_padded(queries: jax.Array, bank: jax.Array, bank_valid: jax.Array,
               *, k: int, metric: str = "l2",
               query_chunk: Optional[int] = 1024, bank_chunk: int = 16384,
               exclude_self: bool = False,
               precision: Any = lax.Precision.HIGHEST
               ) -> tuple[jax.Array, jax.Array]:
  """Pure, jittable kNN against a fixed-size bank with a validity mask.

  For use inside other jitted steps (e.g. FUN-AD's bank of a varying number
  of rows kept in a fixed-size buffer). Shapes are static, so chunking is
  done with ``lax.map`` over query chunks and ``lax.scan`` over bank chunks.

  Unlike ``knn`` (which ranks partial distances and adds the query term
  afterwards), every tile holds complete, clamped distances
  ``max(‖q‖² − 2 q·b + ‖b‖², 0)``: callers that compare distances with
  thresholds (FUN-AD's 1e-2 self-match rule) get exactly these numbers, and
  equal computed distances go to the lowest bank index.

  Args:
    queries: (Q, D).
    bank: (M, D).
    bank_valid: (M,) bool; False rows are never returned.
    k: neighbours (static).
    metric: ``"l2"`` or ``"cosine"``.
    query_chunk: queries per block (capped at Q); None: all queries in one
      block.
    bank_chunk: bank rows per tile (capped at M).
    exclude_self: queries and bank are the same rows; query i never
      returns bank row i (an exact duplicate of i still counts).
    precision: matmul precision (default HIGHEST: exact float32, so
      GPUs/TPUs do not drop to TF32/bf16).

  Returns:
    (Q, k) float32 distances, ascending, and int32 indices; if fewer than k
    rows are valid the missing neighbours are ``(inf, -1)``.
  """
  _check_metric(metric)
  n_q, dim = queries.shape
  m = bank.shape[0]
  if m == 0:
    raise ValueError("knn_padded: the bank is empty")
  qc = n_q if query_chunk is None else int(query_chunk)
  qc = max(1, min(qc, n_q))
  bc = max(1, min(int(bank_chunk), m))
  nq_chunks = math.ceil(n_q / qc)
  nb_chunks = math.ceil(m / bc)
  queries = jnp.asarray(queries, jnp.float32)
  bank = jnp.asarray(bank, jnp.float32)
  valid = jnp.asarray(bank_valid, bool)
  if metric == "cosine":
    queries = _normalize(queries)
    bank = _normalize(bank)
  if nb_chunks * bc != m:
    extra = nb_chunks * bc - m
    bank = jnp.pad(bank, ((0, extra), (0, 0)))
    valid = jnp.pad(valid, (0, extra))
  xs = (jnp.arange(nb_chunks, dtype=jnp.int32),
        bank.reshape(nb_chunks, bc, dim), valid.reshape(nb_chunks, bc))
  if nq_chunks * qc != n_q:
    queries = jnp.pad(queries, ((0, nq_chunks * qc - n_q), (0, 0)))

  def one(qi, q):
    q_sq = jnp.sum(q * q, axis=-1)
    q_ids = qi * qc + jnp.arange(qc, dtype=jnp.int32)

    def tile(xs_c):
      c, b, v = xs_c
      ids = c * bc + jnp.arange(bc, dtype=jnp.int32)
      return _exact_tile(q, q_sq, q_ids, b, v, ids, metric=metric,
                         precision=precision, exclude_self=exclude_self)

    return _running_topk(tile, xs, qc=qc, bc=bc, k=k, offset=0)

  if nq_chunks == 1:
    d, i = one(0, queries)
  else:
    d, i = lax.map(lambda a: one(*a),
                   (jnp.arange(nq_chunks, dtype=jnp.int32),
                    queries.reshape(nq_chunks, qc, dim)))
  d = d.reshape(nq_chunks * qc, k)[:n_q]
  i = i.reshape(nq_chunks * qc, k)[:n_q]
  return d, i


def mutual_nn_pairs(x: jax.Array, *, valid: Optional[jax.Array] = None,
                    metric: str = "l2", query_chunk: Optional[int] = 1024,
                    bank_chunk: int = 16384,
                    precision: Any = lax.Precision.HIGHEST
                    ) -> tuple[jax.Array, jax.Array]:
  """Mutual nearest-neighbour pairs among the rows of ``x`` (jittable).

  nn(i) is the nearest other row (``knn_padded`` with ``exclude_self``; a
  duplicate of i counts as another row, ties go to the lowest index).
  (i, nn(i)) is a pair when nn(nn(i)) = i; it is reported once, at the row
  i < nn(i). Pairs are found among all rows, e.g. across images.

  Args:
    x: (n, D) features.
    valid: optional (n,) bool; invalid rows are neither queries nor
      neighbours.
    metric: ``"l2"`` or ``"cosine"``.
    query_chunk: see ``knn_padded``.
    bank_chunk: see ``knn_padded``.
    precision: matmul precision.

  Returns:
    ``(partner, pair_valid)``, each (n,): int32 nn(i) (0 where undefined)
    and the bool mask of rows i with a mutual pair (i, nn(i)), i < nn(i).
  """
  n = x.shape[0]
  if valid is None:
    valid = jnp.ones((n,), bool)
  valid = jnp.asarray(valid, bool)
  if n < 2:
    return jnp.zeros((n,), jnp.int32), jnp.zeros((n,), bool)
  _, idx = knn_padded(x, x, valid, k=1, metric=metric,
                      query_chunk=query_chunk, bank_chunk=bank_chunk,
                      exclude_self=True, precision=precision)
  ar = jnp.arange(n, dtype=jnp.int32)
  nn = idx[:, 0]
  has = valid & (nn >= 0)
  nn_safe = jnp.where(has, nn, 0)
  pair_valid = has & (ar < nn_safe) & (nn_safe[nn_safe] == ar)
  return nn_safe, pair_valid
