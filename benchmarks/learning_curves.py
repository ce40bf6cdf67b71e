r"""Learning curves of finished runs as PNGs (for BENCHMARKS.md).

Reads the training history in each run directory's ``results.json`` (every
trained method keeps one row per epoch: losses, pseudo-label or gate
statistics, and the evaluation values of evaluated epochs) and draws it with
``dicofun.viz.save_learning_curve`` into ``--out/<run>.png``, the figure a run
writes itself as ``learning_curve.png`` (runs older than that figure get one
here). Prints a markdown list of the figures with each run's last epoch.

  python benchmarks/learning_curves.py --out=benchmarks/figures \
      /work/bench_mt/funad_preset-default_contamination-0.1
"""

import json
import os

from absl import app
from absl import flags

from dicofun import viz

_OUT = flags.DEFINE_string("out", "benchmarks/figures", "Output folder.")
_PREFIX = flags.DEFINE_string("prefix", "", "Prefix of the PNG names.")


def main(argv):
  os.makedirs(_OUT.value, exist_ok=True)
  for run_dir in argv[1:]:
    path = os.path.join(run_dir, "results.json")
    with open(path) as f:
      res = json.load(f)
    history = res.get("extra", {}).get("history") or []
    name = _PREFIX.value + os.path.basename(os.path.normpath(run_dir))
    png = os.path.join(_OUT.value, name + ".png")
    if not viz.save_learning_curve(png, history, title=name):
      print(f"- {name}: no history in {path}")
      continue
    last = history[-1]
    shown = {k: round(v, 4) for k, v in last.items()
             if k.endswith("_auroc") and isinstance(v, float)}
    x_key = viz.curve_x(history)
    print(f"- [{name}]({os.path.relpath(png, 'benchmarks')}): "
          f"last {x_key} {last.get(x_key)} {shown}")


if __name__ == "__main__":
  app.run(main)
