r"""dico on mvtec: MVTec AD at $DICOFUN_DATA/mvtec_ad/<category> (or config.dataset.root); get it from https://www.mvtec.com/company/research/datasets/mvtec-ad.

Run:
  python experiments/main.py --config=configs/dico_mvtec.py:contamination=0.1 \
      --workdir=runs/dico_mvtec
  # CPU smoke run (image size 128, 3 epochs, batch 8):
  python experiments/main.py --config=configs/dico_mvtec.py:runlocal \
      --workdir=runs/dico_mvtec_local

Args (after the colon, comma-separated): category, contamination, overlap,
memory (N, 0 = no memory), mask_ratio, mask_patch, masking, score
(adaptive|max|topk_mean), k_masks, epochs, batch_size, backbone
(efficientnet_lite0|1|2), image_size, crop, seed, root, runlocal.
A run started again with the same --workdir resumes from its checkpoint.
Results of measured runs: BENCHMARKS.md.
"""

from dicofun.methods.dico import config as dico_config


def get_config(arg=None):
  return dico_config.dico_method_config("mvtec", arg)
