"""FUN-AD losses (METHODS §1): balanced BCE and mutual smoothness.

The losses take discriminator *logits*: log s = log σ(z) and log(1 − s) =
log σ(−z) are then exact even where s rounds to 0 or 1 in float32, while the
values equal the clamped-log BCE of the probabilities wherever those are
representable **(ours; same values, stabler gradients)**.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import optax

# PyTorch's BCELoss clamps log terms at -100; the reference inherits it.
LOG_CLAMP = -100.0


def _masked_mean(x: jax.Array, mask: jax.Array) -> jax.Array:
  """Mean of x over mask; 0 when the mask is empty."""
  n = jnp.sum(mask)
  return jnp.where(n > 0, jnp.sum(jnp.where(mask, x, 0.0)) / jnp.maximum(n, 1),
                   0.0)


def balanced_bce(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """L_φ = −mean_{y=1} log s − mean_{y=0} log(1 − s).

  Args:
    logits: (...,) discriminator logits z (s = σ(z)).
    labels: (...,) pseudo-labels in {0, 1}.

  Returns:
    Scalar loss; a term with no members contributes 0.
  """
  log_s = jnp.maximum(jax.nn.log_sigmoid(logits), LOG_CLAMP)
  log_1ms = jnp.maximum(jax.nn.log_sigmoid(-logits), LOG_CLAMP)
  pos = labels > 0.5
  return -_masked_mean(log_s, pos) - _masked_mean(log_1ms, ~pos)


def balanced_bce_logit(logits: jax.Array, labels: jax.Array,
                       targets: Optional[jax.Array] = None) -> jax.Array:
  """Balanced BCE in logit space without the −100 clamp **(ours)**.

  ``optax.sigmoid_binary_cross_entropy`` per patch, averaged separately over
  the pseudo-anomalous (label > 0.5) and pseudo-normal patches and summed, as
  ``balanced_bce``. Unlike the clamped form, a saturated wrong logit keeps a
  gradient of magnitude ~1 instead of 0 (the clamp is an absorbing state).

  Args:
    logits: (...,) discriminator logits.
    labels: (...,) pseudo-labels; they split the two terms.
    targets: optional soft BCE targets in [0, 1] (d̃, ``soft_labels``)
      replacing ``labels`` inside the BCE.

  Returns:
    The scalar loss.
  """
  per = optax.sigmoid_binary_cross_entropy(
      logits, labels if targets is None else targets)
  pos = labels > 0.5
  return _masked_mean(per, pos) + _masked_mean(per, ~pos)


def mutual_smoothness(logits: jax.Array, partner: jax.Array,
                      valid: jax.Array, *, kind: str = "mae") -> jax.Array:
  """L_MS = ½·mean over mutual pairs of a disagreement between s_i and s_j.

  Args:
    logits: (Q,) logits of the batch's patches (flattened).
    partner: (Q,) index j of i's pair.
    valid: (Q,) bool, True where (i, partner[i]) is a pair (counted once).
    kind: "mae" |s_i − s_j| (paper); "mse" (s_i − s_j)² **(ours: the
      reference's MSE variant equals ¼·mean (s_i − s_j)²)**; "kl" the
      symmetric KL of Bernoullis KL(s_i‖s_j) + KL(s_j‖s_i) = (s_i − s_j)(z_i −
      z_j) **(ours: the reference uses a Jensen–Shannon-like form)**.

  Returns:
    Scalar loss; 0 when there is no pair.
  """
  s = jax.nn.sigmoid(logits)
  si, sj = s, s[partner]
  if kind == "mae":
    per = jnp.abs(si - sj)
  elif kind == "mse":
    per = (si - sj) ** 2
  elif kind == "kl":
    per = (si - sj) * (logits - logits[partner])
  else:
    raise ValueError(f"smoothness kind {kind!r} not in ('mae', 'mse', 'kl')")
  return 0.5 * _masked_mean(per, valid)


def total_loss(bce: jax.Array, smooth: jax.Array, *,
               lam: float = 2.5) -> jax.Array:
  """L = L_φ + λ·L_MS."""
  return bce + lam * smooth
