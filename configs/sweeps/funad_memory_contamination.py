r"""FUN-AD ablation: memory-bank size ρ × training-set contamination.

ρ ∈ {0.1, 0.25, 0.5, 0.75, 1.0} (METHODS §2, default 0.5) against the
contamination ratio {0, 0.05, 0.1, 0.2} (METHODS §4): 20 runs, each an ordinary
``configs/funad_<dataset>.py`` run.

Run:
  python experiments/sweep.py \
      --sweep=configs/sweeps/funad_memory_contamination.py:dataset=mvtec,category=bottle \
      --workdir=runs/sweeps/funad_memory_contamination_bottle

Args: dataset (synthetic|mvtec|visa|magnetic_tile|elpv), category (default: the
dataset's), runlocal (every cell at its config's CPU smoke size),
image_size (0 = the config's), epochs (0 = the preset's; image_size and
epochs set the budget, the same for every cell).
"""

import ml_collections

from dicofun import configlib


def get_sweep(arg=None):
  a = configlib.parse_arg(arg, dataset="synthetic", category="",
                          runlocal=False, image_size=0, epochs=0)
  category = a.category or configlib.dataset_defaults(a.dataset)["category"]
  base_arg = f"category={category}" + (",runlocal" if a.runlocal else "")
  # The same budget for every cell.
  base_arg += f",image_size={a.image_size}" if a.image_size else ""
  base_arg += f",epochs={a.epochs}" if a.epochs else ""
  return ml_collections.ConfigDict(dict(
      base=f"configs/funad_{a.dataset}.py:{base_arg}",
      axes=dict(rho=[0.1, 0.25, 0.5, 0.75, 1.0],
                contamination=[0.0, 0.05, 0.1, 0.2]),
      rows="rho",
      cols="contamination",
      metric=("test.image_auroc", "test.pixel_auroc",
              "transductive.image_auroc"),
  ))
