"""Datasets: readers, protocols and the input pipeline (the lowest room).

``DATASETS`` is the registry of dataset names a config may use
(``config.dataset.name``): each entry says how to read the dataset's records
and which defaults its config files take. ``read_dataset`` dispatches on it.
To add a dataset, write a reader returning ``list[Record]`` (both splits) in
this package and add one ``DatasetSpec`` line here.

``SOURCES`` says where the records come from (``config.dataset.source``):
"folder" runs the dataset's reader over the downloaded folders; "tfds" reads
the dataset prepared once by ``dicofun.data.tfds_builders`` (its
``DatasetSpec.tfds_builder``) from ``config.dataset.tfds_data_dir``.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Callable

from dicofun.data import elpv
from dicofun.data import errors
from dicofun.data import folder
from dicofun.data import mvtec
from dicofun.data import records as records_lib
from dicofun.data import synthetic
from dicofun.data import tfds_source
from dicofun.data import visa

DATA_ENV = "DICOFUN_DATA"


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """One registered dataset.

  Attributes:
    read: ``(config.dataset, workdir) -> list[Record]`` of both splits.
    category: default category of the config files.
    crop_fraction: default centre-crop fraction of the config files.
    root_name: folder under ``$DICOFUN_DATA`` when ``config.dataset.root`` is
      empty ("" = the dataset has no default root).
    tfds_builder: the ``dicofun.data.tfds_builders`` builder that prepares
      it for ``source="tfds"`` (its config is the category; "" = none).
    masks: whether its anomalies have ground-truth masks; False makes the
      config files default to ``allow_missing_masks=True`` (image metrics
      only).
  """

  read: Callable[..., list[records_lib.Record]]
  category: str
  crop_fraction: float
  root_name: str = ""
  tfds_builder: str = ""
  masks: bool = True


def default_data_root(dataset: str) -> str:
  """``$DICOFUN_DATA/<root_name>`` (``~/data/<root_name>`` when unset)."""
  base = os.environ.get(DATA_ENV, os.path.join(os.path.expanduser("~"), "data"))
  return os.path.join(base, DATASETS[dataset].root_name or dataset)


def _root(ds) -> str:
  return ds.root or default_data_root(ds.name)


def _need_category(ds, what: str) -> str:
  if not ds.category:
    raise ValueError(f"config.dataset.category must name a {what} category")
  return ds.category


def _read_synthetic(ds, workdir: str) -> list[records_lib.Record]:
  root = ds.root or os.path.join(workdir, "data")
  s = ds.synthetic
  category = ds.category or "texture"
  category_dir = synthetic.generate(
      root, category=category, num_train=s.num_train,
      num_test_good=s.num_test_good, num_test_anomalous=s.num_test_anomalous,
      image_size=s.image_size, seed=s.seed)
  return mvtec.read_mvtec(category_dir, category=category)


def _read_mvtec(ds, workdir: str) -> list[records_lib.Record]:
  del workdir
  category = _need_category(ds, "MVTec AD")
  return mvtec.read_mvtec(os.path.join(_root(ds), category), category=category)


def _read_mvtec_layout(ds, workdir: str) -> list[records_lib.Record]:
  """Any category in the MVTec AD folder layout: ``<root>/<category>``.

  ``category`` may be a path below ``root`` (``mvtec_ad/screw``); the
  records carry it as their category name.
  """
  del workdir
  if not ds.root:
    raise errors.DatasetError(
        "config.dataset.root must name the folder that holds the category "
        "(dataset 'mvtec_layout' has no default root)")
  category = _need_category(ds, "MVTec-layout (a path below root)")
  return mvtec.read_mvtec(os.path.join(ds.root, category),
                          category=category.strip("/"))


def _read_magnetic_tile(ds, workdir: str) -> list[records_lib.Record]:
  del workdir
  return mvtec.read_mvtec(_root(ds), category="magnetic_tile")


def _read_visa(ds, workdir: str) -> list[records_lib.Record]:
  del workdir
  return visa.read_visa(_root(ds), _need_category(ds, "VisA"))


def _read_elpv(ds, workdir: str) -> list[records_lib.Record]:
  del workdir
  e = ds.elpv
  return elpv.read_elpv(
      ds.root, category=ds.category or "all",
      min_defect_probability=e.min_defect_probability,
      test_fraction=e.test_fraction, max_train_normals=e.max_train_normals,
      seed=ds.contamination_seed)


def _read_folder(ds, workdir: str) -> list[records_lib.Record]:
  del workdir
  f = ds.folder
  if not f.normal_dir:
    raise ValueError("config.dataset.folder.normal_dir must be set for the "
                     "folder dataset")
  return folder.read_folder(
      f.normal_dir, abnormal_dir=f.abnormal_dir or None,
      mask_dir=f.mask_dir or None, test_fraction=f.test_fraction,
      seed=ds.contamination_seed, category=ds.category or "custom")


DATASETS: dict[str, DatasetSpec] = {
    "synthetic": DatasetSpec(_read_synthetic, "texture", 1.0,
                             tfds_builder="mvtec_ad"),
    "mvtec": DatasetSpec(_read_mvtec, "bottle", 0.875, "mvtec_ad",
                         tfds_builder="mvtec_ad"),
    # Any folder in the MVTec layout, named by root + category path; no
    # crop by default: an unknown category's defects may sit at the border
    # (benchmarks/crop_coverage.py measures what a crop keeps).
    "mvtec_layout": DatasetSpec(_read_mvtec_layout, "", 1.0),
    "visa": DatasetSpec(_read_visa, "candle", 0.875, "visa",
                        tfds_builder="visa"),
    # Magnetic tile images are elongated with defects near the edges: the
    # 0.875 centre crop would cut whole defects out (METHODS §1).
    "magnetic_tile": DatasetSpec(_read_magnetic_tile, "magnetic_tile", 1.0,
                                 "magnetic_tile", tfds_builder="mvtec_ad"),
    # ELPV ships as the elpv-dataset package (no root, no masks); the cells
    # fill the whole 300×300 image, so no crop.
    "elpv": DatasetSpec(_read_elpv, "all", 1.0, masks=False),
    "folder": DatasetSpec(_read_folder, "custom", 1.0),
}


class UnknownDatasetError(errors.DatasetError):
  """``config.dataset.name`` names no registered dataset."""


def get_dataset(name: str) -> DatasetSpec:
  """The registered dataset ``name`` (a clear error for an unknown one)."""
  if name not in DATASETS:
    raise UnknownDatasetError(
        f"config.dataset.name={name!r} is not a dicofun dataset; known "
        f"datasets: {sorted(DATASETS)}")
  return DATASETS[name]


def default_tfds_data_dir() -> str:
  """``$DICOFUN_DATA/tfds`` (``~/data/tfds`` when unset)."""
  base = os.environ.get(DATA_ENV, os.path.join(os.path.expanduser("~"), "data"))
  return os.path.join(base, "tfds")


def _from_folders(spec: DatasetSpec, ds, workdir: str
                  ) -> list[records_lib.Record]:
  return spec.read(ds, workdir)


def _from_tfds(spec: DatasetSpec, ds, workdir: str
               ) -> list[records_lib.Record]:
  del workdir
  if not spec.tfds_builder:
    raise errors.DatasetError(
        f"config.dataset.source='tfds': dataset {ds.name!r} has no TFDS "
        f"builder; datasets with one: "
        f"{sorted(n for n, s in DATASETS.items() if s.tfds_builder)}")
  category = ds.category or spec.category
  return tfds_source.read_records(
      spec.tfds_builder, category,
      data_dir=ds.tfds_data_dir or default_tfds_data_dir(), category=category)


# config.dataset.source → (spec, config.dataset, workdir) -> records.
SOURCES: dict[str, Callable[..., list[records_lib.Record]]] = {
    "folder": _from_folders,
    "tfds": _from_tfds,
}


def read_dataset(ds, workdir: str) -> list[records_lib.Record]:
  """All records (both splits) of the dataset described by ``config.dataset``."""
  spec = get_dataset(ds.name)
  if ds.source not in SOURCES:
    raise errors.DatasetError(
        f"config.dataset.source={ds.source!r} is not one of "
        f"{sorted(SOURCES)}")
  return SOURCES[ds.source](spec, ds, workdir)
