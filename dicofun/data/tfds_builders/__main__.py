r"""Prepares one category as a TFDS dataset, for ``config.dataset.source=tfds``.

Usage::

  python -m dicofun.data.tfds_builders --builder=mvtec_ad --category=bottle \
      --manual_dir=$DICOFUN_DATA/mvtec_ad --data_dir=$DICOFUN_DATA/tfds

``--manual_dir`` is the extracted download (see ``build_and_load``);
``--data_dir`` the ``config.dataset.tfds_data_dir`` runs then read (default
``$DICOFUN_DATA/tfds``). A category already prepared there is left as it is.
"""

from __future__ import annotations

from typing import Sequence

from absl import app
from absl import flags
from absl import logging

from dicofun import data as data_lib
from dicofun.data import tfds_builders

_BUILDER = flags.DEFINE_enum("builder", "mvtec_ad",
                             sorted(tfds_builders.BUILDERS), "TFDS builder.")
_CATEGORY = flags.DEFINE_string("category", None, "Category (builder config).",
                                required=True)
_MANUAL_DIR = flags.DEFINE_string("manual_dir", None,
                                  "The extracted download.", required=True)
_DATA_DIR = flags.DEFINE_string(
    "data_dir", None, "TFDS data directory (default $DICOFUN_DATA/tfds).")


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {list(argv[1:])}")
  data_dir = _DATA_DIR.value or data_lib.default_tfds_data_dir()
  splits = tfds_builders.build_and_load(
      _BUILDER.value, _CATEGORY.value, manual_dir=_MANUAL_DIR.value,
      data_dir=data_dir)
  logging.info("%s/%s in %s: %s", _BUILDER.value, _CATEGORY.value, data_dir,
               {k: len(v) for k, v in splits.items()})


if __name__ == "__main__":
  app.run(main)
