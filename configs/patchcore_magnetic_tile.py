r"""patchcore on magnetic_tile: magnetic tile in MVTec layout at $DICOFUN_DATA/magnetic_tile (or --config.dataset.root=../shared/data/magnetic_tile).

Run:
  python experiments/main.py --config=configs/patchcore_magnetic_tile.py:contamination=0.1 \
      --workdir=runs/patchcore_magnetic_tile

Args (after the colon, comma-separated): category, contamination, overlap,
backbone (efficientnet_lite0|1|2, dinov2_vits14), layer (ViT block), image_size,
crop, coreset, seed, root, runlocal. Results of measured runs: BENCHMARKS.md.
"""

from dicofun.methods.patchcore import config as patchcore_config


def get_config(arg=None):
  return patchcore_config.patchcore_config("magnetic_tile", arg)
