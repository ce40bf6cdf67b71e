"""DiCo's config: ``default_config()`` (the one place its defaults live), the
config-file arguments ``ARGS`` and their checks.

Budget: the faithful path counts epochs (METHODS §2: 200 at batch 16); the
``cpu`` preset counts optimiser steps (``steps``, with a floor of
``min_epochs`` passes; ``training.budget``) **(ours)**, so a small and a
large category train the same number of iterations (issue 28).

A ``configs/dico_<dataset>.py`` file builds
``configlib.run_config(method_config=default_config(), ...)``, applies its
``runlocal`` block and ends with ``apply_args(config, arg)``.
"""

from __future__ import annotations

from typing import Optional

import ml_collections

from dicofun import configlib
from dicofun.models import names

SCORE_MODES = ("adaptive", "max", "topk_mean")
# How the K masked inference passes combine (scoring.combine_pass_maps).
K_MASKS_COMBINE = ("mean", "masked")

# Config-file argument → the field it sets (its default is that field's).
ARGS: dict[str, str] = {
    **configlib.SHARED_ARGS,
    "memory": "dico.memory_size",
    "bottleneck": "dico.bottleneck_channels",
    "bottleneck_stride": "dico.bottleneck_stride",
    "mask_ratio": "dico.mask_ratio",
    "mask_patch": "dico.mask_patch",
    "masking": "dico.masking",
    "score": "dico.score_mode",
    "k_masks": "dico.k_masks",
    "k_combine": "dico.k_masks_combine",
    "score_levels": "dico.score_levels",
    "epochs": "dico.epochs",
    "steps": "dico.steps",
    "min_epochs": "dico.min_epochs",
    "batch_size": "dico.batch_size",
    "lr_schedule": "dico.lr_schedule",
    "warmup_epochs": "dico.warmup_epochs",
    "warmup_steps": "dico.warmup_steps",
}
# Bare flags of the config files that set no field: ``cpu`` applies
# ``CPU_PRESET`` (``apply_cpu_preset``).
FLAGS = ("cpu",)

# The ``cpu`` preset (issue 28): a budget in optimiser steps, the same for
# every training-set size (at least 2 passes), at batch 8 with cached targets
# and a warm-up + cosine lr; rounds of 50 steps, each checkpointed, the test
# set scored every 100 (history). The step count is chosen for its cost: one
# cell of a 320-image category at 256 px within 10 min on 2 cores
# (BENCHMARKS.md, "DiCo budget in steps"); no accuracy was chosen with it.
CPU_PRESET = dict(steps=400, min_epochs=2, batch_size=8, eval_batch_size=8,
                  eval_every=100, checkpoint_every=50, lr_schedule="cosine",
                  warmup_steps=40, warmup_epochs=0, cache_targets=True)


def default_config() -> ml_collections.ConfigDict:
  """``config.dico`` defaults (METHODS §2; **(ours)** where the paper is silent)."""
  return ml_collections.ConfigDict(dict(
      levels=("stride4", "stride8", "stride16"),
      bottleneck_channels=256,
      # Stride of the bottleneck map; 0 = the coarsest level's (16 for the
      # default levels). 32 downsamples once more (ours), as reverse
      # distillation's stride-32 one-class embedding.
      bottleneck_stride=0,
      memory_size=50,  # N; 0 disables the memory.
      temperature=0.1,  # τ of the addressing softmax (ours).
      shrink=0.0,  # λ of the hard shrinkage; 0 means 1/N.
      masking=True,
      mask_ratio=0.5,
      mask_patch=32,
      score_mode="adaptive",  # One of SCORE_MODES.
      kappa=3.0,
      topk_fraction=0.01,
      k_masks=0,  # K complementary masked passes at inference (0 = off).
      # How they combine: "mean" of the K maps, or "masked" (ours): each
      # pixel from the pass that masked it (inpainting error, as trained).
      k_masks_combine="mean",
      # (ours) Levels summed into the anomaly map, "+"-separated (e.g.
      # "stride16" or "stride8+stride16"); "" = every level of ``levels``
      # (METHODS §2.3). Scoring only: a trained run can be re-scored.
      score_levels="",
      epochs=200,  # The budget of the paper: passes over the training set.
      # (ours) the budget in optimiser steps, whatever the training-set size
      # (0 = count ``epochs``); ``eval_every`` and ``checkpoint_every`` then
      # count steps too (``training.budget``).
      steps=0,
      # (ours) the floor of a step budget: at least this many passes.
      min_epochs=0,
      batch_size=16,
      lr=5e-3,
      lr_schedule="constant",  # Or "cosine": warm-up + cosine to 0 (ours).
      # Linear warm-up of the cosine schedule: warmup_steps optimiser steps
      # plus warmup_epochs passes.
      warmup_epochs=0,
      warmup_steps=0,
      b1=0.5,
      b2=0.999,
      compact_weight=0.1,
      entropy_weight=2e-4,
      momentum=0.99,
      blur_sigma=4.0,
      eval_every=10,  # Test-set history every n epochs/steps (0 = end only).
      checkpoint_every=10,
      eval_batch_size=32,
      transductive=True,  # Score the training set (view c).
      max_in_memory_gb=4.0,  # Larger training sets are streamed.
      # Compute the frozen clean targets T_k of every training image once
      # and train from that cache (in-memory path; recomputed every step
      # when images + targets exceed max_in_memory_gb). Same losses and
      # metrics as recomputing (runlocal: identical), ~2x faster steps.
      cache_targets=True,
  ))


def score_levels(d: ml_collections.ConfigDict) -> tuple[str, ...]:
  """``dico.score_levels`` as a tuple (empty = every level)."""
  return tuple(p.strip() for p in str(d.get("score_levels", "") or "").split("+")
               if p.strip())


def apply_cpu_preset(config: ml_collections.ConfigDict,
                     arg: Optional[str]) -> None:
  """Applies ``CPU_PRESET`` when ``arg`` has ``cpu`` (before ``apply_args``:
  explicit args win over it; ``epochs=`` alone counts epochs again)."""
  if configlib.flag_in(arg, "cpu"):
    config.dico.update(CPU_PRESET)


def apply_args(config: ml_collections.ConfigDict,
               arg: Optional[str]) -> ml_collections.ConfigDict:
  """Sets ``ARGS`` from the config-file argument string and checks the run.

  Args:
    config: a run config with ``config.dico`` (after its ``runlocal`` block:
      explicit arguments win over it).
    arg: the string after the colon, e.g. ``"memory=10,contamination=0.1"``.

  An explicit ``epochs=`` without ``steps=`` counts the budget in epochs
  (``steps=0``; ``eval_every`` and ``checkpoint_every`` then count epochs
  too): ``cpu,epochs=30`` means 30 passes.

  Returns:
    ``config``, updated in place; the backbone extracts features in batches
    of ``config.dico.batch_size``.
  """
  configlib.apply_args(config, arg, ARGS, flags=FLAGS)
  given = {item.strip().partition("=")[0].strip()
           for item in (arg or "").split(",")}
  if "epochs" in given and "steps" not in given:
    config.dico.steps = 0
  config.backbone.batch_size = config.dico.batch_size
  check(config)
  return config


def check(config: ml_collections.ConfigDict) -> None:
  """Named errors for a DiCo run config (``configlib.ConfigArgError``)."""
  configlib.check_config(config)
  cnns = [n for n, patch in names.PATCH_SIZES.items() if not patch]
  configlib.check_that(config.backbone.name in cnns, "backbone.name",
                       config.backbone.name,
                       f"a CNN, one of {cnns} (DiCo decodes its stride levels)")
  d = config.dico
  configlib.check_choice("dico.score_mode", d.score_mode, SCORE_MODES)
  for level in score_levels(d):
    configlib.check_that(level in tuple(d.levels), "dico.score_levels",
                         d.score_levels,
                         f"'+'-separated names out of {list(d.levels)} "
                         "(or empty for all)")
  configlib.check_choice("dico.k_masks_combine", d.k_masks_combine,
                         K_MASKS_COMBINE)
  configlib.check_positive_int("dico.epochs", d.epochs)
  configlib.check_positive_int("dico.batch_size", d.batch_size)
  configlib.check_positive("dico.lr", d.lr)
  configlib.check_choice("dico.lr_schedule", d.lr_schedule, ("constant",
                                                             "cosine"))
  configlib.check_step_budget("dico", d)
  configlib.check_that(d.eval_every >= 0, "dico.eval_every", d.eval_every,
                       "an integer >= 0 (0 = at the end)")
  configlib.check_that(0 <= d.warmup_epochs < d.epochs, "dico.warmup_epochs",
                       d.warmup_epochs, "an integer in [0, epochs)")
  configlib.check_that(
      d.warmup_steps >= 0 and (d.steps == 0 or d.warmup_steps < d.steps),
      "dico.warmup_steps", d.warmup_steps,
      "an integer >= 0, below dico.steps with a step budget")
  configlib.check_that(d.memory_size >= 0, "dico.memory_size", d.memory_size,
                       "an integer >= 0 (0 disables the memory)")
  # model.level_stride's parse; config files load without jax (no model import).
  coarsest = max(int(str(k)[len("stride"):]) for k in d.levels)
  bs = int(d.get("bottleneck_stride", 0))
  configlib.check_that(
      bs == 0 or (bs >= coarsest and bs % coarsest == 0
                  and (bs // coarsest) & (bs // coarsest - 1) == 0),
      "dico.bottleneck_stride", d.get("bottleneck_stride", 0),
      f"0 (the coarsest level's stride, {coarsest}) or {coarsest} times a "
      "power of 2")
  configlib.check_fraction("dico.mask_ratio", d.mask_ratio)
