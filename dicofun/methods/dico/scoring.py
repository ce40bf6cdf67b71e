"""DiCo anomaly maps and the adaptive image score (METHODS §2.3).

Map: ``A = Σ_k upsample(1 − cos_channel(T_k, R_k))`` bilinearly resized to the
input size, then a Gaussian blur with σ = 4.

Image score (``mode="adaptive"``, exactly): with P the pixels of one map,
μ_A and σ_A their mean and (population) standard deviation, and
``k = max(1, ceil(topk_fraction · P))``:

* if at least k pixels satisfy ``A ≥ μ_A + κ·σ_A``: the mean of those pixels;
* otherwise (fewer than ``topk_fraction`` of the pixels qualify, e.g. a flat
  map) the mean of the k largest pixels **(ours)**.

``mode="max"`` is the maximum pixel; ``mode="topk_mean"`` the mean of the k
largest pixels.
"""

from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp

from dicofun.methods.dico import config as dico_config
from dicofun.methods.dico import losses
from dicofun.ops import maps as maps_lib

Array = jax.Array

SCORE_MODES = dico_config.SCORE_MODES


def gaussian_blur(maps: Array, sigma: float) -> Array:
  """Gaussian blur of (B, H, W) maps (``dicofun.ops.maps.gaussian_blur``)."""
  return maps_lib.gaussian_blur(maps, sigma)


def anomaly_map(targets: dict[str, Array], recons: dict[str, Array],
                levels: Sequence[str], *, size: tuple[int, int],
                sigma: float) -> Array:
  """``A = blur(Σ_k resize(1 − cos(T_k, R_k)))`` → (B, H, W)."""
  total = None
  for lv in levels:
    d = losses.cosine_distance(targets[lv], recons[lv])
    b = d.shape[0]
    d = jax.image.resize(d, (b,) + tuple(size), "bilinear")
    total = d if total is None else total + d
  return gaussian_blur(total, sigma)


# How the K complementary masked passes of inference make one map: "mean"
# (every pass at every pixel) or "masked" (ours: each pixel's error from the
# one pass that masked it, i.e. the inpainting error training optimises).
K_MASKS_COMBINE = dico_config.K_MASKS_COMBINE


def combine_pass_maps(maps: Array, masks: Array, *, how: str,
                      sigma: float) -> Array:
  """One anomaly map from the unblurred maps of K masked passes.

  Args:
    maps: (K, B, H, W) maps of the passes, not blurred.
    masks: (K, H, W, 1) complementary masks (1 = masked; they sum to 1).
    how: one of ``K_MASKS_COMBINE``.
    sigma: Gaussian blur applied after combining (the blur is linear, so
      "mean" equals the mean of the blurred maps).

  Returns:
    (B, H, W).
  """
  if how == "mean":
    total = jnp.mean(maps, axis=0)
  elif how == "masked":
    total = jnp.sum(maps * masks[:, None, :, :, 0], axis=0)
  else:
    raise ValueError(f"k_masks_combine must be one of {K_MASKS_COMBINE}, got "
                     f"{how!r}")
  return gaussian_blur(total, sigma)


def topk_count(num_pixels: int, fraction: float) -> int:
  """``max(1, ceil(fraction · P))``."""
  return max(1, int(math.ceil(float(fraction) * num_pixels - 1e-9)))


def image_scores(maps: Array, *, mode: str = "adaptive", kappa: float = 3.0,
                 topk_fraction: float = 0.01) -> Array:
  """Image scores from anomaly maps (see the module docstring).

  Args:
    maps: (B, H, W) anomaly maps.
    mode: one of SCORE_MODES.
    kappa: κ of the adaptive threshold μ + κσ.
    topk_fraction: fraction of pixels of the top-k mean and of the fallback.

  Returns:
    (B,) float32.
  """
  if mode not in SCORE_MODES:
    raise ValueError(f"score mode must be one of {SCORE_MODES}, got {mode!r}")
  b = maps.shape[0]
  flat = maps.reshape(b, -1).astype(jnp.float32)
  if mode == "max":
    return jnp.max(flat, axis=1)
  k = topk_count(flat.shape[1], topk_fraction)
  top_mean = jnp.mean(jax.lax.top_k(flat, k)[0], axis=1)
  if mode == "topk_mean":
    return top_mean
  mu = jnp.mean(flat, axis=1, keepdims=True)
  sd = jnp.std(flat, axis=1, keepdims=True)
  sel = flat >= mu + kappa * sd
  cnt = jnp.sum(sel, axis=1)
  sel_mean = jnp.sum(jnp.where(sel, flat, 0.0), axis=1) / jnp.maximum(cnt, 1)
  return jnp.where(cnt >= k, sel_mean, top_mean)
