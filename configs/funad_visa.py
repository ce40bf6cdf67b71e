r"""FUN-AD on a VisA category (METHODS §1).

VisA at $DICOFUN_DATA/visa (<category>/Data and split_csv/1cls.csv; or
config.dataset.root); get it from https://github.com/amazon-science/spot-diff.

Run::

  python experiments/main.py \
      --config=configs/funad_visa.py:category=candle,contamination=0.1 \
      --workdir=runs/funad_visa
  # CPU smoke run:
  python experiments/main.py \
      --config=configs/funad_visa.py:runlocal,contamination=0.1 \
      --workdir=runs/funad_visa_local

Args: category, contamination, preset (default | paper: the published
recipe, METHODS §1; default: the measured best, every difference marked
ours), rho (memory-bank ratio ρ), steps (the default preset's budget in
optimiser steps), min_epochs (its floor in passes), epochs (the paper's
budget; given alone it counts the budget in epochs, steps=0), lr, batch (images per
iteration), tau_n, lam (weight of L_MS), smoothness (mae|mse|kl),
refresh_every (1 = rescore every iteration), eval_every (steps, or epochs
with steps=0), noise (Gaussian
synthesis), bank_patches (ours; 0 = all bank patches), batch_patches (ours;
0 = all patch positions), d_norm (minmax|percentile|rank), d_lo, d_hi
(percentiles of d_norm=percentile), bce (clamped|logit), soft (ours; soft
BCE targets), schedule (constant|cosine), warmup (lr warm-up iterations),
ema (ours; EMA decay of the params, 0 = off), logits (ours; scores are
logits), exclude (ours; bank rows of the batch's images ignored),
dist_input (ours; pseudo-label distances on the input features),
bank_weight (ours; weight of the trusted bank's distance in the score, 0 =
off), bank_coreset (ours; the trusted bank's coreset fraction),
bank_denoise (ours; fraction of its patches SoftPatch's LOF leaves out),
bank_trust (ours; fraction of the training images, the lowest-ranked, in it), backbone,
weights (pretrained | random | a weights file: docs/backbones.md),
layer (ViT block), norm (ViT intermediate tokens through the final
LayerNorm; default on), image_size, crop, seed, root, runlocal (the CPU
smoke size of get_config).
Defaults: ``default_config(preset)`` of dicofun/methods/funad/config.py, the
shared blocks of ``configlib.run_config`` and the values below; an arg given
explicitly wins over runlocal.
The result is the last step; ``extra.oracle`` in results.json is the
test-selected evaluation, labelled as such. ``learning_curve.png`` in the
workdir draws the history against the optimiser step.
"""

from dicofun import configlib
from dicofun.methods.funad import config as funad_config


def get_config(arg=None):
  """The run config; ``arg`` as in the module docstring."""
  config = configlib.run_config(
      method="funad",
      method_config=funad_config.default_config(funad_config.preset_in(arg)),
      dataset="visa", backbone="dinov2_vits14", image_size=224)
  if configlib.flag_in(arg, "runlocal"):  # CPU smoke size.
    funad_config.runlocal(config.funad)
  return funad_config.apply_args(config, arg)
