r"""SoftPatch on any category in the MVTec AD folder layout (METHODS §3).

The category is ``<root>/<category>`` with ``train/good``, ``test/<type>`` and
``ground_truth/<type>/<stem>_mask.<ext>`` — your own data in this layout, or
the suite's categories (benchmarks/suite.py). No centre crop by default
(``crop=1.0``): the suite states the crop of each of its categories.

Run::

  python experiments/main.py \
      --config=configs/softpatch_mvtec_layout.py:root=../shared/data,category=mvtec_ad/screw \
      --workdir=runs/softpatch_screw

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
      dataset="mvtec_layout", backbone="efficientnet_lite0", image_size=224)
  # runlocal changes nothing here: there are no epochs to cut and the
  # dataset is read as it is.
  return softpatch_config.apply_args(config, arg)
