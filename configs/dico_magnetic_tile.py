r"""dico on magnetic_tile: Magnetic Tile Defect in MVTec layout (../shared/data/magnetic_tile in a source checkout, else $DICOFUN_DATA/magnetic_tile).

Run:
  python experiments/main.py --config=configs/dico_magnetic_tile.py:contamination=0.1 \
      --workdir=runs/dico_magnetic_tile
  # CPU smoke run (image size 128, 3 epochs, batch 8):
  python experiments/main.py --config=configs/dico_magnetic_tile.py:runlocal \
      --workdir=runs/dico_magnetic_tile_local

Args (after the colon, comma-separated): category, contamination, overlap,
memory (N, 0 = no memory), mask_ratio, mask_patch, masking, score
(adaptive|max|topk_mean), k_masks, epochs, batch_size, backbone
(efficientnet_lite0|1|2), image_size, crop, seed, root, runlocal.
A run started again with the same --workdir resumes from its checkpoint.
Results of measured runs: BENCHMARKS.md.
"""

from dicofun.methods.dico import config as dico_config


def get_config(arg=None):
  return dico_config.dico_method_config("magnetic_tile", arg)
