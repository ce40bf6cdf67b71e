"""FUN-AD's config: ``default_config()`` (the one place its defaults live) and
the builder shared by the ``configs/funad_*.py`` files."""

from __future__ import annotations

from typing import Optional

import ml_collections

from dicofun import configlib


def default_config() -> ml_collections.ConfigDict:
  """``config.funad`` defaults (METHODS §1).

  The token layer and the input size are ``config.backbone.layer`` and
  ``config.dataset.image_size`` (single source of truth shared with the
  feature cache); the config files set them.
  """
  return ml_collections.ConfigDict(dict(
      hidden=(1024, 128),
      rho=0.5,
      tau_n=0.5,
      tau_c=0.9,
      lam=2.5,
      smoothness="mae",  # "mae" | "mse" | "kl".
      smoothness_on_noised=False,  # (ours) reference: True via in-place noise.
      noise=True,
      noise_ddof=1,  # std of σ_c as PyTorch's Tensor.std (unbiased).
      lr=2e-5,
      decay=0.99,
      eps=1e-8,
      momentum=0.2,
      batch_size=32,
      epochs=1500,
      eval_every=50,
      refresh_every=1,  # (ours) 1 = rescore the training set every iteration.
      blur_sigma=4.0,
      checkpoint_every=50,
      score_chunk=16,  # images per lax.map step when scoring (ours).
      knn_chunk=4096,  # bank rows per scan step of the kNN search (ours).
      transductive=True,
  ))


def funad_config(dataset: str, arg: Optional[str]) -> ml_collections.ConfigDict:
  """FUN-AD config on ``dataset`` from the config-file argument string.

  Args (in ``arg``): category, contamination, overlap, rho, epochs, backbone
  (dinov2_vits14), layer (8), image_size (224), crop, seed, root,
  refresh_every, lr, eval_every (0: the default), runlocal (a small CPU
  budget).

  Returns:
    The run config with ``config.funad``.
  """
  d = configlib.dataset_defaults(dataset)
  a = configlib.parse_arg(
      arg, category=d["category"], contamination=0.0, overlap=False, rho=0.5,
      epochs=1500, backbone="dinov2_vits14", layer=8, image_size=224,
      crop=d["crop_fraction"], seed=0, root="", refresh_every=1,
      lr=2e-5, eval_every=0, runlocal=False)
  image_size = a.image_size
  if a.runlocal and dataset == "synthetic" and image_size == 224:
    image_size = 112  # 8×8 ViT-S/14 patches: a CPU-sized run.
  cfg = configlib.base_config(
      method="funad",
      dataset=configlib.dataset_config(
          name=dataset, category=a.category, root=a.root,
          contamination=a.contamination, overlap=a.overlap,
          image_size=image_size, crop_fraction=a.crop),
      backbone=a.backbone, seed=a.seed)
  cfg.backbone.layer = a.layer
  sub = default_config()
  sub.rho = a.rho
  sub.epochs = a.epochs
  sub.refresh_every = a.refresh_every
  sub.lr = a.lr
  if a.eval_every:
    sub.eval_every = a.eval_every
  if a.runlocal:
    sub.epochs = min(a.epochs, 3)
    sub.batch_size = 8
    sub.eval_every = 1
    sub.checkpoint_every = 1
    cfg.dataset.synthetic.num_train = 30
    cfg.dataset.synthetic.num_test_good = 10
    cfg.dataset.synthetic.num_test_anomalous = 10
  cfg.funad = sub
  return cfg
