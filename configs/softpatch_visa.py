r"""SoftPatch on a VisA category (METHODS §3).

VisA at $DICOFUN_DATA/visa (<category>/Data and split_csv/1cls.csv; or
config.dataset.root); get it from https://github.com/amazon-science/spot-diff.

Run::

  python experiments/main.py \
      --config=configs/softpatch_visa.py:category=candle,contamination=0.1 \
      --workdir=runs/softpatch_visa

Args: category, contamination, coreset (fraction of patches kept),
coreset_method (greedy | approximate), backbone,
weights (pretrained | random | a weights file: docs/backbones.md),
layer (ViT block), norm (ViT intermediate tokens through the final
LayerNorm; default on), local_average (side of the ViT patch tokens' local
average; default 1 = none), image_size, crop, seed, root, runlocal (the CPU
smoke size of get_config).
Defaults: ``default_config()`` of dicofun/methods/softpatch/config.py, the
shared blocks of ``configlib.run_config`` and the values below; an arg given
explicitly wins over runlocal.
Results of measured runs: BENCHMARKS.md.
"""

from dicofun import configlib
from dicofun.methods.softpatch import config as softpatch_config


def get_config(arg=None):
  """The run config; ``arg`` as in the module docstring."""
  config = configlib.run_config(
      method="softpatch", method_config=softpatch_config.default_config(),
      dataset="visa", backbone="efficientnet_lite0", image_size=224)
  # runlocal changes nothing here: there are no epochs to cut and the
  # dataset is read as it is.
  return softpatch_config.apply_args(config, arg)
