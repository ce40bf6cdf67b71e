r"""PatchCore on the generated synthetic texture dataset (METHODS §3).

The embedded procedural dataset, generated into <workdir>/data (nothing to
download).

Run::

  python experiments/main.py \
      --config=configs/patchcore_synthetic.py:contamination=0.1 \
      --workdir=runs/patchcore_synthetic
  # CPU smoke run:
  python experiments/main.py \
      --config=configs/patchcore_synthetic.py:runlocal,contamination=0.1 \
      --workdir=runs/patchcore_synthetic_local

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
      dataset="synthetic", backbone="efficientnet_lite0", image_size=224)
  if configlib.flag_in(arg, "runlocal"):  # CPU smoke size.
    config.dataset.synthetic.update(num_train=30, num_test_good=10,
                                    num_test_anomalous=10)
  return patchcore_config.apply_args(config, arg)
