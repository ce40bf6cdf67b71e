"""PatchCore (Roth et al., CVPR 2022): the memory-bank peer of every benchmark.

METHODS §3: locally aware patch features (two middle stages, 3×3 average,
stride-8 grid, concatenated), a memory bank of all training patches reduced by a
greedy k-centre coreset on a random projection, nearest-neighbour distance as
the patch score, max over patches as the image score.

``fit`` is a pure function from features to the bank state; ``score`` is a
pure function from state and features to patch scores. ``run`` wires them to
the runner.
"""

from __future__ import annotations

import time
from typing import Any, Optional

from absl import logging
import jax
import ml_collections
import numpy as np

from dicofun import api
from dicofun import features as features_lib
from dicofun import parallel
from dicofun.ops import coreset
from dicofun.ops import knn
from dicofun.ops import maps

Bank = dict[str, np.ndarray]


def _kept_patches(train_features: np.ndarray,
                  keep: Optional[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
  """(M, C) float32 patches allowed in the bank and their (M,) image index."""
  n, h, w, c = train_features.shape
  flat = train_features.reshape(n * h * w, c).astype(np.float32)
  source = np.repeat(np.arange(n, dtype=np.int32), h * w)
  if keep is not None:
    sel = np.asarray(keep).reshape(-1)
    flat, source = flat[sel], source[sel]
  return flat, source


def fit(train_features: np.ndarray, *, coreset_fraction: float = 0.1,
        projection_dim: int = 128, seed: int = 0,
        keep: Optional[np.ndarray] = None,
        coreset_method: str = "greedy") -> Bank:
  """Builds the memory bank.

  Args:
    train_features: (N, h, w, C) patch features of the training images.
    coreset_fraction: fraction of patches kept by the greedy coreset
      (1.0 keeps all).
    projection_dim: dimension of the random projection the coreset runs on.
    seed: seed of the projection and of the first coreset centre.
    keep: optional (N, h, w) bool; patches with False never enter the bank
      (SoftPatch's denoising).
    coreset_method: ``"greedy"`` or ``"approximate"``
      (``dicofun.ops.coreset.greedy_coreset``, ``impl="auto"``: on a
      CPU-only run the exact greedy in rounds on the host; on accelerators
      the jitted loop with its distance updates split over the devices).

  Returns:
    ``{"bank": (M, C) float32, "source": (M,) int32 image index of each row}``.
  """
  flat, source = _kept_patches(train_features, keep)
  if coreset_fraction < 1.0:
    mesh = parallel.make_mesh() if jax.device_count() > 1 else None
    idx = np.asarray(coreset.greedy_coreset(
        flat, fraction=coreset_fraction, projection_dim=projection_dim,
        seed=seed, method=coreset_method, mesh=mesh))
    flat, source = flat[idx], source[idx]
  return {"bank": flat, "source": source}


def _nearest_other_image(queries: np.ndarray, query_source: np.ndarray,
                         bank: np.ndarray, bank_source: np.ndarray, *,
                         search_k: int, mesh
                         ) -> tuple[np.ndarray, np.ndarray]:
  """Squared distance and index of each query's nearest row of another image.

  The first of the ``search_k`` nearest rows whose source differs from the
  query's; queries whose ``search_k`` nearest rows all come from their own
  image are searched again, exactly, against the other images' rows only.

  Args:
    queries: (Q, C) float32.
    query_source: (Q,) image index of each query.
    bank: (M, C) float32.
    bank_source: (M,) image index of each bank row.
    search_k: neighbours searched in the first pass.
    mesh: optional device mesh of ``knn.knn``.

  Returns:
    (Q,) float32 squared distances (+inf where every row is the query's own
    image's) and (Q,) int64 row indices (-1 there).
  """
  k = min(search_k, bank.shape[0])
  d, idx = knn.knn(queries, bank, k=k, mesh=mesh)
  d, idx = np.asarray(d), np.asarray(idx)
  other = bank_source[idx] != query_source[:, None]
  found = other.any(1)
  first = other.argmax(1)
  rows = np.arange(len(d))
  best_d = d[rows, first].astype(np.float32)
  best_i = idx[rows, first].astype(np.int64)
  for s in np.unique(query_source[~found]):
    todo = np.flatnonzero(~found & (query_source == s))
    others = np.flatnonzero(bank_source != s)
    if others.size == 0:
      best_d[todo], best_i[todo] = np.inf, -1
      continue
    dd, ii = knn.knn(queries[todo], bank[others], k=1, mesh=mesh)
    best_d[todo] = np.asarray(dd)[:, 0]
    best_i[todo] = others[np.asarray(ii)[:, 0]]
  return best_d, best_i


def score(state: Bank, features: np.ndarray, *,
          exclude_source: Optional[np.ndarray] = None,
          search_k: int = 16) -> np.ndarray:
  """Patch scores: L2 distance to the nearest bank entry.

  Args:
    state: the bank from ``fit`` (``leave_one_out_bank`` for the training
      images themselves).
    features: (N, h, w, C) query features.
    exclude_source: optional (N,) image indices into the training set; a
      query image then ignores bank rows that came from itself. Used to score
      the training set for the transductive view **(ours)**: without it every
      training patch would find itself. The first of ``search_k`` neighbours
      from another image is used; a patch whose ``search_k`` nearest rows
      are all its own image's is searched again, exactly, against the other
      images' rows.
    search_k: neighbours searched when ``exclude_source`` is given.

  Returns:
    (N, h, w) float32 patch scores.
  """
  # With several devices the bank is split by rows across them (same answers
  # as one device, 1/n of the bank per device).
  mesh = parallel.make_mesh() if jax.device_count() > 1 else None
  n, h, w, c = features.shape
  q = features.reshape(n * h * w, c).astype(np.float32)
  bank = state["bank"]
  if exclude_source is None:
    d, _ = knn.knn(q, bank, k=1, mesh=mesh)
    d = np.asarray(d)[:, 0]
  else:
    own = np.repeat(np.asarray(exclude_source), h * w)
    d, _ = _nearest_other_image(q, own, bank, state["source"],
                                search_k=search_k, mesh=mesh)
  return np.sqrt(np.maximum(d, 0.0)).reshape(n, h, w).astype(np.float32)


def leave_one_out_bank(state: Bank, train_features: np.ndarray, *,
                       keep: Optional[np.ndarray] = None,
                       search_k: int = 16) -> Bank:
  """The bank that scores the training images themselves **(ours)**.

  The coreset keeps one of several near-identical patches, from whichever
  image it met first: leaving that image's rows out of the coreset bank
  leaves it with no near row, although every other image holds a copy (of
  20 identical images two scored 19.3 and 9.2, the rest 0.0625; issue 25).
  So every row from a coreset gets a twin: the nearest kept training patch
  of another image than the row's own. Scored against the rows of the other
  images in this bank, an image's patch is at most 2ε farther than from its
  nearest kept patch of another image (ε: the coreset's covering radius;
  the twin of a row of its own is within ε of that patch's covering row),
  and never nearer (every row is a real patch of the image it names).

  Args:
    state: the bank from ``fit(train_features, keep=keep, ...)``.
    train_features: (N, h, w, C) the features ``state`` was fitted on.
    keep: the ``keep`` mask given to ``fit``.
    search_k: neighbours searched per row before the exact search.

  Returns:
    ``state``'s rows followed by their twins (each kept patch at most once),
    with ``source``; ``state`` itself when it holds every kept patch (no
    coreset: nothing to add).
  """
  flat, source = _kept_patches(train_features, keep)
  bank, bank_source = state["bank"], state["source"]
  if bank.shape[0] == flat.shape[0]:
    return state
  mesh = parallel.make_mesh() if jax.device_count() > 1 else None
  d, twin = _nearest_other_image(bank, bank_source, flat, source,
                                 search_k=search_k, mesh=mesh)
  # A single training image has no twins. A patch that is the twin of
  # several rows is added once: repeated rows cost the host kNN its fast
  # path (tied group minima).
  twin = np.unique(twin[np.isfinite(d)])
  return {"bank": np.concatenate([bank, flat[twin]]),
          "source": np.concatenate([bank_source, source[twin]])}


def maps_and_scores(patch_scores: np.ndarray, *, size: int,
                    sigma: float) -> tuple[np.ndarray, np.ndarray]:
  """Image scores (max patch score) and blurred maps at the evaluation size."""
  image_scores = patch_scores.reshape(len(patch_scores), -1).max(1)
  amaps = np.asarray(maps.patch_scores_to_map(patch_scores, size=size,
                                              sigma=sigma))
  return image_scores, amaps


def run_bank_method(config: ml_collections.ConfigDict, data: api.RunData,
                    workdir: str, *, cfg: ml_collections.ConfigDict,
                    keep_fn=None) -> api.Predictions:
  """Shared body of PatchCore and SoftPatch: features → bank → scores."""
  del workdir
  t0 = time.time()
  train_feats = features_lib.load_features(config, data.train, layout="patchcore")
  # An empty test set is allowed: dicofun inspect only scores the training
  # images (transductively).
  test_feats = (features_lib.load_features(config, data.test,
                                           layout="patchcore")
                if data.test else None)
  t_feat = time.time() - t0
  t1 = time.time()
  keep = keep_fn(train_feats) if keep_fn is not None else None
  state = fit(train_feats, coreset_fraction=cfg.coreset_fraction,
              projection_dim=cfg.projection_dim, seed=config.seed, keep=keep,
              coreset_method=cfg.coreset_method)
  fit_s = time.time() - t1
  logging.info("Bank: %d rows from %d training images (%.1fs)",
               state["bank"].shape[0], len(data.train), fit_s)
  t2 = time.time()
  if test_feats is None:
    size = config.dataset.image_size
    test_scores = np.zeros((0,), np.float32)
    test_maps = np.zeros((0, size, size), np.float32)
  else:
    test_scores, test_maps = predict_features(config, state, test_feats,
                                              cfg=cfg)
  infer_s = time.time() - t2
  train_scores = train_maps = None
  if cfg.transductive:
    # Leave-one-out: an image's patches are scored against the bank rows of
    # the other images only, in a bank that still covers it.
    tr_patch = score(leave_one_out_bank(state, train_feats, keep=keep),
                     train_feats, exclude_source=np.arange(len(data.train)))
    train_scores = tr_patch.reshape(len(tr_patch), -1).max(1)
    if config.eval.get("train_maps", False):
      _, train_maps = maps_and_scores(tr_patch, size=config.dataset.image_size,
                                      sigma=cfg.blur_sigma)
  extra: dict[str, Any] = {
      "bank_rows": int(state["bank"].shape[0]),
      "feature_shape": list(train_feats.shape[1:]),
      "feature_seconds": t_feat,
      "fit_seconds": fit_s,
      "inference_images_per_s": len(data.test) / max(infer_s, 1e-9),
  }
  if keep is not None:
    extra["kept_patch_fraction"] = float(np.mean(keep))
  return api.Predictions(test_scores=test_scores, test_maps=test_maps,
                         train_scores=train_scores, train_maps=train_maps,
                         extra=extra, state={"bank": state["bank"]})


def predict_features(config: ml_collections.ConfigDict, state: Bank,
                     features: np.ndarray, *,
                     cfg: ml_collections.ConfigDict
                     ) -> tuple[np.ndarray, np.ndarray]:
  """Image scores and maps of query features against the bank."""
  patch = score(state, features)
  return maps_and_scores(patch, size=config.dataset.image_size,
                         sigma=cfg.blur_sigma)


def predict(config: ml_collections.ConfigDict, state: Bank,
            records: list) -> tuple[np.ndarray, np.ndarray]:
  """Scores new images from the inference state alone (api contract)."""
  feats = features_lib.load_features(config, records, layout="patchcore",
                              desc="predict features")
  return predict_features(config, state, feats, cfg=config[config.method])


def run(config: ml_collections.ConfigDict, data: api.RunData,
        workdir: str) -> api.Predictions:
  """PatchCore on ``data`` (the runner's entry point)."""
  return run_bank_method(config, data, workdir, cfg=config.patchcore)
