"""PatchCore's config: ``default_config()`` (the one place its defaults live),
the config-file arguments and their checks (shared with SoftPatch, whose
``config.softpatch`` extends these defaults).

A ``configs/patchcore_<dataset>.py`` file builds
``configlib.run_config(method_config=default_config(), ...)``, applies its
``runlocal`` block and ends with ``apply_args(config, arg)``.
"""

from __future__ import annotations

from typing import Optional

import ml_collections

from dicofun import configlib


# dicofun.ops.coreset.METHODS, repeated here: a method config imports no JAX.
CORESET_METHODS = ("greedy", "approximate")


def default_config() -> ml_collections.ConfigDict:
  """``config.patchcore`` defaults (METHODS §3)."""
  return ml_collections.ConfigDict(dict(
      coreset_fraction=0.1,
      # "greedy": first centre uniformly random; "approximate": the official
      # PatchCore ApproximateGreedyCoresetSampler start (10 random rows,
      # mean distance to them). Same loop and cost (dicofun/ops/coreset.py).
      coreset_method="greedy",
      projection_dim=128,
      blur_sigma=4.0,
      transductive=True,
  ))


def bank_args(method: str) -> dict[str, str]:
  """Config-file argument → field of a memory-bank method's run config."""
  return {**configlib.SHARED_ARGS,
          "layer": "backbone.layer",
          "norm": "backbone.norm_intermediate",
          "local_average": "backbone.vit_local_average",
          "coreset": f"{method}.coreset_fraction",
          "coreset_method": f"{method}.coreset_method"}


def apply_args(config: ml_collections.ConfigDict,
               arg: Optional[str]) -> ml_collections.ConfigDict:
  """Sets the arguments of ``bank_args(config.method)`` and checks the run.

  Args:
    config: a PatchCore or SoftPatch run config (after its ``runlocal``
      block: explicit arguments win over it).
    arg: the string after the colon, e.g. ``"coreset=0.25"``.

  Returns:
    ``config``, updated in place.
  """
  configlib.apply_args(config, arg, bank_args(config.method))
  check(config)
  return config


def min_train_images(config: ml_collections.ConfigDict) -> int:
  """2 with the transductive view, else 1 **(ours)**.

  A training image is scored against the other images' patches only
  (leave-one-out), so one image has nothing to be compared with.
  """
  return 2 if config[config.method].transductive else 1


def check(config: ml_collections.ConfigDict) -> None:
  """Named errors for a PatchCore/SoftPatch config (``ConfigArgError``)."""
  configlib.check_config(config)
  configlib.check_fraction(f"{config.method}.coreset_fraction",
                           config[config.method].coreset_fraction)
  configlib.check_choice(f"{config.method}.coreset_method",
                         config[config.method].coreset_method,
                         CORESET_METHODS)
