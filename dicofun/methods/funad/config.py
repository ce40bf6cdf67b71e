"""Config builder shared by the ``configs/funad_*.py`` files."""

from __future__ import annotations

from typing import Optional

import ml_collections

from dicofun import configlib


def funad_config(dataset: str, arg: Optional[str]) -> ml_collections.ConfigDict:
  """FUN-AD config on ``dataset`` from the config-file argument string.

  Args (in ``arg``): category, contamination, overlap, rho, epochs, backbone
  (dinov2_vits14), layer (8), image_size (224), crop, seed, root,
  refresh_every, lr, eval_every (0: the default), runlocal (a small CPU
  budget).

  Returns:
    The run config with ``config.funad``.
  """
  d = configlib.DATASET_DEFAULTS[dataset]
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
  from dicofun.methods import funad  # pylint: disable=g-import-not-at-top
  sub = funad.default_config()
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
