"""FUN-AD's config: ``default_config()`` (the one place its defaults live),
the config-file arguments ``ARGS`` and their checks.

A ``configs/funad_<dataset>.py`` file builds
``configlib.run_config(method_config=default_config(), ...)``, applies its
``runlocal`` block and ends with ``apply_args(config, arg)``.
"""

from __future__ import annotations

from typing import Optional

import ml_collections

from dicofun import configlib

SMOOTHNESS = ("mae", "mse", "kl")  # The mutual-smoothness loss L_MS.

# Config-file argument → the field it sets (its default is that field's).
ARGS: dict[str, str] = {
    **configlib.SHARED_ARGS,
    "layer": "backbone.layer",
    "norm": "backbone.norm_intermediate",
    "rho": "funad.rho",
    "epochs": "funad.epochs",
    "lr": "funad.lr",
    "smoothness": "funad.smoothness",
    "refresh_every": "funad.refresh_every",
    "eval_every": "funad.eval_every",
}


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
      smoothness="mae",  # One of SMOOTHNESS.
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


def apply_args(config: ml_collections.ConfigDict,
               arg: Optional[str]) -> ml_collections.ConfigDict:
  """Sets ``ARGS`` from the config-file argument string and checks the run.

  Args:
    config: a run config with ``config.funad`` (after its ``runlocal``
      block: explicit arguments win over it).
    arg: the string after the colon, e.g. ``"rho=0.25,contamination=0.1"``.

  Returns:
    ``config``, updated in place.
  """
  configlib.apply_args(config, arg, ARGS)
  check(config)
  return config


def check(config: ml_collections.ConfigDict) -> None:
  """Named errors for a FUN-AD run config (``configlib.ConfigArgError``)."""
  configlib.check_config(config)
  f = config.funad
  configlib.check_fraction("funad.rho", f.rho)
  configlib.check_choice("funad.smoothness", f.smoothness, SMOOTHNESS)
  configlib.check_positive_int("funad.epochs", f.epochs)
  configlib.check_positive("funad.lr", f.lr)
  configlib.check_positive_int("funad.refresh_every", f.refresh_every)
  configlib.check_that(f.eval_every >= 0, "funad.eval_every", f.eval_every,
                       "an integer >= 0")
