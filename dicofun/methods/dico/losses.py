"""DiCo losses (METHODS §2): hierarchical reconstruction and memory terms."""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp

from dicofun.methods.dico import model as model_lib

Array = jax.Array

_EPS = 1e-8


def cosine_distance(t: Array, r: Array) -> Array:
  """``1 − cos`` along the channel axis: (B, h, w, C) × 2 → (B, h, w)."""
  t = t.astype(jnp.float32)
  r = r.astype(jnp.float32)
  num = jnp.sum(t * r, axis=-1)
  den = jnp.sqrt(jnp.sum(t * t, axis=-1) * jnp.sum(r * r, axis=-1))
  return 1.0 - num / jnp.maximum(den, _EPS)


def reconstruction_loss(targets: dict[str, Array], recons: dict[str, Array],
                        levels: Sequence[str]) -> Array:
  """L_rec = Σ_k mean_positions(1 − cos_channel(T_k, R_k)).

  Args:
    targets: encoder features T_k of the clean images.
    recons: decoder outputs R_k.
    levels: the levels k summed over.

  Returns:
    Scalar loss.
  """
  loss = jnp.float32(0.0)
  for k in levels:
    loss = loss + jnp.mean(cosine_distance(targets[k], recons[k]))
  return loss


def compactness_loss(queries: Array, items: Array, top1: Array) -> Array:
  """Mean squared distance of unit queries to their unit top-1 item.

  Both sides are L2-normalised **(ours)**: the addressing is by cosine, and a
  scale-free distance (= 2 − 2·cos) cannot be lowered by shrinking the
  features toward zero.

  Args:
    queries: (..., C).
    items: (N, C).
    top1: (...) int item index per query.

  Returns:
    Scalar.
  """
  q = model_lib.l2_normalize(queries)
  m = model_lib.l2_normalize(items)[top1]
  return jnp.mean(jnp.sum(jnp.square(q - m), axis=-1))


def entropy_loss(weights: Array, *, eps: float = 1e-12) -> Array:
  """Mean entropy −Σ w log w of the addressing weights."""
  return jnp.mean(-jnp.sum(weights * jnp.log(weights + eps), axis=-1))
