r"""Scores a folder of new images with a trained run.

Usage:
  python experiments/main.py --config=configs/patchcore_synthetic.py \
      --workdir=runs/patchcore_synthetic
  python experiments/predict.py --workdir=runs/patchcore_synthetic \
      --images=/path/to/new/images [--out=DIR] [--threshold=0.7]

Reads the run's inference checkpoint (``<workdir>/model``; the training data
is not needed), scores every image under ``--images`` (recursively) and
writes ``scores.csv`` (file, score, decision, threshold), one overlay PNG per
image and, with ``--save_maps``, ``maps.npy`` to ``--out`` (default
``<workdir>/predictions``).
"""

import os
import sys

from absl import app
from absl import flags

# Allow running from a source checkout without installing.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dicofun import cpu  # pylint: disable=g-import-not-at-top,wrong-import-position
cpu.configure_cpu_devices()  # Before anything imports jax.

from dicofun import predict  # pylint: disable=g-import-not-at-top,wrong-import-position

_WORKDIR = flags.DEFINE_string(
    "workdir", None, "A finished run's workdir (holds the model checkpoint).")
_IMAGES = flags.DEFINE_string(
    "images", None, "Folder of images to score (searched recursively).")
_OUT = flags.DEFINE_string(
    "out", None, "Output folder (default: <workdir>/predictions).")
_THRESHOLD = flags.DEFINE_float(
    "threshold", None, "Decision threshold (default: the run's own).")
_OVERLAYS = flags.DEFINE_bool(
    "overlays", True, "Write one overlay PNG per image.")
_SAVE_MAPS = flags.DEFINE_bool(
    "save_maps", False, "Keep maps.npy: the (n, S, S) float32 anomaly maps.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  outcome = predict.predict_folder(
      _WORKDIR.value, _IMAGES.value, out_dir=_OUT.value,
      threshold=_THRESHOLD.value, overlays=_OVERLAYS.value,
      keep_maps=_SAVE_MAPS.value)
  # The summary is the command's headline output; a person reads it.
  print(f"{int(outcome.decisions.sum())}/{len(outcome.files)} images above "
        f"threshold {outcome.threshold:.6g}; scores in {outcome.csv_path}")


if __name__ == "__main__":
  flags.mark_flags_as_required(["workdir", "images"])
  app.run(main)
