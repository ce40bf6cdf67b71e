r"""softpatch on synthetic: the embedded procedural dataset (generated into <workdir>/data; nothing to download).

Run:
  python experiments/main.py --config=configs/softpatch_synthetic.py:contamination=0.1 \
      --workdir=runs/softpatch_synthetic

Args (after the colon, comma-separated): category, contamination, overlap,
backbone (efficientnet_lite0|1|2, dinov2_vits14), layer (ViT block), image_size,
crop, coreset, seed, root, runlocal. Results of measured runs: BENCHMARKS.md.
"""

from dicofun.methods.softpatch import config as softpatch_config


def get_config(arg=None):
  return softpatch_config.softpatch_config("synthetic", arg)
