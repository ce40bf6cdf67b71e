r"""Trains and evaluates one dicofun run (the same as ``dicofun run``).

Usage:
  python experiments/main.py --config=configs/patchcore_synthetic.py \
      --workdir=/tmp/dicofun/patchcore_synthetic
  python experiments/main.py --config=configs/funad_visa.py:category=candle

Config arguments follow the colon (``key=value`` pairs separated by commas,
unknown keys are an error); any field can also be overridden with
``--config.dataset.root=/path`` style flags.
"""

import sys

from dicofun import cpu

cpu.configure_cpu_devices()  # Before anything imports jax.

from dicofun import cli  # pylint: disable=g-import-not-at-top,wrong-import-position

if __name__ == "__main__":
  cli.main([sys.argv[0], "run", *sys.argv[1:]])
