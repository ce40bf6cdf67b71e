"""Trains and evaluates one dicofun run.

Usage:
  python experiments/main.py --config=configs/patchcore_synthetic.py \
      --workdir=/tmp/dicofun/patchcore_synthetic
  python experiments/main.py --config=configs/funad_visa.py:category=candle

Config arguments follow the colon (``key=value`` pairs separated by commas,
unknown keys are an error); any field can also be overridden with
``--config.dataset.root=/path`` style flags.
"""

import os
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

# Allow running from a source checkout without installing.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dicofun import cpu  # pylint: disable=g-import-not-at-top,wrong-import-position
cpu.configure_cpu_devices()  # Before anything imports jax.

from dicofun import train  # pylint: disable=g-import-not-at-top,wrong-import-position
from dicofun.data import errors  # pylint: disable=g-import-not-at-top,wrong-import-position

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file (configs/<method>_<dataset>.py[:args]).",
    lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None,
    "Output directory (default: runs/<config name>[_<args>]).")


def _default_workdir(config_flag_value: str) -> str:
  path, _, arg = config_flag_value.partition(":")
  name = os.path.splitext(os.path.basename(path))[0]
  if arg:
    name += "_" + arg.replace(",", "_").replace("=", "-").replace("/", "-")
  return os.path.join("runs", name)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  config = _CONFIG.value
  if config is None:
    raise app.UsageError("--config is required, e.g. "
                         "--config=configs/patchcore_synthetic.py")
  workdir = _WORKDIR.value or _default_workdir(flags.FLAGS["config"].serialize()
                                               .split("=", 1)[1])
  logging.info("Workdir: %s", workdir)
  try:
    metrics = train.train_and_evaluate(config, workdir)
  except (errors.DatasetError, train.UnknownMethodError) as e:
    # Bad input, not a bug: say what is wrong without a traceback.
    logging.error("%s", e)
    sys.exit(f"error: {e}")
  # The table is the run's headline output; a person reads it on stdout.
  print(train.metrics_table(metrics, title=f"{config.method} — {workdir}"))


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  app.run(main)
