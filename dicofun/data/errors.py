"""Errors raised by the dataset readers and the input pipeline.

Each message says what is wrong *and* what to do about it, because these
errors are what a user sees first when pointing dicofun at their data.
All derive from ``DatasetError`` (a ``ValueError``), so callers can catch
the whole family at once.
"""

from __future__ import annotations

from typing import Optional

from dicofun import user_errors

MVTEC_URL = "https://www.mvtec.com/company/research/datasets/mvtec-ad"
VISA_URL = "https://github.com/amazon-science/spot-diff"
DATA_ENV = "DICOFUN_DATA"


class DatasetError(user_errors.UserError, ValueError):
  """Base class of every dataset / pipeline error."""


class DatasetNotFoundError(DatasetError):
  """A dataset root, category directory or split file does not exist."""

  def __init__(self, path: str, *, what: str = "dataset directory",
               hint: str = ""):
    self.path = path
    msg = (
        f"{what} not found: {path!r}. Download the dataset and point dicofun "
        f"at it with config.dataset.root (or the {DATA_ENV} environment "
        f"variable, whose subfolders mvtec_ad/, visa/, magnetic_tile/ are "
        f"used when config.dataset.root is empty). MVTec AD: {MVTEC_URL} ; "
        f"VisA: {VISA_URL} (use its split_csv/1cls.csv split).")
    if hint:
      msg += " " + hint
    super().__init__(msg)


class DatasetPackageMissingError(DatasetNotFoundError):
  """A dataset that ships as a Python package (ELPV) is not installed."""

  def __init__(self, package: str, *, pip_command: str, hint: str = ""):
    self.path = package
    msg = (f"the dataset package {package!r} is not installed; install it "
           f"with `{pip_command}`")
    DatasetError.__init__(self, msg + (f" {hint}" if hint else "") + ".")


class TfdsNotPreparedError(DatasetNotFoundError):
  """``config.dataset.source="tfds"`` but the dataset is not prepared."""

  def __init__(self, path: str, *, name: str, command: str):
    self.path = path
    DatasetError.__init__(
        self,
        f"prepared TFDS dataset {name} not found: {path!r} holds no "
        f"<version>/dataset_info.json. With config.dataset.source='tfds' the "
        f"dataset is prepared once from the downloaded folders, then read "
        f"from config.dataset.tfds_data_dir; prepare it with: {command}")


class CorruptImageError(DatasetError):
  """An image or mask file cannot be decoded."""

  def __init__(self, path: str, reason: str = ""):
    self.path = path
    self.reason = reason
    msg = f"cannot decode image file {path!r}"
    if reason:
      msg += f": {reason}"
    msg += ". Remove or replace the file."
    super().__init__(msg)


class MissingMaskError(DatasetError):
  """An anomalous test image has no ground-truth mask."""

  def __init__(self, image_path: str, expected_mask: Optional[str] = None, *,
               count: int = 1):
    self.image_path = image_path
    self.expected_mask = expected_mask
    where = (f" (expected at {expected_mask!r})" if expected_mask
             else "")
    others = f" and {count - 1} more anomalous image(s)" if count > 1 else ""
    super().__init__(
        f"anomalous image {image_path!r}{others} has no ground-truth "
        f"mask{where}. Pixel metrics need masks; to evaluate anyway (pixel "
        f"metrics then skip these images) set "
        f"config.dataset.allow_missing_masks=True.")


class EmptyCategoryError(DatasetError):
  """A category directory holds no train or no test images."""

  def __init__(self, path: str, split: str, *, expected: str = ""):
    self.path = path
    self.split = split
    msg = f"no {split} images found under {path!r}"
    if expected:
      msg += f" (expected {expected})"
    super().__init__(msg + ".")


class ImageTooLargeError(CorruptImageError):
  """An image has more pixels than ``config.dataset.max_image_pixels``."""

  def __init__(self, path: str, size: Optional[tuple[int, int]],
               limit: int):
    self.path = path
    got = (f"{size[0]}x{size[1]} = {size[0] * size[1]} pixels" if size
           else "more pixels than PIL's decompression-bomb limit")
    self.reason = (f"{got}, above the limit of {limit} "
                   "(config.dataset.max_image_pixels)")
    DatasetError.__init__(
        self, f"image {path!r} has {self.reason}; shrink the file or raise "
        "the limit")
