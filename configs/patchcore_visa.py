r"""patchcore on visa: VisA at $DICOFUN_DATA/visa (containing <category>/Data and split_csv/1cls.csv; or config.dataset.root); get it from https://github.com/amazon-science/spot-diff.

Run:
  python experiments/main.py --config=configs/patchcore_visa.py:contamination=0.1 \
      --workdir=runs/patchcore_visa

Args (after the colon, comma-separated): category, contamination, overlap,
backbone (efficientnet_lite0|1|2, dinov2_vits14), layer (ViT block), image_size,
crop, coreset, seed, root, runlocal. Results of measured runs: BENCHMARKS.md.
"""

from dicofun.methods.patchcore import config as patchcore_config


def get_config(arg=None):
  return patchcore_config.patchcore_config("visa", arg)
