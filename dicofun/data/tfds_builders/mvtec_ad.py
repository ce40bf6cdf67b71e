"""TFDS builder for MVTec AD (and other datasets in its folder layout).

Registered as ``mvtec_ad`` when imported; one config per category. The data
is never downloaded by TFDS: ``manual_dir`` is the user's extracted MVTec AD
folder (the one holding ``bottle/``, ``cable/``, ...), read with
``dicofun.data.mvtec.read_mvtec``. Besides the 15 official categories, the
configs ``magnetic_tile`` and the synthetic ``texture``/``object``
(``dicofun.data.synthetic``) exist **(ours)**; any other MVTec-layout category
can be built by passing ``MvtecAdConfig(name=...)`` as ``config`` (see
``dicofun.data.tfds_builders.build_and_load``). When
``manual_dir/<category>`` does not exist but ``manual_dir`` itself holds
``train/`` and ``test/``, ``manual_dir`` is taken as the category folder (how
magnetic tile is usually stored).

Features and encoding: see ``dicofun.data.tfds_builders._common``. Building
and reading need no TensorFlow.
"""

from __future__ import annotations

import os

import tensorflow_datasets as tfds

from dicofun.data import mvtec
from dicofun.data import synthetic
from dicofun.data.tfds_builders import _common

CATEGORIES = ("bottle", "cable", "capsule", "carpet", "grid", "hazelnut",
              "leather", "metal_nut", "pill", "screw", "tile", "toothbrush",
              "transistor", "wood", "zipper")
EXTRA_CATEGORIES = ("magnetic_tile",) + synthetic.CATEGORIES

_HOMEPAGE = "https://www.mvtec.com/company/research/datasets/mvtec-ad"
_CITATION = """\
@inproceedings{bergmann2019mvtec,
  title     = {{MVTec AD} -- A Comprehensive Real-World Dataset for
               Unsupervised Anomaly Detection},
  author    = {Bergmann, Paul and Fauser, Michael and Sattlegger, David and
               Steger, Carsten},
  booktitle = {IEEE/CVF Conference on Computer Vision and Pattern
               Recognition (CVPR)},
  year      = {2019},
}
"""


class MvtecAdConfig(tfds.core.BuilderConfig):
  """One category; ``name`` is the category's folder name."""


class MvtecAd(_common.ArrayRecordByDefault,
              tfds.core.GeneratorBasedBuilder):
  """MVTec AD: 15 industrial categories, normal training images only."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS = [
      MvtecAdConfig(name=c, description=f"MVTec AD category {c}.")
      for c in CATEGORIES
  ] + [
      MvtecAdConfig(name=c, description=f"MVTec-layout category {c} (not "
                    "part of MVTec AD).")
      for c in EXTRA_CATEGORIES
  ]
  MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
  Download MVTec AD from {_HOMEPAGE}
  (licence: CC BY-NC-SA 4.0), extract it, and pass the extracted folder (the
  one holding bottle/, cable/, ...) as manual_dir. Each category folder holds
  train/good/, test/<defect>/ and ground_truth/<defect>/<stem>_mask.png.
  """

  def _info(self) -> tfds.core.DatasetInfo:
    # DatasetInfo is built directly (not from metadata files) because
    # the builders live in a package without per-dataset folders.
    return tfds.core.DatasetInfo(
        builder=self,
        description=("MVTec AD anomaly detection images with pixel masks. "
                     "label: 0 normal / 1 anomalous; mask: 0/255, all zero "
                     "for normal images."),
        features=_common.features(image_format="png"),
        homepage=_HOMEPAGE,
        citation=_CITATION,
    )

  def _category_dir(self, manual_dir: str) -> str:
    name = self.builder_config.name
    candidate = os.path.join(manual_dir, name)
    if os.path.isdir(candidate):
      return candidate
    if os.path.isdir(os.path.join(manual_dir, "train")):
      return manual_dir
    return candidate  # read_mvtec raises a helpful error for it.

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    category_dir = self._category_dir(os.fspath(dl_manager.manual_dir))
    records = mvtec.read_mvtec(category_dir,
                               category=self.builder_config.name)
    return {split: self._generate_examples(rs, category_dir)
            for split, rs in _common.by_split(records).items()}

  def _generate_examples(self, records, root):
    return _common.generate_examples(records, root=root, image_format="png")
