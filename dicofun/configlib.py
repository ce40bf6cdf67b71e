"""Config helpers: shared config blocks, strict arguments, named errors.

A config file ``configs/<method>_<dataset>.py`` defines ``get_config(arg=None)``
and says the experiment in it: ``run_config`` gives the blocks every method
shares for the file's dataset, backbone and image size; the method's
``default_config()`` gives ``config.<method>``; a ``runlocal`` block shrinks
the run to a CPU smoke size; then the method's ``apply_args`` reads ``arg``,
the string after the colon in
``--config=configs/x.py:category=bottle,runlocal``, and checks the result.

Each default lives in one place (those blocks and ``default_config()``): an
argument's default is read from the field it sets (``apply_args``), and
arguments given explicitly win over ``runlocal``. ``parse_arg`` refuses
unknown keys, so a typo never silently runs the default experiment, and the
``check_*`` helpers raise ``ConfigArgError`` naming the field, the value and
what is expected before any work starts.
"""

from __future__ import annotations

import ast
from typing import Any, Mapping, Optional, Sequence

import ml_collections

from dicofun import data as data_lib
from dicofun import user_errors
from dicofun.data import images as images_lib
from dicofun.models import names as backbone_names


class ConfigArgError(user_errors.UserError, ValueError):
  """A config argument or field that cannot be used as given.

  Attributes:
    known: for an unknown key, the keys the parser accepts (else empty).
  """

  def __init__(self, message: str, *, known: Sequence[str] = ()):
    super().__init__(message)
    self.known = tuple(known)


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
            f"unknown config arg {key!r}; known args: {sorted(defaults)}",
            known=sorted(defaults))
      if not sep and not isinstance(defaults[key], bool):
        raise ConfigArgError(
            f"config arg {key!r} needs a value ({key}=...)")
      values[key] = _coerce(key, raw.strip(), defaults[key])
  cfg = ml_collections.ConfigDict(values)
  cfg.lock()
  return cfg


def dataset_config(*, name: str, category: str = "", root: str = "",
                   contamination: float = 0.0,
                   image_size: int = 224, crop_fraction: float = 0.875,
                   seed: int = 0, source: str = "folder",
                   tfds_data_dir: str = "") -> ml_collections.ConfigDict:
  """The ``config.dataset`` block shared by every method.

  Args:
    name: one of DATASETS.
    category: dataset category (e.g. "bottle", "candle").
    root: dataset root directory ("" = the default for that dataset: the
      ``DICOFUN_DATA`` environment variable or ``~/data``; the synthetic
      dataset is generated under the workdir when empty).
    contamination: ratio of test anomalies moved into train (METHODS §4);
      the runner always reports both test views, with and without them.
    image_size: evaluation / input size S.
    crop_fraction: centre-crop fraction (1.0 = resize straight to S).
    seed: seed of the contamination draw.
    source: where the records come from (``data.SOURCES``): "folder" reads
      the downloaded folders; "tfds" reads the dataset prepared once with
      ``python -m dicofun.data.tfds_builders`` (array_record files, random
      access, no TensorFlow) from ``tfds_data_dir``.
    tfds_data_dir: TFDS data directory of ``source="tfds"`` ("" =
      ``$DICOFUN_DATA/tfds``, ``~/data/tfds`` when unset).

  Returns:
    A ConfigDict.
  """
  check_choice("dataset.name", name, sorted(data_lib.DATASETS))
  check_choice("dataset.source", source, sorted(data_lib.SOURCES))
  return ml_collections.ConfigDict(dict(
      name=name,
      category=category,
      root=root,
      source=source,
      tfds_data_dir=tfds_data_dir,
      contamination=contamination,
      contamination_seed=seed,
      image_size=image_size,
      crop_fraction=crop_fraction,
      # Datasets without masks (ELPV) report image metrics only.
      allow_missing_masks=not data_lib.DATASETS[name].masks,
      num_workers=4,
      # Larger images are refused (listed in errors.csv by inspect/predict);
      # 0 = no limit. Large ones below it are decoded reduced.
      max_image_pixels=images_lib.DEFAULT_MAX_PIXELS,
      # Only used by the synthetic dataset and the folder dataset.
      synthetic=ml_collections.ConfigDict(dict(
          num_train=60, num_test_good=20, num_test_anomalous=20,
          image_size=128, seed=0)),
      folder=ml_collections.ConfigDict(dict(
          normal_dir="", abnormal_dir="", mask_dir="", test_fraction=0.2)),
      # Only used by ELPV (dicofun/data/elpv.py says why these values):
      # probability >= min_defect_probability is anomalous (1/3 cells are
      # left out), test_fraction of the normals are test images, and at most
      # max_train_normals train (magnetic tile's size; 0 = all) **(ours)**.
      elpv=ml_collections.ConfigDict(dict(
          min_defect_probability=2 / 3, test_fraction=0.2,
          max_train_normals=760)),
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
      # ViT block whose tokens are used (METHODS §1 note).
      layer=backbone_names.DEFAULT_VIT_LAYER,
      # ViT: intermediate tokens (CLS too) through the final LayerNorm, as
      # DINOv2's get_intermediate_layers(norm=True) (METHODS §1).
      norm_intermediate=backbone_names.DEFAULT_NORM_INTERMEDIATE,
      # ViT PatchCore layout: side of the patch tokens' local average (1 =
      # none, METHODS §1; CNN stages always use 3×3).
      vit_local_average=backbone_names.DEFAULT_VIT_LOCAL_AVERAGE,
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
      # Methods also return anomaly maps of their training images
      # (Predictions.train_maps); dicofun inspect needs them.
      train_maps=False,
  ))
  cfg.features_cache = True
  # Delete the workdir's training checkpoints and train from scratch (a
  # checkpoint of a different training config is refused otherwise).
  cfg.restart = False
  return cfg


def dataset_defaults(dataset: str) -> dict[str, Any]:
  """The config-file defaults (category, crop_fraction) of a dataset."""
  check_choice("dataset.name", dataset, sorted(data_lib.DATASETS))
  spec = data_lib.DATASETS[dataset]
  return dict(category=spec.category, crop_fraction=spec.crop_fraction)


# --------------------------------------------------------------------------
# The experiment of a config file: its blocks, its arguments, its checks.

# Config-file argument → the config field it sets, for every method. A
# method adds its own (``methods/<name>/config.py:ARGS``).
SHARED_ARGS: dict[str, str] = {
    "category": "dataset.category",
    "contamination": "dataset.contamination",
    "backbone": "backbone.name",
    # "pretrained", "random" or a weights file (docs/backbones.md).
    "weights": "backbone.weights",
    "image_size": "dataset.image_size",
    "crop": "dataset.crop_fraction",
    "seed": "seed",
    "root": "dataset.root",
}

# A bare flag of every config file: the file's CPU smoke size.
RUNLOCAL = "runlocal"


def run_config(*, method: str, method_config: ml_collections.ConfigDict,
               dataset: str, backbone: str,
               image_size: int) -> ml_collections.ConfigDict:
  """A run config: ``base_config``, ``dataset_config`` and the method block.

  The dataset's default category and crop come from its ``data.DATASETS``
  entry. The config is locked: a config file's ``runlocal`` block (or any
  later override) can change fields but not add a misspelt one.

  Args:
    method: the method name (``config.method``).
    method_config: ``config.<method>``, the method's ``default_config()``.
    dataset: a key of ``data.DATASETS``.
    backbone: a backbone name (``models.names``).
    image_size: the input / evaluation size S.

  Returns:
    A locked ConfigDict.
  """
  check_choice("dataset.name", dataset, sorted(data_lib.DATASETS))
  spec = data_lib.DATASETS[dataset]
  config = base_config(
      method=method,
      dataset=dataset_config(name=dataset, category=spec.category,
                             crop_fraction=spec.crop_fraction,
                             image_size=image_size),
      backbone=backbone)
  config[method] = method_config
  config.lock()
  return config


def flag_in(arg: Optional[str], key: str) -> bool:
  """The value of the boolean ``key`` in an argument string (False if absent).

  Only ``key`` is read (the last mention wins, as in ``parse_arg``); the
  whole string is checked later by ``apply_args``. A config file reads
  ``runlocal`` with it before its ``runlocal`` block.
  """
  value = False
  for item in (arg or "").split(","):
    name, _, raw = item.strip().partition("=")
    if name.strip() == key:
      value = _coerce(key, raw.strip(), False)
  return value


def _field(config: ml_collections.ConfigDict, path: str) -> Any:
  node = config
  for part in path.split("."):
    node = node[part]
  return node


def _set_field(config: ml_collections.ConfigDict, path: str,
               value: Any) -> None:
  parent, _, leaf = path.rpartition(".")
  node = _field(config, parent) if parent else config
  node[leaf] = value


def arg_defaults(config: ml_collections.ConfigDict,
                 args: Mapping[str, str]) -> dict[str, Any]:
  """Each argument's default: the current value of the field it sets."""
  defaults = {name: _field(config, path) for name, path in args.items()}
  defaults[RUNLOCAL] = False
  return defaults


def apply_args(config: ml_collections.ConfigDict, arg: Optional[str],
               args: Mapping[str, str], *,
               flags: Sequence[str] = ()) -> ml_collections.ConfigDict:
  """Parses ``arg`` strictly against ``args`` and sets the named fields.

  Args:
    config: the run config, already with its ``runlocal`` block applied (an
      argument given explicitly wins over it).
    arg: the config-file argument string.
    args: argument name → config field (``"funad.rho"``); ``runlocal`` is
      always accepted.
    flags: more boolean arguments that set no field (the config file read
      them with ``flag_in`` before, as ``runlocal``).

  Returns:
    ``config``, updated in place.

  Raises:
    ConfigArgError: an unknown key or a value of the wrong type.
  """
  defaults = arg_defaults(config, args)
  defaults.update({name: False for name in flags})
  parsed = parse_arg(arg, **defaults)
  for name, path in args.items():
    _set_field(config, path, parsed[name])
  return config


def _expected(field: str, value: Any, expected: str) -> ConfigArgError:
  return ConfigArgError(f"config.{field}={value!r}: expected {expected}")


def check_choice(field: str, value: Any, choices: Sequence[Any]) -> None:
  """Raises ConfigArgError unless ``value`` is one of ``choices``."""
  if value not in choices:
    raise _expected(field, value, f"one of {list(choices)}")


def check_that(ok: bool, field: str, value: Any, expected: str) -> None:
  """Raises ConfigArgError ``config.<field>=<value>: expected <expected>``."""
  if not ok:
    raise _expected(field, value, expected)


def check_positive_int(field: str, value: Any) -> None:
  check_that(isinstance(value, int) and value >= 1, field, value,
             "an integer >= 1")


def check_positive(field: str, value: Any) -> None:
  check_that(value > 0, field, value, "a number > 0")


def check_fraction(field: str, value: Any) -> None:
  """A fraction in (0, 1]."""
  check_that(0 < value <= 1, field, value, "a fraction in (0, 1]")


def check_step_budget(name: str, block: ml_collections.ConfigDict) -> None:
  """The step-budget fields a trained method shares (``training.budget``):
  ``steps`` (0 = count ``epochs``), ``min_epochs`` and ``checkpoint_every``
  of ``config.<name>``, each an integer >= 0."""
  check_that(block.steps >= 0, f"{name}.steps", block.steps,
             f"an integer >= 0 (0 = the budget is {name}.epochs)")
  check_that(block.min_epochs >= 0, f"{name}.min_epochs", block.min_epochs,
             "an integer >= 0")
  check_that(block.checkpoint_every >= 0, f"{name}.checkpoint_every",
             block.checkpoint_every, "an integer >= 0 (0 = at the end)")


def check_config(config: ml_collections.ConfigDict) -> None:
  """Checks the shared fields of a run config (a method checks its block).

  Raises:
    ConfigArgError: naming the first field out of range, its value and what
      it must be.
  """
  ds = config.dataset
  check_choice("dataset.name", ds.name, sorted(data_lib.DATASETS))
  check_that(0 <= ds.contamination < 1, "dataset.contamination",
             ds.contamination, "a ratio in [0, 1)")
  check_choice("backbone.name", config.backbone.name,
               backbone_names.BACKBONE_NAMES)
  check_positive_int("dataset.image_size", ds.image_size)
  bb = config.backbone
  check_that(isinstance(bb.weights, str) and bb.weights != "",
             "backbone.weights", bb.weights,
             "pretrained, random or a weights file path")
  check_that(bb.weights != "pretrained" or
             bb.name in backbone_names.PACKAGED_WEIGHTS,
             "backbone.weights", bb.weights,
             f"a weights file for {bb.name}, which has no packaged pretrained "
             "weights (weights=<path>; docs/backbones.md)")
  check_that(isinstance(bb.norm_intermediate, bool),
             "backbone.norm_intermediate", bb.norm_intermediate, "a boolean")
  check_that(isinstance(bb.vit_local_average, int) and
             bb.vit_local_average >= 1 and bb.vit_local_average % 2 == 1,
             "backbone.vit_local_average", bb.vit_local_average,
             "an odd integer >= 1 (1 = no local average)")
  patch = backbone_names.PATCH_SIZES[config.backbone.name]
  if patch and ds.image_size % patch:
    lower = max(patch, ds.image_size // patch * patch)
    raise _expected(
        "dataset.image_size", ds.image_size,
        f"a multiple of {patch}, the patch size of {config.backbone.name} "
        f"(e.g. {lower} or {lower + patch})")
