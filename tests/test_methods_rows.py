"""_rows.py: a methods.py row's training images/s from the run's telemetry."""

import importlib.util
import os

from dicofun import summary

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _rows():
  spec = importlib.util.spec_from_file_location(
      "bench_rows", os.path.join(_REPO, "benchmarks", "_rows.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def test_images_per_s_is_the_median_after_the_compiling_epoch(tmp_path):
  rows = _rows()
  cell = str(tmp_path / "cell")
  writer = summary.SummaryWriter(os.path.join(cell, summary.TENSORBOARD_DIR))
  for step, v in enumerate([1.0, 4.0, 9.0, 5.0], start=1):
    writer.scalar("speed/images_per_second", v, step)
  writer.close()
  # Epoch 1 (compilation, 1.0) is left out: median of 4, 9, 5.
  assert rows.tensorboard_images_per_s(cell) == 5.0
  assert rows.tensorboard_images_per_s(str(tmp_path / "none")) is None
