"""PatchCore's config: ``default_config()`` (the one place its defaults live)
and the builder shared by the ``configs/patchcore_*.py`` files (and, with
SoftPatch's defaults, ``configs/softpatch_*.py``)."""

from __future__ import annotations

from typing import Callable, Optional

import ml_collections

from dicofun import configlib


def default_config() -> ml_collections.ConfigDict:
  """``config.patchcore`` defaults (METHODS §3)."""
  return ml_collections.ConfigDict(dict(
      coreset_fraction=0.1,
      projection_dim=128,
      blur_sigma=4.0,
      transductive=True,
  ))


def bank_config(method: str, dataset: str, arg: Optional[str], *,
                defaults: Callable[[], ml_collections.ConfigDict]
                ) -> ml_collections.ConfigDict:
  """Config of a memory-bank method (PatchCore, SoftPatch) on ``dataset``.

  Args (in ``arg``): category, contamination, overlap, backbone, layer,
  image_size, crop, coreset, seed, root, runlocal.
  """
  d = configlib.dataset_defaults(dataset)
  a = configlib.parse_arg(
      arg, category=d["category"], contamination=0.0, overlap=False,
      backbone="efficientnet_lite0", layer=8, image_size=224,
      crop=d["crop_fraction"], coreset=0.1, seed=0, root="", runlocal=False)
  cfg = configlib.base_config(
      method=method,
      dataset=configlib.dataset_config(
          name=dataset, category=a.category, root=a.root,
          contamination=a.contamination, overlap=a.overlap,
          image_size=a.image_size, crop_fraction=a.crop),
      backbone=a.backbone, seed=a.seed)
  cfg.backbone.layer = a.layer
  sub = defaults()
  sub.coreset_fraction = a.coreset
  if a.runlocal:
    cfg.dataset.synthetic.num_train = 30
    cfg.dataset.synthetic.num_test_good = 10
    cfg.dataset.synthetic.num_test_anomalous = 10
  cfg[method] = sub
  return cfg


def patchcore_config(dataset: str,
                     arg: Optional[str]) -> ml_collections.ConfigDict:
  """PatchCore on ``dataset`` from the config-file argument string."""
  return bank_config("patchcore", dataset, arg, defaults=default_config)
