r"""patchcore on synthetic: the embedded procedural dataset (generated into <workdir>/data; nothing to download).

Run:
  python experiments/main.py --config=configs/patchcore_synthetic.py:contamination=0.1 \
      --workdir=runs/patchcore_synthetic

Args (after the colon, comma-separated): category, contamination, overlap,
backbone (efficientnet_lite0|1|2, dinov2_vits14), layer (ViT block), image_size,
crop, coreset, seed, root, runlocal. Results of measured runs: BENCHMARKS.md.
"""

from dicofun.methods.patchcore import config as patchcore_config


def get_config(arg=None):
  return patchcore_config.patchcore_config("synthetic", arg)
