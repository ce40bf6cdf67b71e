"""Config helpers: strict parsing of config-file arguments and shared defaults.

Config files in ``configs/`` define ``get_config(arg=None)``; ``arg`` is the
string after the colon in ``--config=configs/x.py:category=bottle,runlocal``.
``parse_arg`` turns it into typed values, refusing unknown keys, so a typo never
silently runs the default experiment.
"""

from __future__ import annotations

import ast
from typing import Any, Optional

import ml_collections

# Datasets known to the runner (dicofun.train). The category default is the
# dataset's own when the dataset has a single category.
DATASETS = ("synthetic", "mvtec", "visa", "magnetic_tile", "folder")


class ConfigArgError(ValueError):
  """A config argument string that cannot be parsed or names an unknown key."""


def _coerce(key: str, raw: str, default: Any) -> Any:
  """Converts ``raw`` to the type of ``default``."""
  if isinstance(default, bool):
    low = raw.lower()
    if low in ("1", "true", "yes", "on", ""):
      return True
    if low in ("0", "false", "no", "off"):
      return False
    raise ConfigArgError(f"config arg {key!r}: expected a boolean, got {raw!r}")
  if isinstance(default, int):
    try:
      return int(raw)
    except ValueError:
      raise ConfigArgError(
          f"config arg {key!r}: expected an integer, got {raw!r}") from None
  if isinstance(default, float):
    try:
      return float(raw)
    except ValueError:
      raise ConfigArgError(
          f"config arg {key!r}: expected a number, got {raw!r}") from None
  if isinstance(default, tuple):
    parts = [p for p in raw.replace("+", " ").split()]
    elem = default[0] if default else ""
    return tuple(_coerce(key, p, elem) for p in parts)
  if default is None:
    try:
      return ast.literal_eval(raw)
    except (ValueError, SyntaxError):
      return raw
  return raw


def parse_arg(arg: Optional[str], **defaults: Any) -> ml_collections.ConfigDict:
  """Parses ``"k1=v1,k2=v2,flag"`` against ``defaults``.

  A bare ``flag`` sets a boolean default to True. Values take the type of
  their default (tuples are written with ``+``: ``layers=4+8``). Unknown keys
  raise ``ConfigArgError`` listing the known ones.

  Args:
    arg: the argument string (None or "" gives the defaults).
    **defaults: allowed keys and their default values.

  Returns:
    A locked ConfigDict with every key of ``defaults``.
  """
  values = dict(defaults)
  if arg:
    for item in arg.split(","):
      item = item.strip()
      if not item:
        continue
      key, sep, raw = item.partition("=")
      key = key.strip()
      if key not in defaults:
        raise ConfigArgError(
            f"unknown config arg {key!r}; known args: {sorted(defaults)}")
      if not sep and not isinstance(defaults[key], bool):
        raise ConfigArgError(
            f"config arg {key!r} needs a value ({key}=...)")
      values[key] = _coerce(key, raw.strip(), defaults[key])
  cfg = ml_collections.ConfigDict(values)
  cfg.lock()
  return cfg


def dataset_config(*, name: str, category: str = "", root: str = "",
                   contamination: float = 0.0, overlap: bool = False,
                   image_size: int = 224, crop_fraction: float = 0.875,
                   seed: int = 0) -> ml_collections.ConfigDict:
  """The ``config.dataset`` block shared by every method.

  Args:
    name: one of DATASETS.
    category: dataset category (e.g. "bottle", "candle").
    root: dataset root directory ("" = the default for that dataset: the
      ``DICOFUN_DATA`` environment variable or ``~/data``; the synthetic
      dataset is generated under the workdir when empty).
    contamination: ratio of test anomalies moved into train (METHODS §4).
    overlap: keep moved anomalies in the test set too (view b).
    image_size: evaluation / input size S.
    crop_fraction: centre-crop fraction (1.0 = resize straight to S).
    seed: seed of the contamination draw.

  Returns:
    A ConfigDict.
  """
  if name not in DATASETS:
    raise ConfigArgError(f"dataset {name!r} not in {DATASETS}")
  return ml_collections.ConfigDict(dict(
      name=name,
      category=category,
      root=root,
      contamination=contamination,
      overlap=overlap,
      contamination_seed=seed,
      image_size=image_size,
      crop_fraction=crop_fraction,
      allow_missing_masks=False,
      num_workers=4,
      # Only used by the synthetic dataset and the folder dataset.
      synthetic=ml_collections.ConfigDict(dict(
          num_train=60, num_test_good=20, num_test_anomalous=20,
          image_size=128, seed=0)),
      folder=ml_collections.ConfigDict(dict(
          normal_dir="", abnormal_dir="", mask_dir="", test_fraction=0.2)),
  ))


def base_config(*, method: str, dataset: ml_collections.ConfigDict,
                backbone: str, seed: int = 0) -> ml_collections.ConfigDict:
  """Top-level fields every run has; methods add ``config.<method>``."""
  cfg = ml_collections.ConfigDict()
  cfg.method = method
  cfg.seed = seed
  cfg.dataset = dataset
  cfg.backbone = ml_collections.ConfigDict(dict(
      name=backbone,
      weights="pretrained",  # "pretrained", "random" or a checkpoint path.
      layer=8,  # ViT block whose tokens are used (METHODS §1 note).
      batch_size=16,
  ))
  cfg.eval = ml_collections.ConfigDict(dict(
      num_figures=8,
      # Decision threshold stored with the model (experiments/predict.py):
      # F1-optimal on a labelled validation split held out of the test set
      # when validation_fraction > 0, else this percentile of the method's
      # scores on its (unlabelled) training images.
      threshold_percentile=99.0,
      validation_fraction=0.0,
      tensorboard=True,
  ))
  cfg.features_cache = True
  return cfg


# Per-dataset defaults shared by every method's config files.
DATASET_DEFAULTS = {
    "synthetic": dict(category="texture", crop_fraction=1.0),
    "mvtec": dict(category="bottle", crop_fraction=0.875),
    "visa": dict(category="candle", crop_fraction=0.875),
    # Magnetic tile images are elongated with defects near the edges: the
    # 0.875 centre crop would cut whole defects out (METHODS §1).
    "magnetic_tile": dict(category="magnetic_tile", crop_fraction=1.0),
    "folder": dict(category="custom", crop_fraction=1.0),
}


def bank_method_config(method: str, dataset: str,
                       arg: Optional[str]) -> ml_collections.ConfigDict:
  """Config of PatchCore / SoftPatch on ``dataset`` from the arg string.

  Args (in ``arg``): category, contamination, overlap, backbone, layer,
  image_size, crop, coreset, seed, root, runlocal.
  """
  d = DATASET_DEFAULTS[dataset]
  a = parse_arg(arg, category=d["category"], contamination=0.0, overlap=False,
                backbone="efficientnet_lite0", layer=8, image_size=224,
                crop=d["crop_fraction"], coreset=0.1, seed=0, root="",
                runlocal=False)
  cfg = base_config(
      method=method,
      dataset=dataset_config(name=dataset, category=a.category, root=a.root,
                             contamination=a.contamination, overlap=a.overlap,
                             image_size=a.image_size, crop_fraction=a.crop),
      backbone=a.backbone, seed=a.seed)
  cfg.backbone.layer = a.layer
  # Imported lazily: configs must stay loadable without building methods.
  from dicofun.methods import patchcore, softpatch  # pylint: disable=g-import-not-at-top
  sub = (patchcore if method == "patchcore" else softpatch).default_config()
  sub.coreset_fraction = a.coreset
  if a.runlocal:
    cfg.dataset.synthetic.num_train = 30
    cfg.dataset.synthetic.num_test_good = 10
    cfg.dataset.synthetic.num_test_anomalous = 10
  cfg[method] = sub
  return cfg
