r"""PatchCore vs SoftPatch as the training set gets contaminated.

The ``config`` axis swaps the run config file (one row per method); the
contamination ratio {0, 0.05, 0.1, 0.2} (METHODS §4) is the other axis:
8 runs.

Run:
  python experiments/sweep.py \
      --sweep=configs/sweeps/patchcore_softpatch_contamination.py:dataset=mvtec,category=bottle \
      --workdir=runs/sweeps/patchcore_softpatch_contamination_bottle

Args: dataset (synthetic|mvtec|visa|magnetic_tile|elpv), category (default: the
dataset's), runlocal (every cell at its config's CPU smoke size).
"""

import ml_collections

from dicofun import configlib


def get_sweep(arg=None):
  a = configlib.parse_arg(arg, dataset="synthetic", category="",
                          runlocal=False)
  category = a.category or configlib.dataset_defaults(a.dataset)["category"]
  base_arg = f"category={category}" + (",runlocal" if a.runlocal else "")
  return ml_collections.ConfigDict(dict(
      base=f"configs/patchcore_{a.dataset}.py:{base_arg}",
      axes=dict(config=[f"configs/patchcore_{a.dataset}.py",
                        f"configs/softpatch_{a.dataset}.py"],
                contamination=[0.0, 0.05, 0.1, 0.2]),
      rows="config",
      cols="contamination",
      metric=("test.image_auroc", "test.pixel_auroc",
              "transductive.image_auroc"),
  ))
