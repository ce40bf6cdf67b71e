"""TFDS builder for VisA (Zou et al., 2022), one-class split.

Registered as ``visa`` when imported; one config per category. ``manual_dir``
is the user's extracted VisA folder (holding ``split_csv/1cls.csv`` and the
category folders), read with ``dicofun.data.visa.read_visa``. VisA's images
are JPEGs and are stored unchanged; masks are stored as 0/255 PNGs (VisA's
per-region ids become 255). Anomalous examples have defect "anomaly" (the
one-class split has no defect types).

Features and encoding: see ``dicofun.data.tfds_builders._common``. Building
and reading need no TensorFlow.
"""

from __future__ import annotations

import os

import tensorflow_datasets as tfds

from dicofun.data import visa
from dicofun.data.tfds_builders import _common

CATEGORIES = ("candle", "capsules", "cashew", "chewinggum", "fryum",
              "macaroni1", "macaroni2", "pcb1", "pcb2", "pcb3", "pcb4",
              "pipe_fryum")

_HOMEPAGE = "https://github.com/amazon-science/spot-diff"
_CITATION = """\
@inproceedings{zou2022spot,
  title     = {{SPot-the-Difference} Self-supervised Pre-training for Anomaly
               Detection and Segmentation},
  author    = {Zou, Yang and Jeong, Jongheon and Pemula, Latha and Zhang,
               Dongqing and Dabeer, Onkar},
  booktitle = {European Conference on Computer Vision (ECCV)},
  year      = {2022},
}
"""


class VisaConfig(tfds.core.BuilderConfig):
  """One VisA category; ``name`` is the category as written in 1cls.csv."""


class Visa(_common.ArrayRecordByDefault,
           tfds.core.GeneratorBasedBuilder):
  """VisA: 12 categories, one-class split (split_csv/1cls.csv)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS = [VisaConfig(name=c, description=f"VisA category {c}.")
                     for c in CATEGORIES]
  MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
  Download VisA from {_HOMEPAGE} (VisA_20220922.tar), extract it and pass the
  extracted folder as manual_dir. It must hold split_csv/1cls.csv and the
  category folders (candle/Data/Images/..., candle/Data/Masks/...).
  """

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=("VisA anomaly detection images with pixel masks, "
                     "one-class split. label: 0 normal / 1 anomalous; mask: "
                     "0/255, all zero for normal images."),
        features=_common.features(image_format="jpeg"),
        homepage=_HOMEPAGE,
        citation=_CITATION,
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    root = os.path.abspath(os.fspath(dl_manager.manual_dir))
    records = visa.read_visa(root, self.builder_config.name)
    return {split: self._generate_examples(rs, root)
            for split, rs in _common.by_split(records).items()}

  def _generate_examples(self, records, root):
    return _common.generate_examples(records, root=root, image_format="jpeg")
