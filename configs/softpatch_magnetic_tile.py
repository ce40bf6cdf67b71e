r"""softpatch on magnetic_tile: magnetic tile in MVTec layout at $DICOFUN_DATA/magnetic_tile (or --config.dataset.root=../shared/data/magnetic_tile).

Run:
  python experiments/main.py --config=configs/softpatch_magnetic_tile.py:contamination=0.1 \
      --workdir=runs/softpatch_magnetic_tile

Args (after the colon, comma-separated): category, contamination, overlap,
backbone (efficientnet_lite0|1|2, dinov2_vits14), layer (ViT block), image_size,
crop, coreset, seed, root, runlocal. Results of measured runs: BENCHMARKS.md.
"""

from dicofun.methods.softpatch import config as softpatch_config


def get_config(arg=None):
  return softpatch_config.softpatch_config("magnetic_tile", arg)
