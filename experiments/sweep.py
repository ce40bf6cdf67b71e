r"""Runs a parameter sweep: one ordinary run per grid cell, then a summary.

Usage:
  python experiments/sweep.py --sweep=configs/sweeps/tiny_synthetic.py \
      --workdir=runs/sweeps/tiny_synthetic
  python experiments/sweep.py \
      --sweep=configs/sweeps/funad_memory_contamination.py:dataset=mvtec,category=bottle

Every cell runs ``experiments/main.py`` in its own process and directory
(``<workdir>/<axis=value,...>``). Running the same command again skips
finished cells and resumes interrupted ones. ``--dry_run`` validates every
cell's config and lists the commands without running them. The summary lands
in ``<workdir>/sweep_results.{csv,md}`` and ``heatmap_*.png``.
"""

import os
import sys

from absl import app
from absl import flags
from absl import logging

# Allow running from a source checkout without installing.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dicofun import cpu  # pylint: disable=g-import-not-at-top,wrong-import-position
cpu.configure_cpu_devices()  # Before anything imports jax.

from dicofun import sweep as sweep_lib  # pylint: disable=g-import-not-at-top,wrong-import-position

_SWEEP = flags.DEFINE_string(
    "sweep", None, "Sweep config: configs/sweeps/<name>.py[:args].")
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Sweep directory (default: runs/sweeps/<name>[_<args>]).")
_ONLY_CELLS = flags.DEFINE_integer(
    "only_cells", None, "Run at most this many pending cells, then stop.")
_DRY_RUN = flags.DEFINE_bool(
    "dry_run", False, "Validate the cells and list their commands only.")


def default_workdir(spec: str) -> str:
  path, _, arg = spec.partition(":")
  name = os.path.splitext(os.path.basename(path))[0]
  if arg:
    name += "_" + arg.replace(",", "_").replace("=", "-").replace("/", "-")
  return os.path.join("runs", "sweeps", name)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  spec = _SWEEP.value
  workdir = _WORKDIR.value or default_workdir(spec)
  name = os.path.basename(os.path.normpath(workdir))
  logging.info("Sweep %s → %s", spec, workdir)
  sweep = sweep_lib.load_sweep(spec)
  outcome = sweep_lib.run_sweep(sweep, workdir, only_cells=_ONLY_CELLS.value,
                                dry_run=_DRY_RUN.value, name=name)
  if _DRY_RUN.value:  # run_sweep has logged the plan.
    return 0
  md = os.path.join(workdir, sweep_lib.MD_NAME)
  with open(md) as f:
    print(f.read())
  print(f"ran {len(outcome.ran)}, skipped {len(outcome.skipped)} finished, "
        f"failed {len(outcome.failed)}, pending {len(outcome.pending)}")
  if outcome.failed:
    print("failed cells (see <cell>/sweep_cell.log): "
          + "; ".join(outcome.failed), file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  flags.mark_flags_as_required(["sweep"])
  app.run(main)
