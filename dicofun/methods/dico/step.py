"""DiCo train state, the jitted train step and the jitted scoring function.

State is a plain dict pytree::

  {"params": ..., "batch_stats": ..., "opt_state": ..., "step": int32}

The memory items are ``params["memory"]["items"]``; the frozen encoder's
variables are never part of the state (nor of the optimiser).

``make_train_step`` returns ``train_step(state, images, rng) -> (state,
metrics)``: ONE ``jax.jit`` function that, per batch, runs the frozen encoder
on the clean images (targets T_k) and on their masked copies, the trainable
bottleneck / memory / decoder on the masked features, the loss, the Adam
update, and then the momentum update of the memory items **(ours)**. The
clean targets may be passed in instead (``compute_targets``'s cache: the
encoder is frozen, so they never change). With a
mesh the batch is split over the ``data`` axis and the state is replicated;
every reduction (loss means, BatchNorm statistics, momentum sums) is global, so
the step computes the same function on 1 or many devices.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dicofun import parallel
from dicofun import progress as progress_lib
from dicofun.methods.dico import losses
from dicofun.methods.dico import masking
from dicofun.methods.dico import model as model_lib
from dicofun.methods.dico import scoring
from dicofun.models import registry

Array = jax.Array
State = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Encoder:
  """A frozen encoder as a pure function of (variables, images).

  Attributes:
    apply: ``(variables, images (B, H, W, 3)) -> {level: (B, h, w, C)}``.
    variables: its (frozen) variables; passed to the jitted functions as an
      argument so large weights are not baked into the compiled program.
    channels: channel count per level.
  """
  apply: Callable[[Any, Array], dict[str, Array]]
  variables: Any
  channels: dict[str, int]


def encoder_from_fn(encode: Callable[[Array], dict[str, Array]],
                    channels: dict[str, int]) -> Encoder:
  """Wraps a pure ``encode(images) -> dict`` (weights closed over)."""
  return Encoder(apply=lambda _, x: encode(x), variables={},
                 channels=dict(channels))


def encoder_from_backbone(name: str, *, levels: Sequence[str],
                          image_size: int, weights: str = "pretrained",
                          depthwise_impl: str = "auto"
                          ) -> tuple[Encoder, Any]:
  """The EfficientNet-Lite (or other registry) backbone as an ``Encoder``.

  Args:
    name: backbone name for ``dicofun.models.registry.get_backbone``.
    levels: the levels used (channel counts are read for these).
    image_size: input size used to infer the channel counts.
    weights: "pretrained", "random" or a checkpoint path.
    depthwise_impl: CNN depthwise convolutions (``registry.get_backbone``).

  Returns:
    ``(encoder, backbone)``; the backbone carries ``mean`` / ``std``.
  """
  bb = registry.get_backbone(name, weights=weights,
                             depthwise_impl=depthwise_impl)
  apply_features = bb.apply_features

  def apply(variables, images):
    feats = apply_features(variables, images)
    return {k: feats[k] for k in levels}

  shapes = jax.eval_shape(
      apply, bb.variables,
      jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32))
  channels = {k: int(shapes[k].shape[-1]) for k in levels}
  return Encoder(apply=apply, variables=bb.variables, channels=channels), bb


@dataclasses.dataclass(frozen=True)
class StepConfig:
  """Static settings of the train step and scoring (hashable)."""
  levels: tuple[str, ...] = ("stride4", "stride8", "stride16")
  masking: bool = True
  mask_ratio: float = 0.5
  mask_patch: int = 32
  compact_weight: float = 0.1
  entropy_weight: float = 2e-4
  momentum: float = 0.99
  blur_sigma: float = 4.0
  score_mode: str = "adaptive"
  kappa: float = 3.0
  topk_fraction: float = 0.01
  k_masks: int = 0
  k_masks_combine: str = "mean"  # One of K_MASKS_COMBINE.
  # Levels summed into the anomaly map; () = every level (ours).
  score_levels: tuple[str, ...] = ()


# Train-step outputs that are vectors: the batch's gate histogram
# (``model.GATE_BINS`` bins on [0, 1]) and top-1 counts per memory item.
GATE_HIST = "gate_hist"
ITEM_COUNTS = "item_counts"


LR_SCHEDULES = ("constant", "cosine")
K_MASKS_COMBINE = scoring.K_MASKS_COMBINE


def make_lr_schedule(lr: float, *, schedule: str = "constant",
                     total_steps: int = 0, warmup_steps: int = 0
                     ) -> Union[float, optax.Schedule]:
  """The learning rate: ``lr`` itself, or cosine with warm-up **(ours)**.

  ``"cosine"`` rises linearly from 0 to ``lr`` over ``warmup_steps`` and then
  follows a half cosine from ``lr`` to 0 at ``total_steps``.
  """
  if schedule == "constant":
    return lr
  if schedule != "cosine":
    raise ValueError(f"lr schedule must be one of {LR_SCHEDULES}, got "
                     f"{schedule!r}")
  if total_steps <= warmup_steps:
    raise ValueError(f"cosine schedule needs total_steps ({total_steps}) > "
                     f"warmup_steps ({warmup_steps})")
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=lr, warmup_steps=warmup_steps,
      decay_steps=total_steps, end_value=0.0)


def make_optimizer(*, lr: float = 5e-3, b1: float = 0.5,
                   b2: float = 0.999, schedule: str = "constant",
                   total_steps: int = 0, warmup_steps: int = 0
                   ) -> optax.GradientTransformation:
  """Adam with the reverse-distillation settings (METHODS §2).

  The default constant ``lr`` is the paper's; ``schedule="cosine"`` is
  ``make_lr_schedule``'s warm-up + cosine **(ours)**.
  """
  return optax.adam(make_lr_schedule(lr, schedule=schedule,
                                     total_steps=total_steps,
                                     warmup_steps=warmup_steps),
                    b1=b1, b2=b2)


def _features(encoder: Encoder, enc_vars: Any, images: Array
              ) -> dict[str, Array]:
  feats = encoder.apply(enc_vars, images)
  # The encoder is frozen: no gradient ever reaches it.
  return {k: jax.lax.stop_gradient(v.astype(jnp.float32))
          for k, v in feats.items()}


def make_target_fn(encoder: Encoder, *,
                   mesh: Optional[jax.sharding.Mesh] = None
                   ) -> Callable[[Array], dict[str, Array]]:
  """Jitted ``targets(images) -> {level: T_k}``: the frozen clean features.

  The same ``_features`` the train step computes on the clean images, so a
  cache of its outputs can stand in for that pass (``compute_targets``).
  """
  if mesh is not None:
    jitted = jax.jit(lambda v, x: _features(encoder, v, x),
                     in_shardings=(parallel.replicated(mesh),
                                   parallel.data_sharding(mesh, 4)),
                     out_shardings=parallel.data_sharding(mesh, 4))
  else:
    jitted = jax.jit(lambda v, x: _features(encoder, v, x))

  def targets(images):
    x = images
    if mesh is not None:
      x = parallel.global_batch(mesh, images)
    return jitted(encoder.variables, x)

  return targets


def target_bytes(encoder: Encoder, image_size: int, count: int) -> int:
  """Bytes of float32 targets T_k (all levels) for ``count`` images."""
  shapes = jax.eval_shape(
      lambda x: encoder.apply(encoder.variables, x),
      jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32))
  per_image = sum(int(np.prod(v.shape[1:])) for v in shapes.values())
  return 4 * per_image * int(count)


def compute_targets(target_fn: Callable[[Array], dict[str, Array]],
                    images: np.ndarray, *, batch_size: int,
                    multiple: int = 1, desc: str = ""
                    ) -> dict[str, np.ndarray]:
  """The targets T_k of every image, as host float32 arrays (N, h, w, C).

  Computed once before training (the encoder is frozen, so they never
  change) in fixed-size batches, the last one zero-padded.

  Args:
    target_fn: from ``make_target_fn``.
    images: (N, H, W, 3) numpy, the same on every process.
    batch_size: batch size (rounded up to ``multiple``).
    multiple: device count the batch must divide into.
    desc: progress label.

  Returns:
    ``{level: (N, h, w, C) float32}``.
  """
  n = len(images)
  bs = max(multiple, -(-min(batch_size, max(n, 1)) // multiple) * multiple)
  parts: dict[str, list[np.ndarray]] = {}
  starts = range(0, n, bs)
  starts = progress_lib.progress(starts, total=len(starts),
                                 desc=desc or "DiCo targets")
  for s in starts:
    x = np.asarray(images[s:s + bs], np.float32)
    m = len(x)
    if m < bs:
      x = np.concatenate([x, np.zeros((bs - m,) + x.shape[1:], x.dtype)])
    for k, v in target_fn(x).items():
      parts.setdefault(k, []).append(parallel.gather_to_host(v)[:m])
  return {k: np.concatenate(v).astype(np.float32) for k, v in parts.items()}


def init_state(net: model_lib.DiCoNet, encoder: Encoder,
               tx: optax.GradientTransformation, key: Array,
               sample_images: Array) -> State:
  """Initial train state.

  The memory items start as N query vectors drawn (without replacement, with
  repetition only if there are fewer positions than items) from the
  bottleneck output of ``sample_images`` **(ours)**: random items would all be
  far from the (non-negative) queries, so the gate would replace every
  position by memory content at the start of training.

  Args:
    net: the DiCo network.
    encoder: the frozen encoder.
    tx: optimiser.
    key: PRNG key.
    sample_images: (B, H, W, 3) normalised images (e.g. the first batch).

  Returns:
    The state dict.
  """
  tx_init = tx.init

  @jax.jit
  def init(key, enc_vars, images):
    k_init, k_items = jax.random.split(key)
    feats = _features(encoder, enc_vars, images)
    variables = net.init(k_init, feats, train=False)
    params = variables["params"]
    batch_stats = variables.get("batch_stats", {})
    if net.memory_size > 0:
      z = net.apply(variables, feats, train=False,
                    method=model_lib.DiCoNet.encode)
      q = z.reshape(-1, z.shape[-1])
      n = net.memory_size
      idx = jax.random.choice(k_items, q.shape[0], (n,),
                              replace=q.shape[0] < n)
      params = _set_items(params, q[idx])
    return {"params": params, "batch_stats": batch_stats,
            "opt_state": tx_init(params), "step": jnp.zeros((), jnp.int32)}

  return init(key, encoder.variables, jnp.asarray(sample_images, jnp.float32))


def _set_items(params: Any, items: Array) -> Any:
  params = dict(params)
  mem = dict(params["memory"])
  mem["items"] = items.astype(mem["items"].dtype)
  params["memory"] = mem
  return params


def loss_terms(net: model_lib.DiCoNet, params: Any, batch_stats: Any,
               feats_in: dict[str, Array], targets: dict[str, Array], *,
               cfg: StepConfig) -> tuple[Array, tuple[dict, Any, dict]]:
  """Total loss and its parts for one batch (train mode)."""
  (recons, aux), mutated = net.apply(
      {"params": params, "batch_stats": batch_stats}, feats_in, train=True,
      mutable=["batch_stats"])
  rec = losses.reconstruction_loss(targets, recons, cfg.levels)
  total = rec
  parts = {"rec": rec, "gate": jnp.mean(aux["gate"])}
  if net.memory_size > 0:
    items = params["memory"]["items"]
    compact = losses.compactness_loss(aux["query"], items, aux["top1"])
    entropy = losses.entropy_loss(aux["weights"])
    total = total + cfg.compact_weight * compact + cfg.entropy_weight * entropy
    parts.update(compact=compact, entropy=entropy)
  parts["loss"] = total
  return total, (parts, mutated["batch_stats"], aux)


def make_train_step(net: model_lib.DiCoNet, encoder: Encoder,
                    tx: optax.GradientTransformation, cfg: StepConfig, *,
                    mesh: Optional[jax.sharding.Mesh] = None
                    ) -> Callable[[State, Array, Array], tuple[State, dict]]:
  """The DiCo train step (see the module docstring).

  Args:
    net: network.
    encoder: frozen encoder.
    tx: optimiser.
    cfg: static settings.
    mesh: optional 1-D ``data`` mesh; the batch is sharded over it and the
      state replicated.

  Returns:
    ``train_step(state, images, rng, targets=None) -> (state, metrics)``;
    ``targets`` (``{level: (B, h, w, C)}``, e.g. rows of a
    ``compute_targets`` cache) replaces the clean encoder pass. Its compiled
    function is ``train_step.jitted`` (called with the encoder variables as
    second argument; ``train_step.jitted_cached`` takes the targets after
    the images) and ``train_step.traces`` counts how often they were traced
    (compiled), so a test can see it stays 1.
  """
  traces = []

  def step_any(state, enc_vars, images, targets, rng):
    traces.append(1)  # Runs at trace time only.
    # The masks' key is the first half of the split, as when the second one
    # drew a noise fill (removed): the same masks as before.
    k_mask, _ = jax.random.split(rng)
    images = images.astype(jnp.float32)
    if cfg.masking:
      b, h, w = images.shape[:3]
      mask = masking.random_square_mask(k_mask, b, (h, w),
                                        ratio=cfg.mask_ratio,
                                        patch=cfg.mask_patch)
      if targets is None:
        targets = _features(encoder, enc_vars, images)
      feats_in = _features(encoder, enc_vars, masking.apply_mask(images, mask))
    else:
      if targets is None:
        targets = _features(encoder, enc_vars, images)
      feats_in = targets
    grad_fn = jax.grad(
        functools.partial(loss_terms, net, cfg=cfg), has_aux=True)
    grads, (parts, new_bs, aux) = grad_fn(state["params"],
                                          state["batch_stats"], feats_in,
                                          targets)
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    if net.memory_size > 0:
      items = model_lib.momentum_update(
          params["memory"]["items"], aux["query"], aux["top1"],
          momentum=cfg.momentum)
      params = _set_items(params, items)
    parts["grad_norm"] = optax.tree.norm(grads)
    if net.memory_size > 0:
      # Per-epoch diagnostics (summed over the epoch's steps by the caller).
      parts[GATE_HIST] = model_lib.gate_histogram(aux["gate"])
      parts[ITEM_COUNTS] = jnp.sum(
          jax.nn.one_hot(aux["top1"].reshape(-1), net.memory_size,
                         dtype=jnp.float32), axis=0)
    new_state = {"params": params, "batch_stats": new_bs,
                 "opt_state": opt_state, "step": state["step"] + 1}
    return new_state, parts

  def step(state, enc_vars, images, rng):
    return step_any(state, enc_vars, images, None, rng)

  if mesh is not None:
    rep = parallel.replicated(mesh)
    batch = parallel.data_sharding(mesh, 4)
    jitted = jax.jit(
        step, in_shardings=(rep, rep, batch, rep),
        out_shardings=(rep, rep), donate_argnums=0)
    jitted_cached = jax.jit(
        step_any, in_shardings=(rep, rep, batch, batch, rep),
        out_shardings=(rep, rep), donate_argnums=0)
  else:
    jitted = jax.jit(step, donate_argnums=0)
    jitted_cached = jax.jit(step_any, donate_argnums=0)

  def train_step(state, images, rng, targets=None):
    if targets is None:
      return jitted(state, encoder.variables, images, rng)
    return jitted_cached(state, encoder.variables, images, targets, rng)

  train_step.jitted = jitted
  train_step.jitted_cached = jitted_cached
  train_step.traces = traces
  return train_step


def make_score_fn(net: model_lib.DiCoNet, encoder: Encoder, cfg: StepConfig, *,
                  mesh: Optional[jax.sharding.Mesh] = None
                  ) -> Callable[[Any, Array], tuple[Array, Array]]:
  """Jitted ``score(variables, images) -> (scores (B,), maps (B, H, W))``.

  Inference uses the unmasked image; with ``cfg.k_masks = K > 0`` the map
  comes from K complementary masked passes (fixed masks from key 0), every
  pass compared with the clean targets: their mean (``k_masks_combine=
  "mean"``) or, per pixel, the pass that masked it (``"masked"``, ours).

  Args:
    net: network.
    encoder: frozen encoder.
    cfg: static settings.
    mesh: optional ``data`` mesh (batch sharded, variables replicated).

  Returns:
    ``score(variables, images)`` where variables = ``{"params", "batch_stats"}``;
    with a mesh, numpy ``images`` must be the same global batch on every
    process (they are placed with ``parallel.global_batch``) and the outputs
    are split over the devices (``parallel.gather_to_host`` reads them).
  """

  score_levels = tuple(cfg.score_levels) or tuple(cfg.levels)

  def fn(variables, enc_vars, images):
    images = images.astype(jnp.float32)
    size = images.shape[1:3]
    targets = _features(encoder, enc_vars, images)
    if cfg.k_masks > 0:
      masks = masking.complementary_masks(jax.random.PRNGKey(0), size,
                                          k=cfg.k_masks, patch=cfg.mask_patch)

      def one(mask):
        x = masking.apply_mask(images, mask[None])
        recons, _ = net.apply(variables, _features(encoder, enc_vars, x),
                              train=False)
        return scoring.anomaly_map(targets, recons, score_levels, size=size,
                                   sigma=0.0)

      amap = scoring.combine_pass_maps(
          jax.lax.map(one, masks), masks, how=cfg.k_masks_combine,
          sigma=cfg.blur_sigma)
    else:
      recons, _ = net.apply(variables, targets, train=False)
      amap = scoring.anomaly_map(targets, recons, score_levels, size=size,
                                 sigma=cfg.blur_sigma)
    scores = scoring.image_scores(amap, mode=cfg.score_mode, kappa=cfg.kappa,
                                  topk_fraction=cfg.topk_fraction)
    return scores, amap

  if mesh is not None:
    rep = parallel.replicated(mesh)
    jitted = jax.jit(fn, in_shardings=(rep, rep, parallel.data_sharding(mesh, 4)),
                     out_shardings=(parallel.data_sharding(mesh, 1),
                                    parallel.data_sharding(mesh, 3)))
  else:
    jitted = jax.jit(fn)

  def score(variables, images):
    if mesh is not None:
      # Host batches (the same on every process) become global arrays: a jit
      # whose in_shardings split the batch refuses numpy inputs when there
      # are several processes.
      images = parallel.global_batch(mesh, images)
    return jitted(variables, encoder.variables, images)

  score.jitted = jitted
  return score


def score_in_batches(score: Callable[[Any, Array], tuple[Array, Array]],
                     variables: Any, images: np.ndarray, *, batch_size: int,
                     multiple: int = 1, desc: str = ""
                     ) -> tuple[np.ndarray, np.ndarray]:
  """Scores ``images`` in fixed-size batches (the last one zero-padded).

  Args:
    score: from ``make_score_fn``.
    variables: ``{"params", "batch_stats"}``.
    images: (N, H, W, 3) numpy (the same on every process).
    batch_size: batch size (rounded up to ``multiple``).
    multiple: device count the batch must divide into.
    desc: progress label.

  Returns:
    ``(scores (N,), maps (N, H, W))`` float32 numpy.
  """
  n = len(images)
  bs = max(multiple, -(-min(batch_size, max(n, 1)) // multiple) * multiple)
  scores, maps = [], []
  starts = range(0, n, bs)
  starts = progress_lib.progress(starts, total=len(starts),
                                 desc=desc or "DiCo scoring")
  for s in starts:
    x = np.asarray(images[s:s + bs], np.float32)
    m = len(x)
    if m < bs:
      x = np.concatenate([x, np.zeros((bs - m,) + x.shape[1:], x.dtype)])
    sc, mp = score(variables, x)
    # Split over the devices of every process: gathered to every host.
    scores.append(parallel.gather_to_host(sc)[:m])
    maps.append(parallel.gather_to_host(mp)[:m])
  if not scores:
    h, w = images.shape[1:3]
    return np.zeros((0,), np.float32), np.zeros((0, h, w), np.float32)
  return (np.concatenate(scores).astype(np.float32),
          np.concatenate(maps).astype(np.float32))
