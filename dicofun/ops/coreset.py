"""Greedy k-centre coreset selection (PatchCore's memory-bank subsampling).

Greedy k-centre: start from one point, then repeatedly add the point that is
farthest from everything selected so far. The resulting coverage radius is at
most twice the optimal one. As in PatchCore, distances are computed on a
random Gaussian projection to ``projection_dim`` dimensions
(Johnson–Lindenstrauss), which preserves them approximately and makes each
step cheap.

The selection loop is a jitted ``lax.fori_loop`` with fixed shapes: per
step one matrix-vector product over all N projected points (O(N) extra
memory, no N × N matrix), a running minimum distance and an argmax. It runs
in segments of ``segment`` picks so that ``dicofun.progress`` can report the
rate and ETA between them (the carried state makes the picks identical to
one uninterrupted loop).

Each step reads all N projected rows, so it is bound by memory traffic.
With ``mesh=`` of more than one device the rows are split over the mesh's
first axis (``data``): each device updates the distances of its rows and
finds its local farthest point, and the per-device maxima are all-gathered
(lowest global index on ties, as ``argmax`` on one device), so the picks are
the same as on one device.

Two methods:

* ``"greedy"`` (default): the first centre is a uniformly random row.
* ``"approximate"``: the official PatchCore ``ApproximateGreedyCoresetSampler``
  start — ``num_starts`` (10) random rows that are not themselves selected;
  every row's initial distance is its mean Euclidean distance to them, so
  the first pick is the row farthest from them on average. The selection
  loop is the same (the official "approximate" sampler differs from its
  exact one by never building the N × N matrix, which this loop never does
  either).

Two implementations of the same exact greedy (``impl=``):

* ``"loop"``: the jitted loop above. Every pick reads all N rows, so the
  run costs N · M row reads, bound by memory bandwidth (on 2 CPU cores,
  ~50 minutes for 10 % of 779k patches).
* ``"rounds"`` **(ours)**, host numpy, the default on CPU-only
  single-process runs (``knn.use_host_blas``): the picks only ever come from
  the rows that are currently farthest. Each round takes the ``hot`` rows
  with the largest distances; every other row's distance is at most
  θ, the smallest of them, and can only shrink. So as long as the largest hot
  distance exceeds θ it is also the largest of all rows, and the loop picks
  and updates on the hot rows alone (a ``hot × d`` matrix-vector product per
  pick, cache-resident). When the hot maximum falls to θ the round ends and
  all rows catch up on the round's centres in one exact nearest-centre
  search (``knn.knn`` k = 1: the host-BLAS GEMM tiles), which turns the
  memory-bound row reads into compute-bound GEMMs. The picks are the loop's
  (ties: lowest row first, as ``argmax``) up to float rounding of the
  distances (numpy's and the GEMM's summation orders differ from XLA's), so
  two runs can part at a near-tie; the coverage radius is what is
  compared (benchmarks/coreset.py).
"""

from __future__ import annotations

import functools
import math
from typing import Optional, Union

from absl import logging
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from dicofun import progress as progress_lib
from dicofun.ops import knn as knn_lib

Array = Union[np.ndarray, jax.Array]
P = jax.sharding.PartitionSpec
METHODS = ("greedy", "approximate")
IMPLS = ("auto", "loop", "rounds")


def _num_to_select(n: int, fraction: Optional[float],
                   num: Optional[int]) -> int:
  if (fraction is None) == (num is None):
    raise ValueError("pass exactly one of fraction= or num=")
  if num is None:
    if not 0.0 < fraction <= 1.0:
      raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    num = int(n * fraction)
  return int(min(max(int(num), 1), n))


def project(x: Array, *, projection_dim: int, seed: int = 0,
            chunk: int = 65536) -> jax.Array:
  """Gaussian random projection of the rows of ``x``.

  Args:
    x: (N, D) features (numpy stays on host until each chunk is projected,
      so the full-dimensional array never has to fit on the device).
    projection_dim: output dimension; if ≥ D (or ≤ 0) ``x`` is returned
      unprojected **(ours)**: a projection cannot help then.
    seed: seed of the projection matrix.
    chunk: rows projected per device call.

  Returns:
    (N, projection_dim) float32 jax array.
  """
  n, d = x.shape
  if projection_dim <= 0 or projection_dim >= d:
    return jnp.asarray(x, jnp.float32)
  key = jax.random.fold_in(jax.random.PRNGKey(seed), 1)
  mat = jax.random.normal(key, (d, projection_dim), jnp.float32)
  mat = mat / math.sqrt(projection_dim)
  mm = jax.jit(lambda a, m: jnp.dot(a.astype(jnp.float32), m,
                                    precision=lax.Precision.HIGHEST))
  chunk = max(1, int(chunk))
  if n <= chunk:
    return mm(jnp.asarray(x), mat)
  # Fixed chunk shape (last one padded) keeps this to one compilation.
  parts = []
  for s in range(0, n, chunk):
    part = x[s:s + chunk]
    rows = part.shape[0]
    if rows < chunk:
      part = (np.pad(np.asarray(part), ((0, chunk - rows), (0, 0)))
              if isinstance(part, np.ndarray)
              else jnp.pad(part, ((0, chunk - rows), (0, 0))))
    parts.append(mm(jnp.asarray(part), mat)[:rows])
  return jnp.concatenate(parts)


def _pick_step(z, sq, carry, t, *, local_argmax):
  """One greedy pick: record ``cur``, update distances, next farthest row."""
  min_d, sel, cur, c, c_sq = carry
  sel = sel.at[t].set(cur)
  d = sq - 2.0 * jnp.dot(z, c, precision=lax.Precision.HIGHEST) + c_sq
  min_d = jnp.minimum(min_d, jnp.maximum(d, 0.0))
  return local_argmax(min_d, sel, cur)


@functools.partial(jax.jit, static_argnames=("steps",))
def _segment(z, sq, carry, t0, *, steps):
  """``steps`` greedy picks on one device, from pick number ``t0``."""
  def local_argmax(min_d, sel, cur):
    # Selected points are never picked again, even among exact duplicates.
    min_d = min_d.at[cur].set(-1.0)
    nxt = jnp.argmax(min_d).astype(jnp.int32)
    return min_d, sel, nxt, z[nxt], sq[nxt]

  def body(t, carry):
    return _pick_step(z, sq, carry, t0 + t, local_argmax=local_argmax)

  return lax.fori_loop(0, steps, body, carry)


def _sharded_segment_fn(mesh, steps: int):
  """``_segment`` with the rows split over ``mesh``'s first axis."""
  axis = mesh.axis_names[0]

  def local(z, sq, min_d, sel, cur, c, c_sq, t0):
    n_local = z.shape[0]
    offset = lax.axis_index(axis) * n_local

    def local_argmax(min_d, sel, cur):
      li = cur - offset
      own = (li >= 0) & (li < n_local)
      li = jnp.clip(li, 0, n_local - 1)
      min_d = jnp.where(own, min_d.at[li].set(-1.0), min_d)
      j = jnp.argmax(min_d).astype(jnp.int32)
      # Per device (max distance, its global row, that row and its norm);
      # the first device with the largest maximum wins, i.e. the lowest
      # global index among equal maxima, as argmax on one device.
      vals = lax.all_gather(min_d[j], axis)
      rows = lax.all_gather(j + offset, axis)
      vecs = lax.all_gather(z[j], axis)
      sqs = lax.all_gather(sq[j], axis)
      w = jnp.argmax(vals)
      return min_d, sel, rows[w], vecs[w], sqs[w]

    def body(t, carry):
      return _pick_step(z, sq, carry, t0 + t, local_argmax=local_argmax)

    return lax.fori_loop(0, steps, body, (min_d, sel, cur, c, c_sq))

  row = P(axis)
  sm = jax.shard_map(local, mesh=mesh,
                     in_specs=(row, row, row, P(), P(), P(), P(), P()),
                     out_specs=(row, P(), P(), P(), P()), check_vma=False)
  return jax.jit(lambda z, sq, carry, t0: sm(z, sq, *carry, t0))


@functools.lru_cache(maxsize=16)
def _cached_sharded_segment(mesh, steps: int):
  return _sharded_segment_fn(mesh, steps)


def _initial_distances(z: jax.Array, *, method: str,
                       starts: np.ndarray) -> jax.Array:
  """Squared distances the loop starts from (+inf for "greedy")."""
  n = z.shape[0]
  if method == "greedy":
    return jnp.full((n,), jnp.inf, jnp.float32)
  # Official PatchCore: mean Euclidean distance to the random starts; the
  # loop works on squared distances, so the mean is squared (same order).
  d, _ = knn_lib.knn(z, z[jnp.asarray(starts)], k=len(starts))
  mean = np.sqrt(np.maximum(np.asarray(d), 0.0)).mean(axis=1)
  return jnp.asarray(mean * mean, jnp.float32)


def _put_rows(x: np.ndarray, mesh) -> jax.Array:
  sh = jax.sharding.NamedSharding(mesh, P(mesh.axis_names[0]))
  return jax.make_array_from_callback(x.shape, sh, lambda idx: x[idx])


def _put_replicated(x, mesh) -> jax.Array:
  x = np.asarray(x)
  sh = jax.sharding.NamedSharding(mesh, P())
  return jax.make_array_from_callback(x.shape, sh, lambda idx: x[idx])


def _host(x: jax.Array) -> np.ndarray:
  if x.is_fully_addressable:
    return np.asarray(x)
  return np.asarray(x.addressable_data(0))


def _select(z: jax.Array, min_d: jax.Array, first: int, *, num: int,
            mesh, segment: int, desc: str) -> np.ndarray:
  """Runs the greedy loop in segments, reporting progress between them."""
  n = z.shape[0]
  ndev = 1 if mesh is None else int(mesh.devices.size)
  segment = max(1, min(int(segment), num))
  starts = list(range(0, num, segment))
  if ndev == 1:
    sq = jnp.sum(z * z, axis=1)
    carry = (min_d, jnp.zeros((num,), jnp.int32),
             jnp.asarray(first, jnp.int32), z[first], sq[first])
    run = lambda steps, c, t0: _segment(z, sq, c, t0, steps=steps)
  else:
    # Padded rows start (and stay) at -1: never picked.
    pad = -n % ndev
    z_np = np.asarray(z)
    md = np.asarray(min_d)
    if pad:
      z_np = np.concatenate([z_np, np.zeros((pad, z_np.shape[1]),
                                            np.float32)])
      md = np.concatenate([md, np.full((pad,), -1.0, np.float32)])
    sq_np = np.asarray(jnp.sum(jnp.asarray(z_np) ** 2, axis=1))
    zs, sqs = _put_rows(z_np, mesh), _put_rows(sq_np, mesh)
    carry = (_put_rows(md, mesh),
             _put_replicated(np.zeros((num,), np.int32), mesh),
             _put_replicated(np.int32(first), mesh),
             _put_replicated(z_np[first], mesh),
             _put_replicated(sq_np[first], mesh))
    run = lambda steps, c, t0: _cached_sharded_segment(mesh, steps)(
        zs, sqs, c, _put_replicated(np.int32(t0), mesh))
  for t0 in progress_lib.progress(starts, total=len(starts), desc=desc):
    steps = min(segment, num - t0)
    carry = run(steps, carry, jnp.int32(t0) if ndev == 1 else t0)
    # One segment at a time: the progress line means picks done, and on CPU
    # host devices in-flight collective programs can starve each other.
    jax.block_until_ready(carry)
  return _host(carry[1]).astype(np.int64)


def _select_rounds(z: np.ndarray, min_d: np.ndarray, first: int, *,
                   num: int, hot: int, desc: str) -> np.ndarray:
  """The exact greedy in rounds over the farthest rows (module docstring)."""
  z = np.ascontiguousarray(z, np.float32)
  n = z.shape[0]
  sq = np.einsum("ij,ij->i", z, z)
  d = np.array(min_d, np.float32)
  sel = np.empty((num,), np.int64)
  hot = min(max(int(hot), 1), n)
  ticks = iter(progress_lib.progress(range(num), total=num, desc=desc))

  def full_step(t: int, row: int) -> None:
    # One pick that updates every row (the loop's step).
    sel[t] = row
    dist = sq - 2.0 * (z @ z[row]) + sq[row]
    np.minimum(d, np.maximum(dist, 0.0), out=d)
    d[row] = -1.0  # Selected rows are never picked again.
    next(ticks)

  full_step(0, first)
  t = 1
  while t < num:
    if hot < n:
      rows = np.sort(np.argpartition(d, n - hot)[n - hot:])
      theta = float(d[rows].min())
    else:
      rows, theta = np.arange(n), -np.inf
    zh, sqh, dh = z[rows], sq[rows], d[rows]
    t0 = t
    while t < num:
      p = int(np.argmax(dh))  # Lowest row among equal maxima (rows sorted).
      if not dh[p] > theta:
        break  # A row outside may now be as far: catch up first.
      sel[t] = rows[p]
      c = zh[p]
      dist = sqh - 2.0 * (zh @ c) + sqh[p]
      np.minimum(dh, np.maximum(dist, 0.0), out=dh)
      dh[p] = -1.0
      t += 1
      next(ticks)
    if t == t0:
      # The largest distance is shared with rows outside the hot set (e.g.
      # duplicates): one plain step keeps the lowest-row rule and progresses.
      full_step(t, int(np.argmax(d)))
      t += 1
      continue
    d[rows] = dh
    if t < num:
      # Every row catches up on this round's centres (min is idempotent, so
      # the hot rows may take part; a selected row stays at −1).
      near, _ = knn_lib.knn(z, z[sel[t0:t]], k=1, backend="host")
      np.minimum(d, near[:, 0], out=d)
  for _ in ticks:  # Logs the final line.
    pass
  return sel


def greedy_coreset(x: Array, *, fraction: Optional[float] = None,
                   num: Optional[int] = None, projection_dim: int = 128,
                   seed: int = 0, chunk: int = 65536,
                   method: str = "greedy", num_starts: int = 10,
                   mesh: Optional[jax.sharding.Mesh] = None,
                   segment: int = 512, impl: str = "auto",
                   hot: int = 4096) -> np.ndarray:
  """Greedy k-centre coreset of the rows of ``x``.

  Args:
    x: (N, D) features (numpy or jax).
    fraction: fraction of rows to keep (``int(N · fraction)``, at least 1).
    num: number of rows to keep (instead of ``fraction``).
    projection_dim: dimension of the random projection the distances are
      computed on (≤ 0 or ≥ D: no projection).
    seed: seed of the projection and of the first centre (uniform over
      rows) or of the ``num_starts`` random starts.
    chunk: rows per projection call (bounds device memory for large N).
    method: ``"greedy"`` (first centre uniformly random) or
      ``"approximate"`` (official PatchCore start: ``num_starts`` random
      rows, initial distance = mean distance to them; see the module
      docstring).
    num_starts: random starting rows of ``"approximate"`` (at most N).
    mesh: optional mesh; with more than one device the rows are split over
      its first axis (same picks as one device).
    segment: ``"loop"`` only: picks per jitted call between two progress
      reports.
    impl: ``"loop"`` (jitted, any backend; rows split over ``mesh``),
      ``"rounds"`` (host numpy + host-BLAS GEMMs, see the module docstring)
      or ``"auto"``: ``"rounds"`` where ``knn.use_host_blas(mesh)`` (CPU-only
      single process), else ``"loop"``.
    hot: ``"rounds"`` only: rows per round's hot set.

  Returns:
    (num,) int64 numpy indices into ``x`` in selection order, without
    repeats.
  """
  if method not in METHODS:
    raise ValueError(f"method must be one of {METHODS}, got {method!r}")
  if impl not in IMPLS:
    raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
  x_shape = np.shape(x)
  if len(x_shape) != 2 or x_shape[0] == 0:
    raise ValueError(f"greedy_coreset needs a non-empty (N, D) array, got "
                     f"{x_shape}")
  n = x_shape[0]
  m = _num_to_select(n, fraction, num)
  first = int(np.random.default_rng(seed).integers(n))
  starts = np.sort(np.random.default_rng(seed).choice(
      n, min(max(int(num_starts), 1), n), replace=False))
  z = project(x, projection_dim=projection_dim, seed=seed, chunk=chunk)
  logging.info("greedy_coreset (%s): %d of %d rows on %d-d features", method,
               m, n, z.shape[1])
  min_d = _initial_distances(z, method=method, starts=starts)
  if method == "approximate":
    # The first pick is the row farthest (on average) from the starts.
    first = int(np.argmax(np.asarray(min_d)))
  if impl == "auto":
    impl = "rounds" if knn_lib.use_host_blas(mesh) else "loop"
  if impl == "rounds":
    return _select_rounds(np.asarray(z), np.asarray(min_d), first, num=m,
                          hot=hot, desc=f"coreset {method} ({m} picks)")
  if mesh is not None and int(mesh.devices.size) == 1:
    mesh = None
  return _select(z, min_d, first, num=m, mesh=mesh, segment=segment,
                 desc=f"coreset {method} ({m} picks)")


def coverage_radius(x: Array, selected: Array, *,
                    mesh: Optional[jax.sharding.Mesh] = None) -> float:
  """Coverage radius of a coreset: max over rows of the Euclidean distance
  to the nearest selected row.

  Args:
    x: (N, D) features.
    selected: indices of the selected rows.
    mesh: optional mesh for the kNN search.

  Returns:
    The radius (float, in the units of ``x``).
  """
  x = np.asarray(x, np.float32)
  centres = x[np.asarray(selected)]
  d, _ = knn_lib.knn(x, centres, k=1, mesh=mesh)
  return float(np.sqrt(max(float(np.max(d)), 0.0)))
