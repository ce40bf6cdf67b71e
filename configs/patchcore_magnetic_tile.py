r"""PatchCore on the Magnetic Tile Defect dataset (METHODS §3).

Magnetic Tile Defect (Huang et al., 2018) in MVTec layout at
$DICOFUN_DATA/magnetic_tile (or config.dataset.root); by default the tiles
are not centre-cropped (defects sit near the edges).

Run::

  python experiments/main.py \
      --config=configs/patchcore_magnetic_tile.py:contamination=0.1 \
      --workdir=runs/patchcore_magnetic_tile

Args: category, contamination, coreset (fraction of patches kept),
coreset_method (greedy | approximate), backbone,
weights (pretrained | random | a weights file: docs/backbones.md),
layer (ViT block), norm (ViT intermediate tokens through the final
LayerNorm; default on), local_average (side of the ViT patch tokens' local
average; default 1 = none), image_size, crop, seed, root, runlocal (the CPU
smoke size of get_config).
Defaults: ``default_config()`` of dicofun/methods/patchcore/config.py, the
shared blocks of ``configlib.run_config`` and the values below; an arg given
explicitly wins over runlocal.
Results of measured runs: BENCHMARKS.md.
"""

from dicofun import configlib
from dicofun.methods.patchcore import config as patchcore_config


def get_config(arg=None):
  """The run config; ``arg`` as in the module docstring."""
  config = configlib.run_config(
      method="patchcore", method_config=patchcore_config.default_config(),
      dataset="magnetic_tile", backbone="efficientnet_lite0", image_size=224)
  # runlocal changes nothing here: there are no epochs to cut and the
  # dataset is read as it is.
  return patchcore_config.apply_args(config, arg)
