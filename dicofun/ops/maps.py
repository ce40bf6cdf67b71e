"""Anomaly-map post-processing and patch-feature pooling.

* ``patch_scores_to_map``: patch grid → bilinear resize to the evaluation
  size → Gaussian blur (σ in output pixels), the map of PatchCore/FUN-AD.
* ``gaussian_blur``: separable Gaussian with scipy's conventions
  (``scipy.ndimage.gaussian_filter(x, sigma, mode="reflect", truncate=4)``:
  radius ``int(4σ + 0.5)``, "reflect" = mirror including the edge pixel).
  Each 1-D pass is a matmul with a precomputed (n × n) matrix that already
  folds in the boundary reflection, so any radius/size works and the cost is
  two small matmuls per map.
* ``local_average`` / ``resize_features``: PatchCore's 3×3 neighbourhood
  aggregation and the upsampling of the coarser stage.
"""

from __future__ import annotations

import functools
from typing import Sequence, Union

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

Array = Union[np.ndarray, jax.Array]


@functools.lru_cache(maxsize=32)
def _blur_matrix(n: int, sigma: float, truncate: float = 4.0) -> np.ndarray:
  """(n, n) matrix B with (B @ x) = 1-D scipy Gaussian filter of x."""
  radius = int(truncate * float(sigma) + 0.5)
  taps = np.arange(-radius, radius + 1)
  w = np.exp(-0.5 * (taps / float(sigma)) ** 2)
  w /= w.sum()
  mat = np.zeros((n, n), np.float64)
  rows = np.arange(n)
  for t, wt in zip(taps, w):
    # scipy "reflect" (d c b a | a b c d | d c b a) is periodic in 2n.
    j = np.mod(rows + t, 2 * n)
    j = np.where(j >= n, 2 * n - 1 - j, j)
    np.add.at(mat, (rows, j), wt)
  return mat.astype(np.float32)


def gaussian_blur(maps: Array, sigma: float) -> jax.Array:
  """Gaussian blur over the last two axes (scipy "reflect", truncate 4).

  Args:
    maps: (..., H, W) array.
    sigma: standard deviation in pixels; ≤ 0 returns the input.

  Returns:
    Blurred float32 array of the same shape.
  """
  maps = jnp.asarray(maps, jnp.float32)
  if sigma <= 0:
    return maps
  h, w = maps.shape[-2:]
  bh = jnp.asarray(_blur_matrix(int(h), float(sigma)))
  bw = jnp.asarray(_blur_matrix(int(w), float(sigma)))
  hp = lax.Precision.HIGHEST
  out = jnp.einsum("ij,...jw->...iw", bh, maps, precision=hp)
  return jnp.einsum("...hj,wj->...hw", out, bw, precision=hp)


@functools.partial(jax.jit, static_argnames=("size", "sigma"))
def _to_map(scores: jax.Array, *, size: int, sigma: float) -> jax.Array:
  n = scores.shape[0]
  up = jax.image.resize(scores, (n, size, size), method="bilinear",
                        antialias=False)
  return gaussian_blur(up, sigma)


def patch_scores_to_map(scores: Array, *, size: int,
                        sigma: float = 4.0) -> jax.Array:
  """Per-image anomaly maps at the evaluation size.

  Args:
    scores: (N, h, w) patch scores.
    size: output side length (square maps).
    sigma: Gaussian blur σ in output pixels (METHODS: 4).

  Returns:
    (N, size, size) float32 maps. Bilinear resize uses half-pixel centres
    (``torch.nn.functional.interpolate(..., align_corners=False)``).
  """
  scores = jnp.asarray(scores, jnp.float32)
  if scores.ndim != 3:
    raise ValueError(f"scores must be (N, h, w), got {scores.shape}")
  return _to_map(scores, size=int(size), sigma=float(sigma))


def local_average(features: Array, size: int = 3, *,
                  count_include_pad: bool = True) -> jax.Array:
  """PatchCore's local neighbourhood aggregation: ``size``×``size`` mean.

  Stride 1, output grid = input grid. PatchCore unfolds with zero padding
  and averages, so border pixels average in zeros; the default
  (``count_include_pad=True``, like ``torch.nn.AvgPool2d(3, 1, 1)`` used by
  anomalib) matches that. ``count_include_pad=False`` averages only the
  pixels inside the image **(ours)**.

  Args:
    features: (N, h, w, C).
    size: odd neighbourhood size.
    count_include_pad: whether padded zeros count in the mean.

  Returns:
    (N, h, w, C) float32.
  """
  if size % 2 != 1:
    raise ValueError(f"size must be odd, got {size}")
  x = jnp.asarray(features, jnp.float32)
  if size == 1:
    return x
  r = size // 2
  pads = ((0, 0), (r, r), (r, r), (0, 0))
  window, strides = (1, size, size, 1), (1, 1, 1, 1)
  total = lax.reduce_window(x, 0.0, lax.add, window, strides, pads)
  if count_include_pad:
    return total / float(size * size)
  ones = jnp.ones((1,) + x.shape[1:3] + (1,), jnp.float32)
  count = lax.reduce_window(ones, 0.0, lax.add, window, strides, pads)
  return total / count


def resize_features(features: Array, hw: Sequence[int]) -> jax.Array:
  """Bilinear resize of (N, h, w, C) features to (N, H, W, C).

  Half-pixel centres, no antialiasing (``F.interpolate(mode="bilinear",
  align_corners=False)``, as PatchCore).
  """
  x = jnp.asarray(features, jnp.float32)
  n, _, _, c = x.shape
  h, w = int(hw[0]), int(hw[1])
  return jax.image.resize(x, (n, h, w, c), method="bilinear", antialias=False)
