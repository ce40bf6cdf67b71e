"""IRMB pseudo-labelling of FUN-AD (METHODS §1), as pure fixed-shape jnp.

Every function here is jittable with static shapes: variable-size sets (the
candidate normals, the memory bank, the mutual-nearest-neighbour pairs) are
represented by a fixed-size array plus a validity mask, so the whole training
iteration compiles once.

Steps (per training iteration, without gradients):

1. ``minmax`` of the training-set image scores → candidates ``Ŝ < τ_n``.
2. ``draw_bank_images``: ⌊ρ·|C|⌋ candidate images without replacement.
3. ``bank_distances``: squared L2 of each batch patch to the bank (top-2 with
   the "1st < 1e-2 → 2nd" rule), min-max over the batch's B·P patches.
4. ``pseudo_labels``: ``d̃ > τ_n``.
5. ``gaussian_synthesis``: noise on the input features of τ_n < d̃ < τ_c.
6. Mutual pairs: ``dicofun.ops.knn.mutual_nn_pairs`` of the batch's adapted
   features (called from ``step.py``).

All neighbour searches go through ``dicofun.ops.knn.knn_padded``.
"""

from __future__ import annotations

import functools
from typing import Optional

import jax
import jax.numpy as jnp

from dicofun.ops import knn

# Squared distance below which the nearest bank entry is taken to be the
# query itself (or an exact copy) and the 2nd neighbour is used instead.
SELF_MATCH_EPS = 1e-2


def minmax(x: jax.Array, valid: Optional[jax.Array] = None) -> jax.Array:
  """Min-max normalisation to [0, 1] over the valid entries of ``x``.

  As in the reference implementation, a constant input maps to all zeros.

  Args:
    x: any-shape array.
    valid: optional bool mask of ``x``'s shape; invalid entries are ignored
      for the min/max and mapped to 0.

  Returns:
    Array of ``x``'s shape.
  """
  if valid is None:
    valid = jnp.ones(x.shape, bool)
  lo = jnp.min(jnp.where(valid, x, jnp.inf))
  hi = jnp.max(jnp.where(valid, x, -jnp.inf))
  span = hi - lo
  out = jnp.where(span > 0, (x - lo) / jnp.where(span > 0, span, 1.0), 0.0)
  return jnp.where(valid, out, 0.0)


def candidate_normals(scores: jax.Array, valid: jax.Array, *,
                      tau_n: float) -> jax.Array:
  """C = {n : Ŝ_n < τ_n} with Ŝ the min-max normalised image scores.

  Args:
    scores: (N,) image scores S_n (max patch score).
    valid: (N,) bool, False for padding rows.
    tau_n: normal threshold.

  Returns:
    (N,) bool candidate mask (always False on padding).
  """
  return (minmax(scores, valid) < tau_n) & valid


def bank_size(num_candidates: jax.Array, *, rho: float) -> jax.Array:
  """m = ⌊ρ·|C|⌋, at least 1 **(ours)** so the bank is never empty."""
  # The tiny offset absorbs float32 representation error of ρ·|C| (e.g.
  # 0.3·10) without moving any genuinely fractional product across an integer.
  m = jnp.floor(num_candidates.astype(jnp.float32) * rho + 1e-4)
  return jnp.maximum(m.astype(jnp.int32), 1)


def draw_bank_images(key: jax.Array, candidates: jax.Array, *, rho: float,
                     max_images: int) -> tuple[jax.Array, jax.Array]:
  """Draws ⌊ρ·|C|⌋ candidate images without replacement (fixed shapes).

  Every image gets a uniform random key; candidates are ranked before
  non-candidates and, within each group, by their key, so the first m ranks
  are a uniform draw without replacement from C.

  Args:
    key: PRNG key (a fresh one per iteration gives a fresh draw).
    candidates: (N,) bool candidate mask.
    rho: memory-size fraction ρ.
    max_images: static upper bound on m (⌊ρ·N⌋, at least 1).

  Returns:
    ``(idx, valid)``: (max_images,) int32 image indices and bool validity
    (the first m entries are valid). When C is empty the (invalid-as-normal)
    top-ranked image is still used so the bank is never empty **(ours)**.
  """
  u = jax.random.uniform(key, candidates.shape)
  priority = jnp.where(candidates, u, 2.0 + u)
  order = jnp.argsort(priority)[:max_images].astype(jnp.int32)
  m = bank_size(jnp.sum(candidates), rho=rho)
  valid = jnp.arange(max_images) < m
  return order, valid


def draw_bank_patches(key: jax.Array, bank_idx: jax.Array,
                      bank_img_valid: jax.Array, *, patches_per_image: int,
                      num_patches: int) -> tuple[jax.Array, jax.Array,
                                                 jax.Array]:
  """A random subset of the drawn bank images' patches **(ours)**.

  Instead of all ``m·P`` patches of the ``m`` drawn images, ``num_patches``
  of them are drawn uniformly without replacement (fixed shapes: uniform
  keys, valid positions ranked first). The bank then costs ``num_patches``
  features and distance columns per iteration instead of ``m·P``.

  Args:
    key: PRNG key.
    bank_idx: (max_images,) image indices from ``draw_bank_images``.
    bank_img_valid: (max_images,) bool.
    patches_per_image: P.
    num_patches: rows of the subsampled bank (static).

  Returns:
    ``(image_idx, patch_idx, valid)``, each (num_patches,); rows beyond the
    ``m·P`` valid positions are invalid.
  """
  total = bank_idx.shape[0] * patches_per_image
  num_patches = min(int(num_patches), total)
  flat_valid = jnp.repeat(bank_img_valid, patches_per_image)
  u = jax.random.uniform(key, (total,))
  priority = jnp.where(flat_valid, u, 2.0 + u)
  _, flat = jax.lax.top_k(-priority, num_patches)
  img = bank_idx[flat // patches_per_image]
  return img, (flat % patches_per_image).astype(jnp.int32), flat_valid[flat]


def percentile_norm(x: jax.Array, *, lo: float, hi: float) -> jax.Array:
  """(x − q_lo)/(q_hi − q_lo) clipped to [0, 1], q = percentiles of x.

  **(ours)** A robust replacement of ``minmax`` for heavy-tailed distances:
  the few most extreme patches of a batch no longer set the range. A zero
  span gives 0 everywhere.
  """
  q_lo = jnp.percentile(x, lo)
  q_hi = jnp.percentile(x, hi)
  span = q_hi - q_lo
  out = (x - q_lo) / jnp.where(span > 0, span, 1.0)
  return jnp.clip(jnp.where(span > 0, out, 0.0), 0.0, 1.0)


def rank_norm(x: jax.Array) -> jax.Array:
  """Ranks of x scaled to [0, 1] (0 = smallest) **(ours)**."""
  flat = x.reshape(-1)
  ranks = jnp.argsort(jnp.argsort(flat)).astype(jnp.float32)
  return (ranks / max(flat.shape[0] - 1, 1)).reshape(x.shape)


def normalise_distances(d: jax.Array, *, kind: str, lo: float,
                        hi: float) -> jax.Array:
  """d̃ over the batch: "minmax" (paper), "percentile" or "rank" (ours)."""
  if kind == "minmax":
    return minmax(d)
  if kind == "percentile":
    return percentile_norm(d, lo=lo, hi=hi)
  if kind == "rank":
    return rank_norm(d)
  raise ValueError(f"d_norm {kind!r} not in ('minmax', 'percentile', 'rank')")


def bank_distances(queries: jax.Array, bank: jax.Array, bank_valid: jax.Array,
                   *, chunk: int = 4096,
                   self_eps: float = SELF_MATCH_EPS) -> jax.Array:
  """Squared L2 from each query to its nearest bank entry that is not itself.

  Searches k = 2; if the 1st distance is < ``self_eps`` (the query itself or a
  copy is in the bank) the 2nd is used (METHODS §1 step 4). (The reference
  code additionally zeroes a 2nd distance below 1e-2; we follow the spec.)

  Args:
    queries: (Q, D) adapted batch features.
    bank: (M, D) adapted bank features.
    bank_valid: (M,) bool.
    chunk: bank rows per scan step (all queries at once).
    self_eps: self-match threshold on the squared distance.

  Returns:
    (Q,) distances.
  """
  # All queries in one block, ``chunk`` bank rows per tile; the distances
  # are max(‖q‖² − 2 q·b + ‖b‖², 0) at HIGHEST precision: the self-match
  # rule compares them with 1e-2, which reduced-precision (TF32) products of
  # large-norm features cannot resolve.
  dist, _ = knn.knn_padded(queries, bank, bank_valid, k=2, query_chunk=None,
                           bank_chunk=chunk)
  d1, d2 = dist[:, 0], dist[:, 1]
  d = jnp.where(d1 < self_eps, d2, d1)
  # With a 1-row bank the 2nd neighbour does not exist **(ours)**.
  return jnp.where(jnp.isfinite(d), d, d1)


def pseudo_labels(d_norm: jax.Array, *, tau_n: float) -> jax.Array:
  """y = 1[d̃ > τ_n] as float32."""
  return (d_norm > tau_n).astype(jnp.float32)


def noise_sigma(x: jax.Array, *, ddof: int = 1) -> jax.Array:
  """σ_c: per patch position the batch std of channel c, max over positions.

  Interpretation **(ours, following the reference code)**: for x of shape
  (B, P, D) the standard deviation is taken over the batch axis B separately
  for every patch position p and channel c (unbiased, ddof = 1, PyTorch's
  ``Tensor.std`` default), giving (P, D); σ_c is its maximum over p.

  Args:
    x: (B, P, D) input features of the batch.
    ddof: delta degrees of freedom of the std.

  Returns:
    (D,) per-channel noise scale.
  """
  b = x.shape[0]
  mean = jnp.mean(x, axis=0, keepdims=True)
  var = jnp.sum((x - mean) ** 2, axis=0) / max(b - ddof, 1)
  return jnp.max(jnp.sqrt(var), axis=0)


def gaussian_synthesis(key: jax.Array, x: jax.Array, d_norm: jax.Array, *,
                       tau_n: float, tau_c: float,
                       ddof: int = 1) -> tuple[jax.Array, jax.Array]:
  """Adds N(0, σ²) to the *input* features of patches with τ_n < d̃ < τ_c.

  Args:
    key: PRNG key.
    x: (B, P, D) input features.
    d_norm: (B, P) normalised bank distances d̃.
    tau_n: normal threshold.
    tau_c: upper threshold of the noised band.
    ddof: see ``noise_sigma``.

  Returns:
    ``(x_noised, noised)``: (B, P, D) features and (B, P) bool mask.
  """
  noised = (d_norm > tau_n) & (d_norm < tau_c)
  sigma = noise_sigma(x, ddof=ddof)
  eps = jax.random.normal(key, x.shape, x.dtype) * sigma
  return x + jnp.where(noised[..., None], eps, 0.0), noised


@functools.partial(jax.jit, static_argnames=("tau_n", "chunk"))
def batch_pseudo_labels(f_batch: jax.Array, bank: jax.Array,
                        bank_valid: jax.Array, *, tau_n: float,
                        chunk: int = 4096) -> tuple[jax.Array, jax.Array]:
  """Steps 4–5 for a flat batch: returns (d̃ (Q,), y (Q,))."""
  d = bank_distances(f_batch, bank, bank_valid, chunk=chunk)
  d_norm = minmax(d)
  return d_norm, pseudo_labels(d_norm, tau_n=tau_n)
