r"""Scores a folder of new images with a trained run (``dicofun predict``).

Usage:
  python experiments/predict.py --workdir=runs/patchcore_synthetic \
      --images=/path/to/new/images [--out=DIR] [--threshold=0.7]

Reads the run's inference checkpoint (``<workdir>/model``; the training data
is not needed), scores every image under ``--images`` (recursively) and
writes ``scores.csv`` (file, score, decision, threshold), one overlay PNG per
image and, with ``--save_maps``, ``maps.npy`` to ``--out`` (default
``<workdir>/predictions``).
"""

import sys

from dicofun import cpu

cpu.configure_cpu_devices()  # Before anything imports jax.

from dicofun import cli  # pylint: disable=g-import-not-at-top,wrong-import-position

if __name__ == "__main__":
  cli.main([sys.argv[0], "predict", *sys.argv[1:]])
