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

from dicofun import data as data_lib


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
  if name not in data_lib.DATASETS:
    raise ConfigArgError(f"dataset {name!r} not in {sorted(data_lib.DATASETS)}")
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
  # Delete the workdir's training checkpoints and train from scratch (a
  # checkpoint of a different training config is refused otherwise).
  cfg.restart = False
  return cfg


def dataset_defaults(dataset: str) -> dict[str, Any]:
  """The config-file defaults (category, crop_fraction) of a dataset."""
  spec = data_lib.get_dataset(dataset)
  return dict(category=spec.category, crop_fraction=spec.crop_fraction)
