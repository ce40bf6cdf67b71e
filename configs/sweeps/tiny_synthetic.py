r"""A 2×2 smoke-test sweep: PatchCore coreset fraction × contamination.

The smallest synthetic run (``runlocal``: 30 train, 10 + 10 test images) at
64×64, over coreset ∈ {0.1, 0.5} × contamination ∈ {0, 0.1}. Used by
``tests/test_sweep.py``; a few minutes on a laptop CPU.

Run:
  python experiments/sweep.py --sweep=configs/sweeps/tiny_synthetic.py \
      --workdir=runs/sweeps/tiny_synthetic

Args: none.
"""

import ml_collections

from dicofun import configlib


def get_sweep(arg=None):
  configlib.parse_arg(arg)  # No args: refuse any.
  return ml_collections.ConfigDict(dict(
      base="configs/patchcore_synthetic.py:runlocal,image_size=64",
      axes=dict(coreset=[0.1, 0.5], contamination=[0.0, 0.1]),
      rows="coreset",
      cols="contamination",
      metric="test.image_auroc",
  ))
