"""DiCo networks (METHODS §2): bottleneck, dynamic memory and decoder.

The frozen encoder E is *not* part of these modules: it is a pure function
``encode(images) -> {level: (B, h, w, C_k)}`` (``dicofun.methods.dico.step.
Encoder``), so the trainable part below only ever sees encoder features.

* ``Bottleneck`` fuses the encoder levels (e.g. strides 4 / 8 / 16): every
  level is brought to the coarsest stride by strided 3×3 convolutions, the
  results are concatenated and passed through a residual conv block, as in
  reverse distillation's one-class bottleneck. Output ``z``: (B, h, w, C).
* ``DynamicMemory`` reads a learned memory of N items per position: cosine
  addressing with temperature, hard shrinkage, and a gate that replaces
  features far from every item by memory content.
* ``Decoder`` mirrors the encoder: from ``z'`` it produces R_k at every level
  (coarse to fine), with the encoder's channel counts.
* ``DiCoNet`` chains the three.

The momentum update of the memory items (**ours**) is the pure function
``momentum_update``; the train step applies it to the item parameter after the
gradient update.
"""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

_EPS = 1e-8
GATE_BINS = 100  # Histogram bins of the gate on [0, 1] (diagnostics).


def level_stride(level: str) -> int:
  """``"stride16"`` → 16."""
  if not level.startswith("stride"):
    raise ValueError(f"level names look like 'stride8', got {level!r}")
  return int(level[len("stride"):])


def sort_levels(levels: Sequence[str]) -> tuple[str, ...]:
  """Levels from fine (small stride) to coarse."""
  return tuple(sorted(levels, key=level_stride))


def l2_normalize(x: Array, axis: int = -1) -> Array:
  """x / ||x|| with a floor on the norm (zero vectors stay zero)."""
  norm = jnp.sqrt(jnp.sum(jnp.square(x), axis=axis, keepdims=True))
  return x / jnp.maximum(norm, _EPS)


class ConvBN(nn.Module):
  """Conv → BatchNorm (→ ReLU)."""
  features: int
  kernel: int = 3
  stride: int = 1
  relu: bool = True

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> Array:
    x = nn.Conv(self.features, (self.kernel, self.kernel),
                strides=(self.stride, self.stride), padding="SAME",
                use_bias=False)(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9,
                     epsilon=1e-5)(x)
    return nn.relu(x) if self.relu else x


class Bottleneck(nn.Module):
  """Fuses encoder levels into one coarse feature map ``z``.

  Attributes:
    levels: encoder level names (``"strideN"``), any order.
    channels: width C of ``z`` (also the width every level is projected to
      before concatenation).
    stride: stride of ``z``; 0 (default) = the coarsest level's. A larger
      power-of-2 multiple of it (e.g. 32 over Lite0's stride 16, as reverse
      distillation's stride-32 embedding) downsamples every level further
      **(ours)**: fewer positions per channel, a tighter bottleneck.
  """
  levels: Sequence[str]
  channels: int
  stride: int = 0

  @nn.compact
  def __call__(self, feats: dict[str, Array], *, train: bool) -> Array:
    levels = sort_levels(self.levels)
    coarsest = level_stride(levels[-1])
    target = self.stride or coarsest
    if target < coarsest or target % coarsest:
      raise ValueError(f"bottleneck stride {target} must be a multiple of the "
                       f"coarsest level's stride {coarsest}")
    parts = []
    for level in levels:
      x = feats[level]
      ratio = target // level_stride(level)
      steps = int(round(math.log2(ratio))) if ratio > 1 else 0
      if 2 ** steps != ratio:
        raise ValueError(f"stride ratio {ratio} of {level} is not a power of 2")
      if steps == 0:
        x = ConvBN(self.channels, kernel=1, name=f"{level}_proj")(x, train=train)
      for i in range(steps):
        x = ConvBN(self.channels, kernel=3, stride=2,
                   name=f"{level}_down{i}")(x, train=train)
      parts.append(x)
    # Strided SAME convs round up; the coarsest level fixes the grid.
    h, w = parts[-1].shape[1:3]
    parts = [p[:, :h, :w] for p in parts]
    x = jnp.concatenate(parts, axis=-1)
    shortcut = ConvBN(self.channels, kernel=1, relu=False,
                      name="shortcut")(x, train=train)
    y = ConvBN(self.channels, name="block0")(x, train=train)
    y = ConvBN(self.channels, relu=False, name="block1")(y, train=train)
    return nn.relu(y + shortcut)


def hard_shrink(w: Array, shrink: float, *, eps: float = 1e-12) -> Array:
  """MemAE hard shrinkage ``relu(w−λ)·w/(|w−λ|+ε)``, renormalised.

  Rows whose weights all fall to zero (only possible when every weight equals
  λ, i.e. uniform addressing with λ = 1/N) keep their softmax weights
  **(ours)**, so the read never returns the zero vector by accident.

  Args:
    w: (..., N) addressing weights (rows sum to 1).
    shrink: threshold λ.
    eps: ε of the formula.

  Returns:
    (..., N) weights, rows summing to 1.
  """
  s = nn.relu(w - shrink) * w / (jnp.abs(w - shrink) + eps)
  total = jnp.sum(s, axis=-1, keepdims=True)
  return jnp.where(total > 0, s / jnp.maximum(total, eps), w)


class DynamicMemory(nn.Module):
  """Per-position memory read with a discrepancy gate (METHODS §2.2).

  For each query z (a position of the bottleneck map):
  ``w = softmax(cos(z, M)/τ)``, hard shrinkage with λ, ``ẑ = w·M``,
  ``g = clip(1 − max_i cos(z, M_i), 0, 1)``, output ``z' = g·ẑ + (1−g)·z``.

  Attributes:
    num_items: N; 0 makes the module the identity (ablation baseline).
    temperature: τ of the addressing softmax.
    shrink: λ; None means 1/N.
  """
  num_items: int
  temperature: float = 0.1
  shrink: Optional[float] = None

  @nn.compact
  def __call__(self, z: Array) -> tuple[Array, dict[str, Array]]:
    """Returns ``(z', aux)``.

    Args:
      z: (B, h, w, C) queries.

    Returns:
      ``z'`` of the same shape, and ``aux`` with ``weights`` (B, h, w, N),
      ``top1`` (B, h, w) int32, ``gate`` (B, h, w), ``cos_top1`` (B, h, w)
      and ``query`` (= z). With N = 0 only ``query`` and ``gate`` (zeros).
    """
    if self.num_items <= 0:
      return z, {"query": z, "gate": jnp.zeros(z.shape[:-1], z.dtype)}
    c = z.shape[-1]
    items = self.param("items", nn.initializers.normal(1.0),
                       (self.num_items, c), jnp.float32)
    lam = 1.0 / self.num_items if self.shrink is None else self.shrink
    cos = jnp.einsum("...c,nc->...n", l2_normalize(z), l2_normalize(items))
    w = jax.nn.softmax(cos / self.temperature, axis=-1)
    w = hard_shrink(w, lam)
    z_hat = jnp.einsum("...n,nc->...c", w, items)
    cos_max = jnp.max(cos, axis=-1)
    g = jnp.clip(1.0 - cos_max, 0.0, 1.0)
    out = g[..., None] * z_hat + (1.0 - g[..., None]) * z
    aux = {"weights": w, "top1": jnp.argmax(cos, axis=-1).astype(jnp.int32),
           "gate": g, "cos_top1": cos_max, "query": z}
    return out, aux


def momentum_update(items: Array, queries: Array, top1: Array, *,
                    momentum: float = 0.99) -> Array:
  """Moves every item toward the mean of its top-1 queries **(ours)**.

  ``item ← m·item + (1−m)·mean(queries assigned to item)``; items that no
  query chose are unchanged. Under ``jit`` with a batch sharded over devices
  the sums are global, so the result does not depend on the device count.

  Args:
    items: (N, C) memory items.
    queries: (..., C) queries (gradients are stopped here).
    top1: (...) int index of each query's most similar item.
    momentum: m.

  Returns:
    (N, C) updated items.
  """
  n, c = items.shape
  q = jax.lax.stop_gradient(queries).reshape(-1, c).astype(items.dtype)
  onehot = jax.nn.one_hot(top1.reshape(-1), n, dtype=items.dtype)  # (P, N)
  counts = jnp.sum(onehot, axis=0)
  sums = onehot.T @ q
  means = sums / jnp.maximum(counts, 1.0)[:, None]
  moved = momentum * items + (1.0 - momentum) * means
  return jnp.where(counts[:, None] > 0, moved, items)


class Decoder(nn.Module):
  """Mirrors the encoder: ``z'`` → R_k at every level, coarse to fine.

  At the coarsest level two conv blocks refine ``z'``; every finer level
  bilinearly resizes the previous hidden map to the level's grid, then a 3×3
  conv block and a second block. A linear 1×1 conv gives R_k with the encoder's
  channel count (encoder features are not ReLU outputs, so no activation).

  Attributes:
    levels: level names.
    out_channels: encoder channel count per level.
    widths: hidden width per level (default: max(2·C_k, 32)).
  """
  levels: Sequence[str]
  out_channels: dict[str, int]
  widths: Optional[dict[str, int]] = None

  @nn.compact
  def __call__(self, z: Array, shapes: dict[str, tuple[int, int]], *,
               train: bool) -> dict[str, Array]:
    out = {}
    h = z
    for level in reversed(sort_levels(self.levels)):
      width = (self.widths or {}).get(
          level, max(2 * int(self.out_channels[level]), 32))
      hh, ww = shapes[level]
      if h.shape[1:3] != (hh, ww):
        h = jax.image.resize(h, (h.shape[0], hh, ww, h.shape[-1]), "bilinear")
      h = ConvBN(width, name=f"{level}_block0")(h, train=train)
      h = ConvBN(width, name=f"{level}_block1")(h, train=train)
      out[level] = nn.Conv(int(self.out_channels[level]), (1, 1),
                           name=f"{level}_out")(h)
    return out


class DiCoNet(nn.Module):
  """Bottleneck → dynamic memory → decoder.

  Attributes:
    levels: encoder levels used.
    enc_channels: encoder channel count per level.
    bottleneck_channels: width C of the bottleneck.
    bottleneck_stride: stride of the bottleneck map (0 = coarsest level's).
    memory_size: N (0 disables the memory).
    temperature: τ.
    shrink: λ (None = 1/N).
    decoder_widths: optional hidden width per level.
  """
  levels: Sequence[str]
  enc_channels: dict[str, int]
  bottleneck_channels: int = 256
  bottleneck_stride: int = 0
  memory_size: int = 50
  temperature: float = 0.1
  shrink: Optional[float] = None
  decoder_widths: Optional[dict[str, int]] = None

  def setup(self):
    self.bottleneck = Bottleneck(tuple(self.levels), self.bottleneck_channels,
                                 self.bottleneck_stride)
    self.memory = DynamicMemory(self.memory_size, self.temperature,
                                self.shrink)
    self.decoder = Decoder(tuple(self.levels), dict(self.enc_channels),
                           self.decoder_widths)

  def encode(self, feats: dict[str, Array], *, train: bool) -> Array:
    """Bottleneck only: the memory queries z."""
    return self.bottleneck(feats, train=train)

  def __call__(self, feats: dict[str, Array], *, train: bool
               ) -> tuple[dict[str, Array], dict[str, Array]]:
    """Returns ``(R, aux)``: reconstructions per level and memory outputs."""
    z = self.bottleneck(feats, train=train)
    z2, aux = self.memory(z)
    shapes = {k: tuple(feats[k].shape[1:3]) for k in self.levels}
    return self.decoder(z2, shapes, train=train), aux


def tree_size(tree: Any) -> int:
  """Number of scalars in a pytree."""
  return int(sum(x.size for x in jax.tree_util.tree_leaves(tree)))


def gate_histogram(gate: Array, bins: int = GATE_BINS) -> Array:
  """Counts of gate values in ``bins`` equal bins of [0, 1] (1 → last bin)."""
  idx = jnp.clip(jnp.floor(gate.reshape(-1) * bins), 0, bins - 1)
  return jnp.sum(jax.nn.one_hot(idx.astype(jnp.int32), bins,
                                dtype=jnp.float32), axis=0)


def memory_diagnostics(gate_hist: np.ndarray, item_counts: np.ndarray,
                       quantiles: Sequence[float] = (0.1, 0.5, 0.9)
                       ) -> dict[str, float]:
  """Gate distribution and item usage of one epoch (issue #14, step 3).

  Args:
    gate_hist: (bins,) counts of the gate over [0, 1] (``gate_histogram``
      summed over the epoch's batches).
    item_counts: (N,) how many queries had each item as their top-1.
    quantiles: gate quantiles to report, read off the histogram with linear
      interpolation inside a bin.

  Returns:
    ``gate_p10`` / ``gate_p50`` / ``gate_p90`` (for the default quantiles),
    ``items_used`` (items that are top-1 for at least one query) and
    ``item_usage_entropy`` (natural-log entropy of the top-1 usage; log N
    when usage is uniform, 0 when one item takes every query).
  """
  hist = np.asarray(gate_hist, np.float64)
  counts = np.asarray(item_counts, np.float64)
  out: dict[str, float] = {}
  total = hist.sum()
  bins = len(hist)
  cum = np.cumsum(hist)
  for q in quantiles:
    if total <= 0:
      value = float("nan")
    else:
      target = q * total
      b = int(np.searchsorted(cum, target, side="left"))
      b = min(b, bins - 1)
      before = cum[b] - hist[b]
      frac = (target - before) / hist[b] if hist[b] > 0 else 0.0
      value = (b + frac) / bins
    out[f"gate_p{int(round(100 * q)):02d}"] = float(value)
  out["items_used"] = float(np.sum(counts > 0))
  p = counts / max(counts.sum(), 1.0)
  nz = p[p > 0]
  out["item_usage_entropy"] = float(-np.sum(nz * np.log(nz)))
  return out
