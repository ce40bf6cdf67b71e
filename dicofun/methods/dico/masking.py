"""Random square masks for DiCo's masked branch (METHODS §2.1).

The image is cut into a grid of ``patch × patch`` cells (the last row/column
may be partial when the size is not a multiple of ``patch``) and exactly
``round(ratio · cells)`` cells per image are masked, chosen uniformly at random
from the key **(ours: mask ratio 0.5, patch 32 px by default)**.

Masked pixels are set to 0 *after* normalisation **(ours)**: the dataset mean
colour of the backbone normalisation (a flat grey square).
"""

from __future__ import annotations

from typing import Union

import jax
import jax.numpy as jnp

Array = jax.Array

def _hw(size: Union[int, tuple[int, int]]) -> tuple[int, int]:
  if isinstance(size, int):
    return size, size
  h, w = size
  return int(h), int(w)


def _grid(h: int, w: int, patch: int) -> tuple[int, int]:
  if patch < 1:
    raise ValueError(f"mask patch must be >= 1, got {patch}")
  return -(-h // patch), -(-w // patch)


def _cells_to_pixels(cells: Array, h: int, w: int, patch: int) -> Array:
  """(B, gh, gw) → (B, h, w, 1) float32 by repeating each cell."""
  px = jnp.repeat(jnp.repeat(cells, patch, axis=1), patch, axis=2)
  return px[:, :h, :w, None].astype(jnp.float32)


def num_masked_cells(size: Union[int, tuple[int, int]], *, ratio: float,
                     patch: int) -> int:
  """``round(ratio · cells)``: the number of masked grid cells per image."""
  gh, gw = _grid(*_hw(size), patch)
  return int(round(float(ratio) * gh * gw))


def random_square_mask(key: Array, batch: int,
                       size: Union[int, tuple[int, int]], *,
                       ratio: float = 0.5, patch: int = 32) -> Array:
  """Per-image random grid masks.

  Args:
    key: PRNG key (the masks are a deterministic function of it).
    batch: number of masks B.
    size: image size S or (H, W).
    ratio: fraction of grid cells masked (rounded to whole cells).
    patch: cell side in pixels.

  Returns:
    (B, H, W, 1) float32, 1 where masked.
  """
  h, w = _hw(size)
  gh, gw = _grid(h, w, patch)
  k = num_masked_cells((h, w), ratio=ratio, patch=patch)
  # Ranks of uniform draws are a uniform random permutation of the cells.
  u = jax.random.uniform(key, (batch, gh * gw))
  ranks = jnp.argsort(jnp.argsort(u, axis=1), axis=1)
  cells = (ranks < k).reshape(batch, gh, gw)
  return _cells_to_pixels(cells, h, w, patch)


def complementary_masks(key: Array, size: Union[int, tuple[int, int]], *,
                        k: int, patch: int = 32) -> Array:
  """K masks that together cover every cell exactly once.

  The cells are randomly permuted and dealt round-robin to the K masks, so
  each mask covers ~1/K of the image and their sum is 1 everywhere.

  Args:
    key: PRNG key.
    size: image size S or (H, W).
    k: number of masks K ≥ 1.
    patch: cell side in pixels.

  Returns:
    (K, H, W, 1) float32.
  """
  if k < 1:
    raise ValueError(f"k must be >= 1, got {k}")
  h, w = _hw(size)
  gh, gw = _grid(h, w, patch)
  perm = jax.random.permutation(key, gh * gw)
  group = jnp.zeros(gh * gw, jnp.int32).at[perm].set(
      jnp.arange(gh * gw, dtype=jnp.int32) % k)
  cells = group.reshape(1, gh, gw) == jnp.arange(k)[:, None, None]
  return _cells_to_pixels(cells, h, w, patch)


def apply_mask(images: Array, mask: Array) -> Array:
  """Sets masked pixels of normalised images to 0 (the mean colour).

  Args:
    images: (B, H, W, C) normalised images.
    mask: (B, H, W, 1) (or broadcastable) with 1 where masked.

  Returns:
    Masked images, same shape and dtype.
  """
  return images * (1.0 - mask.astype(images.dtype))
