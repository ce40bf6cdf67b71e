"""TensorFlow Datasets builders for MVTec AD and VisA (no TensorFlow needed).

Importing this package registers ``mvtec_ad`` and ``visa`` with TFDS, so
``tfds.data_source("mvtec_ad/bottle", data_dir=..., download_and_prepare_kwargs=
{"download_config": tfds.download.DownloadConfig(manual_dir=...)})`` works
after ``import dicofun.data.tfds_builders``. ``build_and_load`` does the same
in one call and also accepts MVTec-layout categories that have no predefined
config.

Examples hold ``image`` uint8 (H, W, 3), ``mask`` uint8 (H, W, 1) with values
0/255 (all zero for normal images), ``label`` (0 normal, 1 anomalous),
``defect`` and ``filename`` (``bytes``; the image path relative to the
category folder for MVTec AD, to the VisA root for VisA). Files are written in
the ``array_record`` format, which ``tfds.data_source`` reads by random access
without TensorFlow. This package imports ``tensorflow_datasets`` (heavy), so
nothing else in ``dicofun`` imports it at module level.

``python -m dicofun.data.tfds_builders --builder=mvtec_ad --category=bottle
--manual_dir=DIR --data_dir=DIR`` prepares one category; runs with
``config.dataset.source="tfds"`` then read it (``dicofun.data.tfds_source``).
"""

from __future__ import annotations

import os
from typing import Any, Union

import tensorflow_datasets as tfds

from dicofun.data.tfds_builders import _common
from dicofun.data.tfds_builders import mvtec_ad
from dicofun.data.tfds_builders import visa

MvtecAd = mvtec_ad.MvtecAd
MvtecAdConfig = mvtec_ad.MvtecAdConfig
Visa = visa.Visa
VisaConfig = visa.VisaConfig
FILE_FORMAT = _common.FILE_FORMAT

BUILDERS = {"mvtec_ad": MvtecAd, "visa": Visa}


def make_builder(name: str, config: Union[str, tfds.core.BuilderConfig], *,
                 data_dir: str) -> tfds.core.DatasetBuilder:
  """A builder of ``name`` ("mvtec_ad" or "visa") for one category.

  Args:
    name: builder name, a key of ``BUILDERS``.
    config: category name or a BuilderConfig. For "mvtec_ad" a name without a
      predefined config becomes ``MvtecAdConfig(name=config)`` **(ours)**, so
      any MVTec-layout category folder can be built.
    data_dir: where TFDS writes (and later finds) the prepared data.

  Returns:
    The builder, writing ``array_record`` files.

  Raises:
    ValueError: unknown builder, or an unknown VisA category.
  """
  if name not in BUILDERS:
    raise ValueError(f"unknown dataset builder {name!r}; known: "
                     f"{sorted(BUILDERS)}")
  cls = BUILDERS[name]
  if isinstance(config, str) and config not in cls.builder_configs:
    if cls is not MvtecAd:
      raise ValueError(f"unknown {name} category {config!r}; known: "
                       f"{sorted(cls.builder_configs)}")
    config = MvtecAdConfig(name=config,
                           description=f"MVTec-layout category {config}.")
  return cls(config=config, data_dir=os.fspath(data_dir),
             file_format=FILE_FORMAT)


def build_and_load(name: str, config: Union[str, tfds.core.BuilderConfig], *,
                   manual_dir: str, data_dir: str) -> dict[str, Any]:
  """Prepares one category (once) and returns its random-access splits.

  Args:
    name: "mvtec_ad" or "visa".
    config: the category (see ``make_builder``).
    manual_dir: the user's extracted download (MVTec AD: the folder holding
      the category folders, or a category folder itself; VisA: the folder
      holding ``split_csv/``).
    data_dir: TFDS data directory; a prepared category there is reused.

  Returns:
    ``{"train": source, "test": source}``: ``tfds`` array_record data sources
    (``len(source)``, ``source[i]`` -> dict of numpy arrays / bytes; the
    order is TFDS's, not the folder's; use ``filename`` to identify images).
  """
  builder = make_builder(name, config, data_dir=data_dir)
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(
          manual_dir=os.fspath(manual_dir), try_download_gcs=False),
      file_format=FILE_FORMAT)
  return dict(builder.as_data_source())
