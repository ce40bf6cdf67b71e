r"""PatchCore on the ELPV solar-cell dataset (METHODS §3).

ELPV solar cells (Buerhop-Lutz et al., 2018), read from the elpv-dataset
package (`pip install elpv-dataset`; or config.dataset.root): normal =
defect probability 0, anomalous >= 2/3 (1/3 cells left out), category
all|mono|poly (default all), no masks so image metrics only, 760 training
normals; dicofun/data/elpv.py says why.

Run::

  python experiments/main.py \
      --config=configs/patchcore_elpv.py:contamination=0.1 \
      --workdir=runs/patchcore_elpv

Args: category, contamination, coreset (fraction of patches kept),
coreset_method (greedy | approximate), backbone,
weights (pretrained | random | a weights file: docs/backbones.md),
layer (ViT block), norm (ViT intermediate tokens through the final
LayerNorm; default on), local_average (side of the ViT patch tokens' local
average; default 1 = none), image_size, crop, seed, root, runlocal (the CPU
smoke size of get_config).
Defaults: ``default_config()`` of dicofun/methods/patchcore/config.py, the
shared blocks of ``configlib.run_config`` and the values below; an arg given
explicitly wins over runlocal.
Results of measured runs: BENCHMARKS.md.
"""

from dicofun import configlib
from dicofun.methods.patchcore import config as patchcore_config


def get_config(arg=None):
  """The run config; ``arg`` as in the module docstring."""
  config = configlib.run_config(
      method="patchcore", method_config=patchcore_config.default_config(),
      dataset="elpv", backbone="efficientnet_lite0", image_size=224)
  # runlocal changes nothing here: there are no epochs to cut and the
  # dataset is read as it is.
  return patchcore_config.apply_args(config, arg)
