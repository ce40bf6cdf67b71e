r"""DiCo ablation: number of memory items N × training-set contamination.

N ∈ {0, 10, 50, 200} (METHODS §5; N = 0 disables the memory, default 50)
against the contamination ratio {0, 0.05, 0.1, 0.2} (METHODS §4): 16 runs,
each an ordinary ``configs/dico_<dataset>.py`` run.

Run:
  python experiments/sweep.py \
      --sweep=configs/sweeps/dico_memory_contamination.py:dataset=mvtec,category=bottle \
      --workdir=runs/sweeps/dico_memory_contamination_bottle

Args: dataset (synthetic|mvtec|visa|magnetic_tile|elpv), category (default: the
dataset's), runlocal (every cell at its config's CPU smoke size),
image_size (0 = the config's), epochs (0 = the config's; given, the budget
counts epochs), steps (0 = the config's: the ``cpu`` preset's budget in
optimiser steps), cpu (the ``cpu`` preset; image_size, epochs, steps and cpu
set the budget, the same for every cell),
memory (the N axis, ``+``-separated), contamination (the other axis; the
defaults give the 4 × 4 grid above).

Issue 14's 3 × 2 table at a small budget::

  dicofun sweep \
      --sweep=configs/sweeps/dico_memory_contamination.py:dataset=magnetic_tile,cpu,image_size=128,epochs=8,memory=0+50+200,contamination=0+0.2 \
      --workdir=runs/sweeps/dico_mc_mt
"""

import ml_collections

from dicofun import configlib


def get_sweep(arg=None):
  a = configlib.parse_arg(arg, dataset="synthetic", category="",
                          runlocal=False, image_size=0, epochs=0, steps=0,
                          cpu=False,
                          memory=(0, 10, 50, 200),
                          contamination=(0.0, 0.05, 0.1, 0.2))
  category = a.category or configlib.dataset_defaults(a.dataset)["category"]
  base_arg = f"category={category}" + (",runlocal" if a.runlocal else "")
  base_arg += ",cpu" if a.cpu else ""
  # The same budget for every cell.
  base_arg += f",image_size={a.image_size}" if a.image_size else ""
  base_arg += f",epochs={a.epochs}" if a.epochs else ""
  base_arg += f",steps={a.steps}" if a.steps else ""
  return ml_collections.ConfigDict(dict(
      base=f"configs/dico_{a.dataset}.py:{base_arg}",
      axes=dict(memory=[int(n) for n in a.memory],
                contamination=[float(c) for c in a.contamination]),
      rows="memory",
      cols="contamination",
      # last.*: the last round's gate median and items used (of N): does the
      # memory do anything (issue 14)?
      metric=("test.image_auroc", "test.aupro", "transductive.image_auroc",
              "last.gate_p50", "last.items_used"),
  ))
