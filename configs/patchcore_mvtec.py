r"""patchcore on mvtec: MVTec AD at $DICOFUN_DATA/mvtec_ad/<category> (or config.dataset.root); get it from https://www.mvtec.com/company/research/datasets/mvtec-ad.

Run:
  python experiments/main.py --config=configs/patchcore_mvtec.py:contamination=0.1 \
      --workdir=runs/patchcore_mvtec

Args (after the colon, comma-separated): category, contamination, overlap,
backbone (efficientnet_lite0|1|2, dinov2_vits14), layer (ViT block), image_size,
crop, coreset, seed, root, runlocal. Results of measured runs: BENCHMARKS.md.
"""

from dicofun.methods.patchcore import config as patchcore_config


def get_config(arg=None):
  return patchcore_config.patchcore_config("mvtec", arg)
