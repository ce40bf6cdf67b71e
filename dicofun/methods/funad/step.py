"""FUN-AD training step: one jitted function per iteration (METHODS §1).

``make_train_step`` binds the static settings and returns
``train_step(state, batch_idx, rng, features, image_valid) -> (state, metrics)``.
The whole iteration — scoring the training set with the current parameters
(chunked with ``lax.map``), normalisation, candidate normals, the bank draw,
bank distances, pseudo-labels, Gaussian synthesis, mutual pairs, the loss and
the RMSprop update — runs inside it with fixed shapes, so it compiles once.
The cached training features are an argument (never closure constants) and
may be sharded on the ``data`` mesh axis.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dicofun.methods.funad import irmb
from dicofun.methods.funad import losses
from dicofun.methods.funad import model as model_lib
from dicofun.ops import knn

State = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class StepConfig:
  """Static settings of the train step (hashable).

  Built from ``config.funad`` by ``method.step_config``; the defaults live in
  ``config.default_config`` only.

  Attributes:
    dim: feature dimension D.
    hidden: discriminator hidden widths.
    num_images: real training images N (rows beyond are padding).
    rho: memory-size fraction ρ.
    tau_n: normal threshold τ_n.
    tau_c: upper threshold of the noised band τ_c.
    lam: weight λ of the smoothness loss.
    smoothness: "mae" | "mse" | "kl".
    smoothness_on_noised: compute L_MS on the noised batch as the reference
      code does through in-place noise **(ours: default False = clean)**.
    refresh_every: recompute the training-set scores every k iterations
      **(ours; 1 = faithful)**.
    noise: enable Gaussian anomaly synthesis.
    noise_ddof: ddof of the batch std σ_c (1 = PyTorch ``std``).
    score_chunk: images per ``lax.map`` step when scoring the training set.
    knn_chunk: bank rows per scan step of the nearest-neighbour search.
    lr, decay, eps, momentum: RMSprop (PyTorch semantics).
    total_steps: iterations of the whole run (for ``schedule="cosine"``).
    bank_patches: **(ours)** draw this many patches of the drawn bank images
      per iteration instead of all of them (0 = all, faithful): the bank
      costs a fixed number of rows whatever |C|.
    batch_patches: **(ours)** train each iteration on this many random patch
      positions (the same for every image of the batch) instead of all P:
      pseudo-labels, synthesis, pairs and loss on B·batch_patches patches
      (0 = all, faithful).
    d_norm: normalisation of the bank distances over the batch: "minmax"
      (paper), "percentile" or "rank" **(ours)**.
    d_norm_lo, d_norm_hi: percentiles of "percentile" **(ours)**.
    distance_on_input: **(ours)** bank distances (pseudo-labels) on the
      frozen input features instead of the adapted ones: the adaptor is
      trained by the BCE with no constraint on distances, so adapted-space
      distances drift with the model that they label. Mutual pairs stay on
      the adapted features.
    bank_exclude_batch: **(ours)** bank rows from the batch's own images are
      ignored, so a patch's distance is to *other* images (the paper only
      skips an exact self-match, 1st distance < 1e-2).
    bce: "clamped" (paper: log clamped at −100, zero gradient beyond) or
      "logit" (optax sigmoid BCE, no clamp) **(ours)**.
    soft_labels: BCE targets d̃ instead of 1[d̃ > τ_n] **(ours)**; needs
      ``bce="logit"``.
    schedule: "constant" (paper) or "cosine" decay to 1 % of lr **(ours)**.
    warmup_steps: linear lr warm-up from 0 **(ours; 0 = none)**.
    ema: decay of an exponential moving average of the parameters used to
      score the training set and returned for inference **(ours; 0 = off)**.
    score_logits: patch scores (training-set S_n and inference) are logits
      **(ours)**: same ranking, no float32 ties where the sigmoid saturates.
  """

  dim: int
  num_images: int
  hidden: tuple[int, ...]
  rho: float
  tau_n: float
  tau_c: float
  lam: float
  smoothness: str
  smoothness_on_noised: bool
  refresh_every: int
  noise: bool
  noise_ddof: int
  score_chunk: int
  knn_chunk: int
  lr: float
  decay: float
  eps: float
  momentum: float
  total_steps: int
  bank_patches: int
  batch_patches: int
  d_norm: str
  d_norm_lo: float
  d_norm_hi: float
  distance_on_input: bool
  bank_exclude_batch: bool
  bce: str
  soft_labels: bool
  schedule: str
  warmup_steps: int
  ema: float
  score_logits: bool

  @property
  def max_bank_images(self) -> int:
    return max(1, int(math.floor(self.rho * self.num_images + 1e-9)))


def make_optimizer(cfg: StepConfig) -> optax.GradientTransformation:
  """RMSprop with PyTorch semantics.

  v ← α v + (1−α) g²;  buf ← μ buf + g / (√v + ε);  p ← p − lr·buf.
  optax computes g/(√v + ε) (``eps_in_sqrt=False``, ``initial_scale=0``),
  scales by −lr and then accumulates the momentum trace; with a constant lr
  this equals PyTorch's update (tested against a numpy reference). With a
  schedule **(ours)** the momentum trace accumulates lr-scaled steps.
  """
  return optax.rmsprop(learning_rate(cfg), decay=cfg.decay, eps=cfg.eps,
                       initial_scale=0.0, eps_in_sqrt=False, centered=False,
                       momentum=cfg.momentum if cfg.momentum else None,
                       nesterov=False)


def learning_rate(cfg: StepConfig):
  """The constant lr (paper) or a warm-up / cosine schedule **(ours)**."""
  if cfg.schedule == "constant" and cfg.warmup_steps <= 0:
    return cfg.lr
  warm = max(int(cfg.warmup_steps), 0)
  if cfg.schedule == "cosine":
    total = max(int(cfg.total_steps), warm + 1)
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=cfg.lr, warmup_steps=warm,
        decay_steps=total, end_value=0.01 * cfg.lr)
  if cfg.schedule != "constant":
    raise ValueError(f"schedule {cfg.schedule!r} not in ('constant', 'cosine')")
  return optax.join_schedules(
      [optax.linear_schedule(0.0, cfg.lr, warm),
       optax.constant_schedule(cfg.lr)], [warm])


def padded_size(n: int, chunk: int, multiple: int = 1) -> tuple[int, int]:
  """(rows, chunk') with chunk' a multiple of ``multiple`` and rows of chunk'."""
  chunk = max(1, min(chunk, n))
  chunk = -(-chunk // multiple) * multiple
  return -(-n // chunk) * chunk, chunk


def pad_images(x: np.ndarray, rows: int) -> np.ndarray:
  """Pads axis 0 of ``x`` with zeros to ``rows``."""
  if x.shape[0] == rows:
    return x
  pad = np.zeros((rows - x.shape[0],) + x.shape[1:], x.dtype)
  return np.concatenate([x, pad], axis=0)


def patch_scores(net: model_lib.LocalNet, params, features: jax.Array, *,
                 chunk: int, logits: bool = False) -> jax.Array:
  """(N, P) patch probabilities, ``chunk`` images per ``lax.map`` step.

  The image axis is split as (chunk, N/chunk) and the map runs over the
  second factor, so each step takes ``chunk`` images spread evenly over the
  rows; when axis 0 is sharded on the data axis (and chunk is a multiple of
  the device count) every device scores its own rows without communication.

  Args:
    net: the LocalNet module.
    params: its parameters.
    features: (N, P, D), N a multiple of ``chunk``.
    chunk: images per step.
    logits: return the discriminator logits instead of the probabilities
      (same ranking, no ties where the sigmoid saturates to 1 in float32)
      **(ours)**.

  Returns:
    (N, P) float32 scores.
  """
  n, p, d = features.shape
  steps = n // chunk
  grid = features.reshape(chunk, steps, p, d)

  def one(i):
    x = jax.lax.dynamic_index_in_dim(grid, i, axis=1, keepdims=False)
    s, _ = net.apply({"params": params}, x, return_logits=logits)
    return s

  out = jax.lax.map(one, jnp.arange(steps))  # (steps, chunk, P)
  return jnp.swapaxes(out, 0, 1).reshape(n, p)


def noised_logits(net: model_lib.LocalNet, params, x_noised: jax.Array,
                  noised: jax.Array, z_clean: jax.Array, *,
                  cap_fraction: int = 16) -> jax.Array:
  """The logits of the noised batch, given the clean batch's ``z_clean``.

  Gaussian synthesis changes only the ``noised`` patches (x + 0 elsewhere)
  and the network is per patch, so only those rows need a forward pass: up
  to B·P/``cap_fraction`` of them go through it as one fixed-size gather
  (the rest keep their clean logit), more take one full pass (``lax.cond``).
  The same function as a full forward pass of ``x_noised``, at about half
  the loss's cost where few patches are noised (as in every run measured,
  issue 27).

  Args:
    net: the LocalNet.
    params: its parameters (differentiated through).
    x_noised: (B, P, D) noised input features.
    noised: (B, P) bool, the patches the noise was added to.
    z_clean: (B, P) logits of the clean features (the same ``params``).
    cap_fraction: at most B·P / cap_fraction rows in the gathered pass.

  Returns:
    (B, P) logits of ``x_noised``.
  """
  b, p, d = x_noised.shape
  q = b * p
  cap = max(1, q // cap_fraction)
  flat_x, flat_n = x_noised.reshape(q, d), noised.reshape(q)
  z = z_clean.reshape(q)
  count = jnp.sum(flat_n)

  def gathered(_):
    sel = jnp.nonzero(flat_n, size=cap, fill_value=0)[0]
    keep = jnp.arange(cap) < count  # The rest are fill (index 0).
    zs, _ = net.apply({"params": params}, flat_x[sel], return_logits=True)
    rows = jnp.zeros((q,), z.dtype).at[sel].add(jnp.where(keep, zs, 0.0))
    return jnp.where(flat_n, rows, z)

  def full(_):
    zn, _ = net.apply({"params": params}, flat_x, return_logits=True)
    return zn

  return jax.lax.cond(count <= cap, gathered, full, None).reshape(b, p)


def init_state(cfg: StepConfig, key: jax.Array, num_rows: int) -> State:
  """Parameters, optimiser state, cached image scores and step counter."""
  params = model_lib.init_params(key, cfg.dim, hidden=cfg.hidden)
  # A copy: the state is donated, and one buffer must not appear twice.
  extra = ({"ema": jax.tree_util.tree_map(lambda a: jnp.array(a, copy=True),
                                          params)} if cfg.ema > 0 else {})
  return {
      **extra,
      "params": params,
      "opt_state": make_optimizer(cfg).init(params),
      "scores": jnp.zeros((num_rows,), jnp.float32),
      "step": jnp.zeros((), jnp.int32),
  }


def train_step_fn(cfg: StepConfig, state: State, batch_idx: jax.Array,
                  rng: jax.Array, features: jax.Array,
                  image_valid: jax.Array) -> tuple[State, dict[str, jax.Array]]:
  """One FUN-AD iteration (un-jitted; see ``make_train_step``).

  Args:
    cfg: static settings.
    state: see ``init_state``.
    batch_idx: (B,) int32 indices of the batch's training images.
    rng: PRNG key of this iteration.
    features: (N_pad, P, D) cached training features.
    image_valid: (N_pad,) bool, False for padding rows.

  Returns:
    ``(new_state, metrics)``.
  """
  net = model_lib.LocalNet(cfg.dim, cfg.hidden)
  opt = make_optimizer(cfg)
  params = state["params"]
  sg_params = jax.lax.stop_gradient(params)
  k_bank, k_noise = jax.random.split(rng)

  # 1. Training-set image scores S_n with the current parameters (or their
  # EMA, ours).
  score_params = state["ema"] if cfg.ema > 0 else sg_params

  def fresh_scores(_):
    s = patch_scores(net, score_params, features, chunk=cfg.score_chunk,
                     logits=cfg.score_logits)
    return jnp.where(image_valid, jnp.max(s, axis=1), 0.0)

  if cfg.refresh_every <= 1:
    scores = fresh_scores(None)
  else:
    scores = jax.lax.cond(state["step"] % cfg.refresh_every == 0,
                          fresh_scores, lambda _: state["scores"], None)

  # 2–3. Candidate normals and a fresh bank draw of adapted features (input
  # features with distance_on_input, ours).
  cand = irmb.candidate_normals(scores, image_valid, tau_n=cfg.tau_n)
  bank_idx, bank_img_valid = irmb.draw_bank_images(
      k_bank, cand, rho=cfg.rho, max_images=cfg.max_bank_images)
  p, d = features.shape[1:]

  def bank_features(v):
    if cfg.distance_on_input:
      return v
    return net.apply({"params": sg_params}, v,
                     method=model_lib.LocalNet.adapt)

  if cfg.bank_patches > 0:  # (ours) a fixed-size random subset.
    k_bank, k_sub = jax.random.split(k_bank)
    img_i, patch_i, bank_valid = irmb.draw_bank_patches(
        k_sub, bank_idx, bank_img_valid, patches_per_image=p,
        num_patches=cfg.bank_patches)
    bank = bank_features(features[img_i, patch_i])
    bank_src = img_i
  else:
    bank = bank_features(features[bank_idx]).reshape(-1, d)
    bank_valid = jnp.repeat(bank_img_valid, p)
    bank_src = jnp.repeat(bank_idx, p)
  if cfg.bank_exclude_batch:  # (ours) leave the batch's own images out.
    in_batch = jnp.any(bank_src[:, None] == batch_idx[None, :], axis=1)
    bank_valid = bank_valid & ~in_batch

  # 4–5. Bank distances of the batch, min-max over B·P (or ours),
  # pseudo-labels.
  x = features[batch_idx]  # (B, P, D)
  if 0 < cfg.batch_patches < p:  # (ours) random patch positions.
    k_bank, k_pos = jax.random.split(k_bank)
    pos = jax.random.permutation(k_pos, p)[:cfg.batch_patches]
    x = x[:, pos]
    p = cfg.batch_patches
  b = x.shape[0]
  f = net.apply({"params": sg_params}, x,
                method=model_lib.LocalNet.adapt).reshape(b * p, d)
  q = x.reshape(b * p, d) if cfg.distance_on_input else f
  dist = irmb.bank_distances(q, bank, bank_valid, chunk=cfg.knn_chunk)
  d_norm = irmb.normalise_distances(
      dist, kind=cfg.d_norm, lo=cfg.d_norm_lo, hi=cfg.d_norm_hi).reshape(b, p)
  y = irmb.pseudo_labels(d_norm, tau_n=cfg.tau_n)
  if cfg.soft_labels and cfg.bce != "logit":
    raise ValueError("soft_labels needs bce='logit'")

  # 6. Gaussian anomaly synthesis on the input features.
  if cfg.noise:
    x_noised, noised = irmb.gaussian_synthesis(
        k_noise, x, d_norm, tau_n=cfg.tau_n, tau_c=cfg.tau_c,
        ddof=cfg.noise_ddof)
  else:
    x_noised, noised = x, jnp.zeros((b, p), bool)

  # 7. Mutual nearest neighbours among the batch's adapted features.
  partner, pair_valid = knn.mutual_nn_pairs(f, query_chunk=None,
                                            bank_chunk=cfg.knn_chunk)

  def loss_fn(prm):
    if cfg.smoothness_on_noised:
      z_noised, _ = net.apply({"params": prm}, x_noised, return_logits=True)
      z_ms = z_noised
    else:
      z_ms, _ = net.apply({"params": prm}, x, return_logits=True)
      z_noised = noised_logits(net, prm, x_noised, noised, z_ms)
    if cfg.bce == "logit":  # (ours) no dead clamp; soft targets d̃ optional.
      bce = losses.balanced_bce_logit(
          z_noised, y, d_norm if cfg.soft_labels else None)
    else:
      bce = losses.balanced_bce(z_noised, y)
    ms = losses.mutual_smoothness(z_ms.reshape(-1), partner, pair_valid,
                                  kind=cfg.smoothness)
    return losses.total_loss(bce, ms, lam=cfg.lam), (bce, ms)

  (loss, (bce, ms)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
  updates, opt_state = opt.update(grads, state["opt_state"], params)
  new_params = optax.apply_updates(params, updates)
  new_state = {"params": new_params, "opt_state": opt_state,
               "scores": scores, "step": state["step"] + 1}
  if cfg.ema > 0:
    new_state["ema"] = jax.tree_util.tree_map(
        lambda e, w: cfg.ema * e + (1.0 - cfg.ema) * w, state["ema"],
        new_params)
  metrics = {
      "loss": loss, "bce": bce, "smoothness": ms,
      "num_candidates": jnp.sum(cand),
      "bank_images": jnp.sum(bank_img_valid),
      "pseudo_anomalous_fraction": jnp.mean(y),
      "noised_fraction": jnp.mean(noised.astype(jnp.float32)),
      "num_pairs": jnp.sum(pair_valid),
  }
  return new_state, metrics


def make_train_step(cfg: StepConfig, *, donate: bool = True):
  """Jitted ``train_step(state, batch_idx, rng, features, image_valid)``.

  Inputs arrive already placed by the caller (on a ``data`` mesh: features
  and cached scores sharded on rows, the rest replicated); jit propagates
  those shardings, and the state stays replicated except the cached scores.

  Args:
    cfg: static settings.
    donate: donate the state buffers.

  Returns:
    The jitted step.
  """
  fn = lambda *a: train_step_fn(cfg, *a)  # pylint: disable=unnecessary-lambda
  kw = {"donate_argnums": (0,)} if donate else {}
  return jax.jit(fn, **kw)


def make_score_fn(dim: int, hidden: tuple[int, ...], *, chunk: int,
                  logits: bool = False):
  """Jitted ``(params, features (N, P, D)) -> (N, P)`` patch scores
  (``logits``: discriminator logits, **ours**)."""
  net = model_lib.LocalNet(dim, tuple(hidden))
  return jax.jit(lambda prm, feats: patch_scores(net, prm, feats, chunk=chunk,
                                                 logits=logits))
