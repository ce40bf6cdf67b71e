"""Local outlier factor per patch position (SoftPatch's patch denoising).

For every patch position p, the N training images' patches at p form a point
set; each patch gets the local outlier factor (Breunig et al., 2000) within
that set, with the same definitions as ``sklearn.neighbors.
LocalOutlierFactor`` (Euclidean distance, the point itself excluded from its
neighbourhood):

* k-distance(o): distance from o to its k-th nearest neighbour;
* reach-dist(a, b) = max(k-distance(b), d(a, b)) for b ∈ N_k(a);
* lrd(a) = 1 / (mean_{b ∈ N_k(a)} reach-dist(a, b) + 1e-10);
* LOF(a) = mean_{b ∈ N_k(a)} lrd(b) / lrd(a).

All positions are processed by one jitted function: ``lax.map`` over chunks
of positions, each chunk a batch of (N × N) distance matrices, so memory is
O(chunk × N²).
"""

from __future__ import annotations

import functools
import math
from typing import Union

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

Array = Union[np.ndarray, jax.Array]


def _lof_one(x: jax.Array, k: int) -> jax.Array:
  """LOF of every row of ``x`` (n, C) among the rows of ``x``."""
  n = x.shape[0]
  sq = jnp.sum(x * x, axis=1)
  d2 = sq[:, None] + sq[None, :] - 2.0 * jnp.dot(
      x, x.T, precision=lax.Precision.HIGHEST)
  d = jnp.sqrt(jnp.maximum(d2, 0.0))
  d = jnp.where(jnp.eye(n, dtype=bool), jnp.inf, d)  # exclude self
  neg, nbr = lax.top_k(-d, k)
  dist = -neg                                   # (n, k) ascending
  k_dist = dist[:, k - 1]                       # (n,)
  reach = jnp.maximum(dist, k_dist[nbr])
  lrd = 1.0 / (jnp.mean(reach, axis=1) + 1e-10)
  return jnp.mean(lrd[nbr], axis=1) / lrd


@functools.partial(jax.jit, static_argnames=("k", "chunk"))
def _lof_positions(feats_pnc: jax.Array, *, k: int, chunk: int) -> jax.Array:
  p, n, c = feats_pnc.shape
  groups = feats_pnc.reshape(p // chunk, chunk, n, c)
  out = lax.map(jax.vmap(lambda x: _lof_one(x, k)), groups)
  return out.reshape(p, n)


def lof_per_position(feats: Array, *, k: int = 6,
                     max_chunk_bytes: int = 1 << 28) -> np.ndarray:
  """Local outlier factor of each image's patch at each position.

  Args:
    feats: (N, P, C) patch features of N images at P positions.
    k: neighbourhood size (``n_neighbors``); must be < N.
    max_chunk_bytes: bound on the distance-matrix memory of one chunk of
      positions (chunk size = a power of two ≤ this / (N² · 4 · 4)).

  Returns:
    (N, P) float32 LOF values (1 ≈ inlier, larger = more outlying); equals
    ``-LocalOutlierFactor(n_neighbors=k).fit(X).negative_outlier_factor_``
    for the N points at each position.
  """
  n, p, c = np.shape(feats)
  if k < 1 or k >= n:
    raise ValueError(f"LOF needs 1 <= k < N, got k={k}, N={n}")
  # ~4 N×N float32 temporaries per position (d2, d, masks, top-k work).
  per_pos = 4 * 4 * n * n
  chunk = max(1, min(p, int(max_chunk_bytes) // per_pos))
  chunk = 1 << (chunk.bit_length() - 1)  # power of two: few compilations
  n_chunks = math.ceil(p / chunk)
  x = jnp.transpose(jnp.asarray(feats, jnp.float32), (1, 0, 2))
  if n_chunks * chunk != p:
    x = jnp.pad(x, ((0, n_chunks * chunk - p), (0, 0), (0, 0)))
  out = _lof_positions(x, k=int(k), chunk=chunk)[:p]
  return np.asarray(out.T)
