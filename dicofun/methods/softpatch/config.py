"""SoftPatch's config: ``default_config()`` (PatchCore's plus the LOF filter)
and the builder of the ``configs/softpatch_*.py`` files."""

from __future__ import annotations

from typing import Optional

import ml_collections

from dicofun.methods.patchcore import config as patchcore_config


def default_config() -> ml_collections.ConfigDict:
  """``config.softpatch`` defaults (METHODS §3)."""
  cfg = patchcore_config.default_config()
  cfg.lof_k = 6
  cfg.drop_fraction = 0.15
  return cfg


def softpatch_config(dataset: str,
                     arg: Optional[str]) -> ml_collections.ConfigDict:
  """SoftPatch on ``dataset`` from the config-file argument string."""
  return patchcore_config.bank_config("softpatch", dataset, arg,
                                      defaults=default_config)
