"""FUN-AD (Im, Son, Hong, WACV 2025): fully unsupervised AD on noisy data.

METHODS §1. A per-patch network (``model.LocalNet``) is trained on cached
frozen-backbone [CLS ‖ patch] tokens with pseudo-labels from an iteratively
reconstructed memory bank (``irmb``), Gaussian anomaly synthesis and a mutual
smoothness loss (``losses``). The whole iteration is one jitted function
(``step.make_train_step``). Inference needs no bank: the patch scores are the
anomaly map, their max the image score.

The budget (``budget``): the paper preset counts epochs; the default preset
counts optimiser steps (``steps``, at least ``min_epochs`` passes), whatever
the training-set size **(ours)**. Either way the loop runs rounds of a fixed
number of iterations drawn from a stream of per-epoch permutations (a round
of the paper preset is one epoch), each a pure function of (state, round).

``run`` reports the LAST step as the result. The evaluation the reference code
reports — the best (image AUROC + pixel AUROC) / 2 on the test set, METHODS
§1 — is kept in ``extra["oracle"]`` (``training.select_oracle``) and is
labelled as test-selected: it is not a valid result. The training loop,
checkpoints and history are ``dicofun.training.run_loop``'s.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Optional

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from dicofun import api
from dicofun import features as features_lib
from dicofun import interrupt
from dicofun import metrics
from dicofun import parallel
from dicofun import progress as progress_lib
from dicofun import summary
from dicofun import training
from dicofun import viz
from dicofun.data import pipeline
from dicofun.methods.funad import step as step_lib
from dicofun.methods.patchcore import method as patchcore
from dicofun.methods.softpatch import method as softpatch
from dicofun.models import names as backbone_names
from dicofun.ops import maps


def step_config(cfg: ml_collections.ConfigDict, *, dim: int,
                num_images: int, total_steps: int = 0) -> step_lib.StepConfig:
  """The static train-step settings from ``config.funad``.

  ``total_steps`` (iterations of the whole run) sets the length of the
  cosine lr schedule **(ours)**; unused by the paper's constant lr.
  """
  return step_lib.StepConfig(
      dim=int(dim), num_images=int(num_images),
      hidden=tuple(int(h) for h in cfg.hidden), rho=float(cfg.rho),
      tau_n=float(cfg.tau_n), tau_c=float(cfg.tau_c), lam=float(cfg.lam),
      smoothness=str(cfg.smoothness),
      smoothness_on_noised=bool(cfg.smoothness_on_noised),
      refresh_every=int(cfg.refresh_every), noise=bool(cfg.noise),
      noise_ddof=int(cfg.noise_ddof), score_chunk=int(cfg.score_chunk),
      knn_chunk=int(cfg.knn_chunk), lr=float(cfg.lr), decay=float(cfg.decay),
      eps=float(cfg.eps), momentum=float(cfg.momentum),
      total_steps=int(total_steps), bank_patches=int(cfg.bank_patches),
      batch_patches=int(cfg.batch_patches), d_norm=str(cfg.d_norm),
      d_norm_lo=float(cfg.d_norm_lo), d_norm_hi=float(cfg.d_norm_hi),
      distance_on_input=bool(cfg.distance_on_input),
      bank_exclude_batch=bool(cfg.bank_exclude_batch), bce=str(cfg.bce),
      soft_labels=bool(cfg.soft_labels), schedule=str(cfg.schedule),
      warmup_steps=int(cfg.warmup_steps), ema=float(cfg.ema),
      score_logits=bool(cfg.score_logits))


@dataclasses.dataclass(frozen=True)
class Budget(training.Budget):
  """The length of a FUN-AD run and the unit of its loop: a
  ``training.Budget`` (rounds of a fixed number of iterations drawn from a
  stream of per-epoch permutations) with its batch.

  Attributes:
    batch: images per iteration.
  """
  batch: int


def budget(cfg: ml_collections.ConfigDict, num_images: int) -> Budget:
  """The run length of ``config.funad`` on ``num_images`` training images.

  Paper (``steps=0``): ``epochs`` passes, a round per epoch, ``eval_every``
  and ``checkpoint_every`` in epochs. Step budget **(ours)**: max(``steps``,
  ``min_epochs`` passes) iterations, whatever the training-set size; a round
  is gcd(``eval_every``, ``checkpoint_every``) iterations (the whole run when
  both are 0) and the total is rounded up to whole rounds
  (``training.budget``).
  """
  b = max(1, min(int(cfg.batch_size), int(num_images)))
  plan = training.budget(
      iters_per_epoch=max(int(num_images) // b, 1), epochs=int(cfg.epochs),
      steps=int(cfg.get("steps", 0)), min_epochs=int(cfg.get("min_epochs", 0)),
      eval_every=int(cfg.eval_every),
      checkpoint_every=int(cfg.checkpoint_every))
  return Budget(batch=b, **dataclasses.asdict(plan))


# ----------------------------------------------------------------- helpers


# Keeps the data mesh on one process's host CPU devices (the tests of the
# sharded path; ``_mesh``).
CPU_MESH_ENV = "DICOFUN_FUNAD_CPU_MESH"


def _mesh():
  """The data mesh, or None: a single device, or one process on CPUs.

  The iteration's batch work (bank search, pairs, loss) is replicated on
  every device of the mesh; only the training-set scoring is split. On host
  CPU devices, which divide the cores (``dicofun.cpu``), the replicas compete
  for them: on a 2-core machine a step ran 2x slower on the 2-device mesh
  than on one device, which uses XLA's threads on all cores (issue 27,
  BENCHMARKS.md). So one process on CPUs trains on one device, unless
  ``$DICOFUN_FUNAD_CPU_MESH=1``; several processes or accelerators keep the
  mesh.
  """
  mesh = parallel.make_mesh()
  if mesh is None or mesh.size <= 1:
    return None
  if (jax.process_count() == 1 and os.environ.get(CPU_MESH_ENV) != "1"
      and all(d.platform == "cpu" for d in mesh.devices.flat)):
    return None
  return mesh


def _place(x, mesh, *, shard: bool):
  """Puts x on the mesh (rows sharded on ``data`` or replicated)."""
  if mesh is None:
    return jnp.asarray(x) if isinstance(x, np.ndarray) else x
  sharding = (parallel.data_sharding(mesh, np.ndim(x)) if shard
              else parallel.replicated(mesh))
  return jax.device_put(x, sharding)


def _place_state(state, mesh):
  if mesh is None:
    return state
  out = jax.tree_util.tree_map(lambda a: _place(a, mesh, shard=False), state)
  out["scores"] = _place(state["scores"], mesh, shard=True)
  return out


def _flat_tokens(features: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
  """(N, h, w, D) → (N, h·w, D) float32 and the grid (h, w)."""
  features = np.asarray(features, np.float32)
  n, h, w, d = features.shape
  return features.reshape(n, h * w, d), (h, w)


def patch_scores_to_map(scores: np.ndarray, *, size: int,
                        sigma: float) -> np.ndarray:
  """(N, h, w) patch scores → (N, size, size) maps (bilinear + Gaussian blur)."""
  return np.asarray(maps.patch_scores_to_map(scores, size=size, sigma=sigma),
                    np.float32)


# --------------------------------------------------------------- inference


def predict_features(config: ml_collections.ConfigDict, state: dict,
                     features: np.ndarray, *,
                     with_maps: bool = True
                     ) -> tuple[np.ndarray, Optional[np.ndarray]]:
  """Image scores and anomaly maps from cached (N, h, w, D) token features.

  Args:
    config: the run config (uses ``config.funad`` and the dataset size).
    state: ``{"params": ...}``, with the trusted bank's ``"bank"`` and
      ``"blend"`` when ``funad.bank_weight`` > 0 **(ours)**.
    features: (N, h, w, D) [CLS ‖ patch] features.
    with_maps: also compute the (N, S, S) maps.

  Returns:
    ``(scores (N,), maps (N, S, S) or None)``; image score = max patch score
    (a patch score is a probability, or a logit with ``score_logits``,
    **ours**; blended with the trusted bank's distance with
    ``bank_weight``, **ours**).
  """
  disc = discriminator_patches(config, state["params"], features)
  knn = None
  # The history during training scores the discriminator alone.
  if _bank_weight(config) > 0 and "bank" in state:
    knn = patchcore.score({"bank": np.asarray(state["bank"], np.float32)},
                          bank_features(config, features))
  return _scores_and_maps(config, blend(disc, knn, state.get("blend"),
                                        _bank_weight(config)),
                          with_maps=with_maps)


def discriminator_patches(config: ml_collections.ConfigDict, params,
                          features: np.ndarray) -> np.ndarray:
  """(N, h, w) patch scores of the discriminator alone (the paper's)."""
  cfg = config.funad
  flat, (h, w) = _flat_tokens(features)
  n, _, d = flat.shape
  patch = _score_patches(params, flat, dim=d,
                         hidden=tuple(cfg.hidden), chunk=int(cfg.score_chunk),
                         # A model saved before the knob existed scored
                         # probabilities.
                         logits=bool(cfg.get("score_logits", False)))
  return patch[:n].reshape(n, h, w)


def _scores_and_maps(config: ml_collections.ConfigDict, patch: np.ndarray, *,
                     with_maps: bool
                     ) -> tuple[np.ndarray, Optional[np.ndarray]]:
  """Image scores (max patch score) and, optionally, the blurred maps."""
  scores = patch.reshape(len(patch), -1).max(1)
  if not with_maps:
    return scores, None
  return scores, patch_scores_to_map(patch, size=config.dataset.image_size,
                                     sigma=float(config.funad.blur_sigma))


# -------------------------------------------------- the trusted bank (ours)


def _bank_weight(config: ml_collections.ConfigDict) -> float:
  return float(config.funad.get("bank_weight", 0.0))


def bank_features(config: ml_collections.ConfigDict,
                  features: np.ndarray) -> np.ndarray:
  """The trusted bank's (N, h, w, C) features from FUN-AD's tokens **(ours)**.

  A ViT's patch half of ``[CLS ‖ patch]`` (the peers' PatchCore layout of
  the same block, without a local average); a CNN's features as they are
  (its token layout is the PatchCore layout).
  """
  if backbone_names.PATCH_SIZES.get(str(config.backbone.name), 0):
    return features[..., features.shape[-1] // 2:]
  return features


def standardiser(patch_scores: np.ndarray) -> tuple[float, float]:
  """(median, spread) of patch scores (``metrics.robust_location_spread``,
  the robust threshold's own)."""
  return metrics.robust_location_spread(patch_scores)


def blend(disc: np.ndarray, knn: Optional[np.ndarray],
          stats: Optional[np.ndarray], weight: float) -> np.ndarray:
  """(1 − w) · z(discriminator) + w · z(bank distance), patch by patch.

  ``stats`` = (loc_disc, scale_disc, loc_bank, scale_bank) from the training
  patches (``standardiser``); weight 0 (or no bank) is the discriminator's
  own scores, unchanged.
  """
  if weight <= 0 or knn is None:
    return np.asarray(disc, np.float32)
  ld, sd, lk, sk = (float(v) for v in np.asarray(stats).reshape(4))
  out = (1.0 - weight) * (disc - ld) / sd + weight * (knn - lk) / sk
  return out.astype(np.float32)


# SoftPatch's LOF neighbourhood (METHODS §3), for ``bank_denoise``.
SOFTPATCH_K = 6
# Banks built: the first from the discriminator's ranking, then rebuilt
# from the blend's (the bank reconstructed from the scores it helped make).
BANK_ROUNDS = 2


def _bank_of(config: ml_collections.ConfigDict, feats: np.ndarray,
             trusted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """The bank of the ``trusted`` images' patches and every training image's
  leave-one-out (N, h, w) distance to it."""
  cfg = config.funad
  keep = np.broadcast_to(trusted[:, None, None], feats.shape[:3]).copy()
  drop = float(cfg.get("bank_denoise", 0.0))
  if drop > 0 and trusted.sum() > SOFTPATCH_K:
    # SoftPatch's LOF among the trusted images' patches (ours).
    keep[trusted] = softpatch.denoise_mask(
        feats[trusted], k=SOFTPATCH_K, drop_fraction=drop)
  state = patchcore.fit(feats, coreset_fraction=float(cfg.bank_coreset),
                        seed=int(config.seed), keep=keep)
  own = patchcore.score(patchcore.leave_one_out_bank(state, feats, keep=keep),
                        feats, exclude_source=np.arange(len(feats)))
  # An image alone in the bank has no other image to be scored against.
  own = np.where(np.isfinite(own), own, np.nanmax(np.where(
      np.isfinite(own), own, np.nan)))
  return state["bank"], own.astype(np.float32)


def trusted_images(scores: np.ndarray, fraction: float) -> np.ndarray:
  """(N,) bool: the ⌊fraction·N⌋ lowest-scored images (at least 2), the
  ties broken by index."""
  n = len(scores)
  m = min(n, max(2, int(np.floor(fraction * n + 1e-9))))
  out = np.zeros(n, bool)
  out[np.argsort(np.asarray(scores), kind="stable")[:m]] = True
  return out


def trusted_bank(config: ml_collections.ConfigDict, params,
                 train_features: np.ndarray) -> dict[str, Any]:
  """FUN-AD's trusted images kept as a memory bank for scoring **(ours)**.

  The method's own idea — a bank of the images it trusts — used once more
  after training. The trained discriminator ranks the training images (max
  patch score); the ``bank_trust`` fraction scored lowest
  (``trusted_images``) give their patch
  features (``bank_features``), less the ``bank_denoise`` fraction SoftPatch's
  LOF finds most outlying among them, to PatchCore's greedy coreset
  (``bank_coreset``). A patch's bank score is its distance to the nearest
  bank row; the training images' own are leave-one-out
  (``patchcore.leave_one_out_bank``), so a trusted image is not its own
  neighbour. Each side is standardised on its training-patch scores
  (``standardiser``). The bank is then rebuilt once from the ranking of the
  blend (``BANK_ROUNDS``), which orders the training images better than the
  discriminator alone.

  Args:
    config: the run config.
    params: the trained (inference) parameters.
    train_features: (N, h, w, D) training tokens.

  Returns:
    The last round's ``{"bank": (M, C), "blend": (4,) float32 stats,
    "trusted": (N,) bool, "train_bank": (N, h, w)}`` with ``"train_disc"``
    (N, h, w) and ``"rounds"``, every round's dict (diagnostics).
  """
  cfg = config.funad
  disc = discriminator_patches(config, params, train_features)
  feats = bank_features(config, train_features)
  ranking = disc.reshape(len(disc), -1).max(1)
  rounds = []
  for _ in range(BANK_ROUNDS):
    trusted = trusted_images(ranking, float(cfg.bank_trust))
    bank, own = _bank_of(config, feats, trusted)
    stats = np.array([*standardiser(disc), *standardiser(own)], np.float32)
    rounds.append({"bank": bank, "blend": stats, "trusted": trusted,
                   "train_bank": own})
    patch = blend(disc, own, stats, _bank_weight(config))
    ranking = patch.reshape(len(patch), -1).max(1)
  return {**rounds[-1], "train_disc": disc, "rounds": rounds}


_SCORE_FNS: dict[Any, Any] = {}


def _score_patches(params, flat: np.ndarray, *, dim: int,
                   hidden: tuple[int, ...], chunk: int,
                   logits: bool) -> np.ndarray:
  """(N, P) patch probabilities (or logits) with a cached jitted scorer."""
  n = flat.shape[0]
  rows, chunk = step_lib.padded_size(n, chunk)
  key = (dim, hidden, chunk, logits)
  if key not in _SCORE_FNS:
    _SCORE_FNS[key] = step_lib.make_score_fn(dim, hidden, chunk=chunk,
                                             logits=logits)
  out = _SCORE_FNS[key](params, jnp.asarray(step_lib.pad_images(flat, rows)))
  return np.asarray(out)[:n]


def predict(config: ml_collections.ConfigDict, state: dict,
            records: list) -> tuple[np.ndarray, np.ndarray]:
  """Scores new images from the inference state alone (api contract)."""
  feats = features_lib.load_features(config, records, layout="tokens",
                              desc="predict features")
  return predict_features(config, state, feats)


# ----------------------------------------------------------------- training


def _infer_params(state) -> Any:
  """The parameters used for inference: their EMA when kept **(ours)**."""
  return state["ema"] if "ema" in state else state["params"]


def fit(config: ml_collections.ConfigDict, train_features: np.ndarray, *,
        workdir: Optional[str] = None,
        eval_features: Optional[np.ndarray] = None,
        eval_labels: Optional[np.ndarray] = None,
        eval_masks: Optional[np.ndarray] = None,
        train_labels: Optional[np.ndarray] = None,
        eval_figure: Optional[tuple[np.ndarray, np.ndarray,
                                    Optional[np.ndarray]]] = None,
        summary_dir: Optional[str] = None) -> dict[str, Any]:
  """Trains FUN-AD on cached features (the loop is ``training.run_loop``).

  Args:
    config: run config (``config.funad``, ``config.seed``).
    train_features: (N, h, w, D) training features (unlabeled).
    workdir: the run's directory; training checkpoints and the history go to
      ``<workdir>/checkpoints`` (None: no checkpointing). A checkpoint of a
      different training config is refused (``training.ResumeMismatchError``)
      unless ``config.restart``.
    eval_features: optional (M, h, w, D) features scored every
      ``eval_every`` epochs, or steps with a step budget (0: at the end
      only), for the history.
    eval_labels: optional (M,) labels of those, for the history AUROC only.
    eval_masks: optional (M, S, S) masks of those, for the history's
      (subsampled) pixel AUROC; with labels and masks the oracle is chosen by
      (image AUROC + pixel AUROC) / 2 (METHODS §1).
    train_labels: optional (N,) true labels of the training images, for the
      history only: on the epochs that are evaluated, the training set is
      scored with the inference parameters and its image AUROC recorded as
      ``transductive_image_auroc`` (the learning curve of the transductive
      view; never seen by training).
    eval_figure: optional ``(indices into the eval features, their
      preprocessed (k, S, S, 3) images, their masks or None)``: the
      anomaly-map figure of those images at every evaluation, for
      TensorBoard.
    summary_dir: live TensorBoard events go there (``training.run_loop``).

  Returns:
    ``{"params", "history", "oracle", "budget", "seconds_per_iteration"}``
    (``budget``: the run's ``Budget``); ``oracle`` is the test-selected
    evaluated round (``training.select_oracle``; None
    without labels), labelled as such.
  """
  cfg = config.funad
  flat, _ = _flat_tokens(train_features)
  n, p, d = flat.shape
  if int(cfg.batch_size) > n:
    logging.warning("FUN-AD: batch_size %d > %d training images; using %d",
                    int(cfg.batch_size), n, n)
  plan = budget(cfg, n)
  b, iters, k = plan.batch, plan.iters_per_epoch, plan.round_steps
  logging.info("FUN-AD: %d iterations (%.1f passes over %d images, batch "
               "%d) in %d rounds of %d", plan.total_steps,
               plan.total_steps / iters, n, b, plan.rounds, k)
  mesh = _mesh()
  ndev = 1 if mesh is None else mesh.size
  rows, chunk = step_lib.padded_size(n, int(cfg.score_chunk), ndev)
  scfg = step_config(cfg, dim=d, num_images=n, total_steps=plan.total_steps)
  scfg = step_lib.StepConfig(**{**scfg.__dict__, "score_chunk": chunk})
  feats = _place(step_lib.pad_images(flat, rows), mesh, shard=True)
  valid = _place(np.arange(rows) < n, mesh, shard=True)
  base_key = jax.random.key(int(config.seed))
  state = step_lib.init_state(scfg, jax.random.fold_in(base_key, 0), rows)
  step = step_lib.make_train_step(scfg)

  # The training-set AUROC needs both classes (dicofun inspect has no labels).
  if train_labels is not None and len(np.unique(train_labels)) < 2:
    train_labels = None

  def _evaluated(rnd: int) -> bool:  # ``training.run_loop``'s schedule.
    done, every = rnd + 1, plan.eval_every
    return done == plan.rounds or (every > 0 and done % every == 0)

  def round_fn(state, rnd):
    # A pure function of the round: global iteration g is position g % iters
    # of epoch g // iters, whose permutation and keys derive from the epoch
    # alone, so resumed runs see the same batches (and a round of the paper
    # preset, one epoch, is the epoch it always was).
    sums: dict[str, Any] = {}
    perm, epoch = None, -1
    for g in progress_lib.progress(
        range(rnd * k, (rnd + 1) * k), total=k,
        desc=f"FUN-AD round {rnd + 1}/{plan.rounds} iterations"):
      interrupt.between_steps()  # Ctrl-C (``training.run_loop``).
      if g // iters != epoch:
        epoch = g // iters
        perm = np.random.default_rng([int(config.seed), epoch]).permutation(n)
        ekey = jax.random.fold_in(jax.random.fold_in(base_key, 1), epoch)
      it = g % iters
      idx = _place(perm[it * b:(it + 1) * b].astype(np.int32), mesh,
                   shard=False)
      state, m = step(state, idx, jax.random.fold_in(ekey, it), feats, valid)
      # Metrics are summed on the host, and fetching them waits for the
      # step. A device computation on the outputs of a step that is still
      # running (``jnp.add`` of the metrics, as here before) deadlocked XLA's
      # CPU runtime with 2 host devices: the dependent add, run inline on
      # device 1, held that device's launch slot while waiting for the step,
      # whose device-1 half could then never start, and device 0 waited in
      # the step's all-reduce until XLA aborted the process (FUN-AD on
      # magnetic tile, runlocal, 2 cores; benchmarks/phases.py).
      for key, v in jax.device_get(m).items():
        sums[key] = sums.get(key, 0.0) + np.asarray(v, np.float64)
    out = {key: float(v) / k for key, v in sums.items()}
    if train_labels is not None and _evaluated(rnd):
      scores, _ = predict_features(
          config, {"params": _infer_params(state)}, train_features,
          with_maps=False)
      out["transductive_image_auroc"] = metrics.image_auroc(
          scores, np.asarray(train_labels))
    return state, out

  evaluate_fn = None
  if eval_features is not None:
    def evaluate_fn(state, epoch):
      del epoch
      scores, amaps = predict_features(
          config, {"params": _infer_params(state)}, eval_features,
          with_maps=eval_labels is not None and eval_masks is not None)
      out: dict[str, Any] = {}
      if eval_labels is not None:
        out.update(training.history_metrics(scores, amaps, eval_labels,
                                            eval_masks))
      out["scores"] = scores.tolist()
      if eval_figure is not None and summary_dir is not None:
        pick, images, masks = eval_figure
        # Every process scores (the step may be sharded); the writing one
        # draws.
        fmaps = (amaps[pick] if amaps is not None else predict_features(
            config, {"params": _infer_params(state)}, eval_features[pick])[1])
        if parallel.is_main_process():
          pre = pipeline.preprocess_for(config)
          out[training.FIGURE] = viz.anomaly_maps_image(
              images, masks, fmaps, scores=scores[pick], mean=pre.mean,
              std=pre.std)
      return out

  # The round count is not part of the fingerprint (a run may be
  # extended), but a cosine schedule's length is, and so is the size of a
  # round of a step budget (a checkpoint counts rounds) (ours).
  extra_fp = {}
  if scfg.schedule != "constant":
    extra_fp["funad.total_steps"] = scfg.total_steps
  if plan.in_steps:
    extra_fp["funad.round_steps"] = k
  loop = training.run_loop(
      state=state, epochs=plan.rounds, epoch_fn=round_fn,
      evaluate_fn=evaluate_fn, workdir=workdir,
      checkpoint_every=plan.checkpoint_every, eval_every=plan.eval_every,
      place=lambda s: _place_state(s, mesh),
      fingerprint=training.training_fingerprint(config, "funad",
                                                extra=extra_fp or None),
      restart=bool(config.get("restart", False)),
      desc="FUN-AD rounds" if plan.in_steps else "FUN-AD epochs",
      summary_dir=summary_dir, images_per_epoch=k * b,
      step_of=lambda done: done * k)
  per_round = loop.seconds_per_epoch
  return {"params": jax.device_get(_infer_params(loop.state)),
          "history": loop.history, "oracle": loop.oracle, "budget": plan,
          "seconds_per_iteration": (per_round / k
                                    if per_round is not None else None)}


SWEEP_WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)


def _weight_sweep(config, test_feats, test_disc, bank, test_labels,
                  train_labels, *, keep) -> list[dict[str, Any]]:
  """Image AUROC of the blend at ``SWEEP_WEIGHTS`` with each round's bank
  (test no-overlap view and the transductive training set, where both
  classes are present)."""
  rows = []
  has_test = test_disc is not None and len(np.unique(test_labels)) == 2
  test_bank_feats = (bank_features(config, test_feats[keep]) if has_test
                     else None)
  for r, rnd in enumerate(bank["rounds"]):
    knn = (patchcore.score({"bank": rnd["bank"]}, test_bank_feats)
           if has_test else None)
    for w in SWEEP_WEIGHTS:
      row: dict[str, Any] = {"round": r + 1, "weight": w}
      if has_test:
        patch = blend(test_disc[keep], knn, rnd["blend"], w)
        row["test_image_auroc"] = metrics.image_auroc(
            patch.reshape(len(patch), -1).max(1), test_labels)
      if len(np.unique(train_labels)) == 2:
        patch = blend(bank["train_disc"], rnd["train_bank"], rnd["blend"], w)
        row["transductive_image_auroc"] = metrics.image_auroc(
            patch.reshape(len(patch), -1).max(1), train_labels)
        # How many of the anomalous training images the bank kept.
        row["anomalous_trusted"] = int(np.sum(rnd["trusted"] &
                                              (train_labels == 1)))
      rows.append(row)
  return rows


def run(config: ml_collections.ConfigDict, data: api.RunData,
        workdir: str) -> api.Predictions:
  """FUN-AD on ``data`` (the runner's entry point)."""
  t0 = time.time()
  train_feats = features_lib.load_features(config, data.train, layout="tokens")
  # An empty test set is allowed (dicofun inspect scores the training set).
  test_feats = (features_lib.load_features(config, data.test, layout="tokens")
                if data.test else None)
  t_feat = time.time() - t0
  # Test labels and masks feed the per-eval history only (and the labelled
  # oracle). Only the no-overlap view (moved anomalies excluded), as reported.
  keep = (np.ones(len(data.test), bool) if data.test_is_moved is None
          else ~np.asarray(data.test_is_moved, bool))
  test_labels = np.array([r.label for r in data.test])[keep]
  test_masks = None
  if data.test:
    test_masks = pipeline.load_arrays(
        data.test, pipeline.preprocess_for(config),
        num_workers=int(config.dataset.num_workers), allow_missing_mask=True,
        with_images=False, desc="FUN-AD history masks")["mask"][keep]
    if not np.any(test_masks > 0.5):  # No masks (ELPV): no history maps.
      test_masks = None
  summary_dir = eval_figure = None
  if config.eval.get("tensorboard", False) and workdir:
    summary_dir = os.path.join(workdir, summary.TENSORBOARD_DIR)
    if data.test:
      pick = training.figure_indices(test_labels)
      kept = [r for r, k in zip(data.test, keep) if k]
      arr = pipeline.load_arrays(
          [kept[i] for i in pick], pipeline.preprocess_for(config),
          num_workers=int(config.dataset.num_workers),
          allow_missing_mask=True, desc="FUN-AD figure images")
      eval_figure = (pick, arr["image"], arr["mask"])
  t1 = time.time()
  out = fit(config, train_feats, workdir=workdir,
            eval_features=None if test_feats is None else test_feats[keep],
            eval_labels=None if test_feats is None else test_labels,
            eval_masks=test_masks, eval_figure=eval_figure,
            summary_dir=summary_dir,
            train_labels=np.array([r.label for r in data.train]))
  plan = out["budget"]
  state = {"params": out["params"]}
  weight = _bank_weight(config)
  bank = None
  if weight > 0:  # The trusted bank (ours), part of the fit.
    bank = trusted_bank(config, out["params"], train_feats)
    state.update(bank=bank["bank"], blend=bank["blend"])
  fit_s = time.time() - t1
  t2 = time.time()
  test_disc = test_knn = None
  if test_feats is None:
    size = config.dataset.image_size
    test_scores = np.zeros((0,), np.float32)
    test_maps = np.zeros((0, size, size), np.float32)
  else:
    test_disc = discriminator_patches(config, state["params"], test_feats)
    if bank is not None:
      test_knn = patchcore.score({"bank": bank["bank"]},
                                 bank_features(config, test_feats))
    test_scores, test_maps = _scores_and_maps(
        config, blend(test_disc, test_knn, state.get("blend"), weight),
        with_maps=True)
  infer_s = time.time() - t2
  train_scores = train_maps = None
  train_maps_on = bool(config.eval.get("train_maps", False))
  if bank is not None:
    train_patch = blend(bank["train_disc"], bank["train_bank"],
                        bank["blend"], weight)
  else:
    train_patch = (discriminator_patches(config, state["params"], train_feats)
                   if config.funad.transductive else None)
  if config.funad.transductive:
    train_scores, train_maps = _scores_and_maps(config, train_patch,
                                                with_maps=train_maps_on)
  history = [{k: v for k, v in h.items() if k != "test_scores"}
             for h in out["history"]]
  extra: dict[str, Any] = {
      # The result is the last step; TensorBoard's x axis is the step.
      "result_step": plan.total_steps,
      "steps": plan.total_steps,
      # Passes over the training images (the paper's budget; a step budget's
      # need not be whole).
      "epochs": (int(config.funad.epochs) if not plan.in_steps
                 else plan.total_steps / plan.iters_per_epoch),
      "round_steps": plan.round_steps,
      # One row per round of the loop (an epoch of the paper preset):
      # ``step`` the iterations done, ``epoch`` the rounds done, the round's
      # mean losses, test_* on evaluated rounds; the loop wrote each row to
      # TensorBoard (history/*, x = step) as it trained.
      "history": history,
      "oracle": out["oracle"],
      "feature_shape": list(np.shape(train_feats)[1:]),
      "feature_seconds": t_feat,
      "fit_seconds": fit_s,
      "seconds_per_iteration": out["seconds_per_iteration"],
      "inference_images_per_s": len(data.test) / max(infer_s, 1e-9),
  }
  if bank is not None:
    extra["trusted_bank"] = {
        "weight": weight, "bank_rows": int(bank["bank"].shape[0]),
        "trusted_images": int(bank["trusted"].sum()),
        "training_images": int(len(bank["trusted"])),
        # Diagnostics, like the history (labels never reach training): the
        # image AUROC of the blend at other weights on the same trained
        # model and bank, 0 = the discriminator, 1 = the bank alone.
        "weights": _weight_sweep(
            config, test_feats, test_disc, bank, test_labels,
            np.array([r.label for r in data.train]), keep=keep),
    }
  return api.Predictions(test_scores=test_scores, test_maps=test_maps,
                         train_scores=train_scores, train_maps=train_maps,
                         extra=extra, state=state)
