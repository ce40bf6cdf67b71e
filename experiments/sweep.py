r"""Runs a parameter sweep (``dicofun sweep``): one run per cell, then a summary.

Usage:
  python experiments/sweep.py --sweep=configs/sweeps/tiny_synthetic.py \
      --workdir=runs/sweeps/tiny_synthetic
  python experiments/sweep.py \
      --sweep=configs/sweeps/funad_memory_contamination.py:dataset=mvtec,category=bottle

Every cell runs ``dicofun run`` in its own process and directory
(``<workdir>/<axis=value,...>``). Running the same command again skips
finished cells and resumes interrupted ones. ``--dry_run`` validates every
cell's config and lists the commands without running them. The summary lands
in ``<workdir>/sweep_results.{csv,md}`` and ``heatmap_*.png``.
"""

import sys

from dicofun import cpu

cpu.configure_cpu_devices()  # Before anything imports jax.

from dicofun import cli  # pylint: disable=g-import-not-at-top,wrong-import-position

if __name__ == "__main__":
  cli.main([sys.argv[0], "sweep", *sys.argv[1:]])
