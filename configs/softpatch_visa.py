r"""softpatch on visa: VisA at $DICOFUN_DATA/visa (containing <category>/Data and split_csv/1cls.csv; or config.dataset.root); get it from https://github.com/amazon-science/spot-diff.

Run:
  python experiments/main.py --config=configs/softpatch_visa.py:contamination=0.1 \
      --workdir=runs/softpatch_visa

Args (after the colon, comma-separated): category, contamination, overlap,
backbone (efficientnet_lite0|1|2, dinov2_vits14), layer (ViT block), image_size,
crop, coreset, seed, root, runlocal. Results of measured runs: BENCHMARKS.md.
"""

from dicofun.methods.softpatch import config as softpatch_config


def get_config(arg=None):
  return softpatch_config.softpatch_config("visa", arg)
