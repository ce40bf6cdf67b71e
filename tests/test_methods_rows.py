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


def test_merge_keeps_other_cells_and_replaces_remeasured_ones():
  rows = _rows()
  old = [{"method": "dico", "args": "cpu", "contamination": 0.0, "v": 1},
         {"method": "dico", "args": "cpu,k_masks=2", "contamination": 0.0,
          "v": 2},
         {"method": "patchcore", "args": "", "contamination": 0.2, "v": 3}]
  new = [{"method": "patchcore", "args": "", "contamination": 0.2, "v": 4},
         {"method": "dico", "args": "cpu", "contamination": 0.2, "v": 5}]
  got = rows.merge_rows(old, new)
  assert [r["v"] for r in got] == [1, 2, 4, 5]
  assert rows.merge_rows([], new) == new
