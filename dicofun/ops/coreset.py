"""Greedy k-centre coreset selection (PatchCore's memory-bank subsampling).

Greedy k-centre: start from one point, then repeatedly add the point that is
farthest from everything selected so far. The resulting coverage radius is at
most twice the optimal one. As in PatchCore, distances are computed on a
random Gaussian projection to ``projection_dim`` dimensions
(Johnson–Lindenstrauss), which preserves them approximately and makes each
step cheap.

The selection loop is one jitted ``lax.fori_loop`` with fixed shapes: per
step one matrix-vector product over all N projected points (O(N) extra
memory, no N × N matrix), a running minimum distance and an argmax.
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

Array = Union[np.ndarray, jax.Array]


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


@functools.partial(jax.jit, static_argnames=("num",))
def _greedy(z: jax.Array, first: jax.Array, *, num: int) -> jax.Array:
  """Indices of ``num`` greedy k-centre picks on rows of ``z``."""
  sq = jnp.sum(z * z, axis=1)

  def dist_to(i):
    c = z[i]
    d = sq - 2.0 * jnp.dot(z, c, precision=lax.Precision.HIGHEST) + sq[i]
    return jnp.maximum(d, 0.0)

  def body(t, carry):
    min_d, sel, cur = carry
    sel = sel.at[t].set(cur)
    min_d = jnp.minimum(min_d, dist_to(cur))
    # Selected points are never picked again, even among exact duplicates.
    min_d = min_d.at[cur].set(-1.0)
    return min_d, sel, jnp.argmax(min_d).astype(jnp.int32)

  init = (jnp.full(z.shape[:1], jnp.inf, jnp.float32),
          jnp.zeros((num,), jnp.int32), first.astype(jnp.int32))
  _, sel, _ = lax.fori_loop(0, num, body, init)
  return sel


def greedy_coreset(x: Array, *, fraction: Optional[float] = None,
                   num: Optional[int] = None, projection_dim: int = 128,
                   seed: int = 0, chunk: int = 65536) -> np.ndarray:
  """Greedy k-centre coreset of the rows of ``x``.

  Args:
    x: (N, D) features (numpy or jax).
    fraction: fraction of rows to keep (``int(N · fraction)``, at least 1).
    num: number of rows to keep (instead of ``fraction``).
    projection_dim: dimension of the random projection the distances are
      computed on (≤ 0 or ≥ D: no projection).
    seed: seed of the projection and of the first centre (uniform over
      rows).
    chunk: rows per projection call (bounds device memory for large N).

  Returns:
    (num,) int64 numpy indices into ``x`` in selection order, without
    repeats.
  """
  x_shape = np.shape(x)
  if len(x_shape) != 2 or x_shape[0] == 0:
    raise ValueError(f"greedy_coreset needs a non-empty (N, D) array, got "
                     f"{x_shape}")
  n = x_shape[0]
  m = _num_to_select(n, fraction, num)
  first = int(np.random.default_rng(seed).integers(n))
  z = project(x, projection_dim=projection_dim, seed=seed, chunk=chunk)
  logging.info("greedy_coreset: %d of %d rows on %d-d features", m, n,
               z.shape[1])
  sel = _greedy(z, jnp.asarray(first, jnp.int32), num=m)
  return np.asarray(sel).astype(np.int64)
