"""Config-file helper of DiCo (``configs/dico_<dataset>.py``).

Arguments (after the colon, comma-separated): category, contamination,
overlap, memory (N; 0 disables the memory), mask_ratio, mask_patch, masking,
score (adaptive|max|topk_mean), k_masks, epochs, batch_size, backbone
(efficientnet_lite0|1|2), image_size (256 for real data; synthetic 128), crop,
seed, root, runlocal (CPU budget: image size 128, 3 epochs, batch 8, smaller
network and synthetic set).
"""

from __future__ import annotations

from typing import Optional

import ml_collections

from dicofun import configlib

SCORE_MODES = ("adaptive", "max", "topk_mean")


def default_config() -> ml_collections.ConfigDict:
  """``config.dico`` defaults (METHODS §2; **(ours)** where the paper is silent)."""
  return ml_collections.ConfigDict(dict(
      levels=("stride4", "stride8", "stride16"),
      bottleneck_channels=256,
      memory_size=50,  # N; 0 disables the memory.
      temperature=0.1,  # τ of the addressing softmax (ours).
      shrink=0.0,  # λ of the hard shrinkage; 0 means 1/N.
      masking=True,
      mask_ratio=0.5,
      mask_patch=32,
      mask_fill="zero",  # "zero" (mean colour) or "noise" (ours).
      score_mode="adaptive",  # One of SCORE_MODES.
      kappa=3.0,
      topk_fraction=0.01,
      k_masks=0,  # K complementary masks averaged at inference (0 = off).
      epochs=200,
      batch_size=16,
      lr=5e-3,
      b1=0.5,
      b2=0.999,
      compact_weight=0.1,
      entropy_weight=2e-4,
      flat_weight=0.0,  # Optional flattened-map cosine term (off).
      momentum=0.99,
      blur_sigma=4.0,
      eval_every=10,  # Test-set history every n epochs (0 = end only).
      checkpoint_every=10,
      eval_batch_size=32,
      transductive=True,  # Score the training set (view c).
      max_in_memory_gb=4.0,  # Larger training sets are streamed.
  ))


def dico_method_config(dataset: str,
                       arg: Optional[str]) -> ml_collections.ConfigDict:
  """Config of DiCo on ``dataset`` from the config-file argument string."""
  d = configlib.dataset_defaults(dataset)
  default_size = 128 if dataset == "synthetic" else 256
  a = configlib.parse_arg(
      arg, category=d["category"], contamination=0.0, overlap=False,
      memory=50, mask_ratio=0.5, mask_patch=32, masking=True,
      score="adaptive", k_masks=0, epochs=200, batch_size=16,
      backbone="efficientnet_lite0", image_size=default_size,
      crop=d["crop_fraction"], seed=0, root="", runlocal=False)
  if a.score not in SCORE_MODES:
    raise configlib.ConfigArgError(
        f"config arg 'score': expected one of {SCORE_MODES}, got "
        f"{a.score!r}")
  image_size = a.image_size
  if a.runlocal and image_size == default_size:
    image_size = 128
  cfg = configlib.base_config(
      method="dico",
      dataset=configlib.dataset_config(
          name=dataset, category=a.category, root=a.root,
          contamination=a.contamination, overlap=a.overlap,
          image_size=image_size, crop_fraction=a.crop),
      backbone=a.backbone, seed=a.seed)
  sub = default_config()
  sub.memory_size = a.memory
  sub.mask_ratio = a.mask_ratio
  sub.mask_patch = a.mask_patch
  sub.masking = a.masking
  sub.score_mode = a.score
  sub.k_masks = a.k_masks
  sub.epochs = a.epochs
  sub.batch_size = a.batch_size
  if a.runlocal:
    sub.epochs = min(a.epochs, 3)
    sub.batch_size = min(a.batch_size, 8)
    sub.bottleneck_channels = 128
    sub.eval_every = 1
    sub.checkpoint_every = 1
    sub.eval_batch_size = 8
    cfg.dataset.synthetic.num_train = 24
    cfg.dataset.synthetic.num_test_good = 8
    cfg.dataset.synthetic.num_test_anomalous = 8
    cfg.dataset.num_workers = 2
  cfg.backbone.batch_size = sub.batch_size
  cfg.dico = sub
  return cfg
