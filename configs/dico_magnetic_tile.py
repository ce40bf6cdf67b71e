r"""DiCo on the Magnetic Tile Defect dataset (METHODS §2).

Magnetic Tile Defect (Huang et al., 2018) in MVTec layout at
$DICOFUN_DATA/magnetic_tile (or config.dataset.root); by default the tiles
are not centre-cropped (defects sit near the edges).

Run::

  python experiments/main.py \
      --config=configs/dico_magnetic_tile.py:contamination=0.1 \
      --workdir=runs/dico_magnetic_tile
  # CPU smoke run:
  python experiments/main.py \
      --config=configs/dico_magnetic_tile.py:runlocal,contamination=0.1 \
      --workdir=runs/dico_magnetic_tile_local

Args: category, contamination, memory (N; 0 = no memory), bottleneck
(channels), bottleneck_stride (0 = coarsest level's; 32 = once more), mask_ratio,
mask_patch, masking, score (adaptive|max|topk_mean), k_masks (inference
passes), k_combine (mean|masked: how they combine), score_levels
(levels summed into the map, e.g. stride16 or stride8+stride16; default all), epochs
(the faithful budget in passes; given alone, also with cpu, it counts epochs:
steps=0), steps (a budget in optimiser steps, whatever the training-set size;
0 = epochs), min_epochs (the floor of a step budget, in passes), lr_schedule
(constant|cosine), warmup_steps (the cosine warm-up in steps), warmup_epochs
(plus this many passes), batch_size, backbone (a CNN),
weights (pretrained | random | a weights file: docs/backbones.md), image_size,
crop, seed, root, runlocal (the CPU smoke size of get_config), cpu (the CPU
preset, issue 28: 400 optimiser steps at batch 8, at least 2 passes, cached
targets, a cosine lr with 40 warm-up steps, the test set scored every 100
steps; one cell of a 320-image category at 256 px within 10 min on 2 cores,
see CPU_PRESET in dicofun/methods/dico/config.py and BENCHMARKS.md).
Defaults: ``default_config()`` of dicofun/methods/dico/config.py, the
shared blocks of ``configlib.run_config`` and the values below; an arg given
explicitly wins over runlocal.
A run started again with the same --workdir resumes from its checkpoint.
Results of measured runs: BENCHMARKS.md.
"""

from dicofun import configlib
from dicofun.methods.dico import config as dico_config


def get_config(arg=None):
  """The run config; ``arg`` as in the module docstring."""
  config = configlib.run_config(
      method="dico", method_config=dico_config.default_config(),
      dataset="magnetic_tile", backbone="efficientnet_lite0", image_size=256)
  if configlib.flag_in(arg, "runlocal"):  # CPU smoke size.
    config.dataset.update(image_size=128, num_workers=2)
    config.dico.update(epochs=3, batch_size=8, bottleneck_channels=128,
                       eval_every=1, checkpoint_every=1, eval_batch_size=8)
  # CPU preset (issue 28): a budget in optimiser steps, dico_config.CPU_PRESET.
  dico_config.apply_cpu_preset(config, arg)
  return dico_config.apply_args(config, arg)
