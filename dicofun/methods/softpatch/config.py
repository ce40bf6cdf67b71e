"""SoftPatch's config: ``default_config()`` (PatchCore's plus the LOF filter);
its config-file arguments and checks are PatchCore's
(``patchcore.config.apply_args``)."""

from __future__ import annotations

from typing import Optional

import ml_collections

from dicofun import configlib
from dicofun.methods.patchcore import config as patchcore_config


def default_config() -> ml_collections.ConfigDict:
  """``config.softpatch`` defaults (METHODS §3)."""
  cfg = patchcore_config.default_config()
  cfg.lof_k = 6
  cfg.drop_fraction = 0.15
  return cfg


def apply_args(config: ml_collections.ConfigDict,
               arg: Optional[str]) -> ml_collections.ConfigDict:
  """PatchCore's arguments and checks, plus the LOF filter's."""
  configlib.apply_args(config, arg, patchcore_config.bank_args("softpatch"))
  check(config)
  return config


def min_train_images(config: ml_collections.ConfigDict) -> int:
  """``lof_k`` + 1: each patch's LOF needs ``lof_k`` neighbours, at its
  position, in the other training images (and PatchCore's minimum)."""
  return max(int(config.softpatch.lof_k) + 1,
             patchcore_config.min_train_images(config))


def check(config: ml_collections.ConfigDict) -> None:
  """Named errors for a SoftPatch run config."""
  patchcore_config.check(config)
  s = config.softpatch
  configlib.check_positive_int("softpatch.lof_k", s.lof_k)
  configlib.check_that(0 <= s.drop_fraction < 1, "softpatch.drop_fraction",
                       s.drop_fraction, "a fraction in [0, 1)")
