r"""dico on visa: VisA at $DICOFUN_DATA/visa (1cls split CSV + images; or config.dataset.root).

Run:
  python experiments/main.py --config=configs/dico_visa.py:contamination=0.1 \
      --workdir=runs/dico_visa
  # CPU smoke run (image size 128, 3 epochs, batch 8):
  python experiments/main.py --config=configs/dico_visa.py:runlocal \
      --workdir=runs/dico_visa_local

Args (after the colon, comma-separated): category, contamination, overlap,
memory (N, 0 = no memory), mask_ratio, mask_patch, masking, score
(adaptive|max|topk_mean), k_masks, epochs, batch_size, backbone
(efficientnet_lite0|1|2), image_size, crop, seed, root, runlocal.
A run started again with the same --workdir resumes from its checkpoint.
Results of measured runs: BENCHMARKS.md.
"""

from dicofun.methods.dico import config as dico_config


def get_config(arg=None):
  return dico_config.dico_method_config("visa", arg)
