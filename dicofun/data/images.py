"""Decoding images and masks into numpy arrays (PIL), from files or bytes.

``load_image``/``load_mask`` read files; ``decode_image``/``decode_mask`` do
the same for encoded bytes already in memory (a TFDS example's ``image`` and
``mask``), so both sources produce identical pixels. Pixels are used as
stored: EXIF orientation tags are ignored, so that an image and its mask
(often written by different tools) stay aligned **(ours)**.
"""

from __future__ import annotations

import io
import os
from typing import Union

import numpy as np
from PIL import Image

from dicofun.data import errors

# Lower-case; matching is case-insensitive (VisA ships ``.JPG``).
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")

PathLike = Union[str, os.PathLike]

# Errors PIL raises for unreadable, truncated or unsupported files.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, TypeError,
                  Image.DecompressionBombError)


def is_image_file(path: PathLike) -> bool:
  """Whether ``path`` has one of IMAGE_EXTENSIONS (any case)."""
  return os.path.splitext(os.fspath(path))[1].lower() in IMAGE_EXTENSIONS


def _open(path: PathLike) -> Image.Image:
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise errors.DatasetError(f"image file not found: {path!r}")
  return _decode(path, path)


def _decode(source, name: str) -> Image.Image:
  """Opens and decodes ``source`` (a path or a file object) now."""
  try:
    img = Image.open(source)
    img.load()  # Decodes now, so truncated files fail here, not later.
  except _DECODE_ERRORS as e:
    raise errors.CorruptImageError(name, f"{type(e).__name__}: {e}") from e
  return img


def _high_depth_to_uint8(img: Image.Image) -> np.ndarray:
  """16-bit / int32 / float single-channel images → uint8 **(ours)**.

  16-bit images are scaled by 255/65535; other integer or float images by
  their own maximum when it exceeds 255 (values are kept otherwise).
  """
  arr = np.asarray(img)
  if arr.dtype == np.uint16 or img.mode.startswith("I;16"):
    arr = arr.astype(np.float64) / 257.0
  else:
    arr = arr.astype(np.float64)
    hi = float(arr.max()) if arr.size else 0.0
    if hi > 255.0:
      arr = arr * (255.0 / hi)
  return np.clip(np.rint(arr), 0, 255).astype(np.uint8)


def load_image(path: PathLike) -> np.ndarray:
  """Reads an image as RGB.

  Args:
    path: image file (any format PIL reads; see IMAGE_EXTENSIONS).

  Returns:
    uint8 array (H, W, 3). Grayscale images are repeated over 3 channels;
    alpha channels are dropped.

  Raises:
    CorruptImageError: the file cannot be decoded (the message names it).
    DatasetError: the file does not exist.
  """
  return _as_rgb(_open(path), os.fspath(path))


def decode_image(data: bytes, *, name: str) -> np.ndarray:
  """``load_image`` of encoded bytes; ``name`` labels errors."""
  return _as_rgb(_decode(io.BytesIO(data), name), name)


def _as_rgb(img: Image.Image, name: str) -> np.ndarray:
  try:
    if img.mode in ("I", "F") or img.mode.startswith("I;16"):
      gray = _high_depth_to_uint8(img)
      return np.repeat(gray[..., None], 3, axis=-1)
    if img.mode != "RGB":
      img = img.convert("RGB")
    arr = np.asarray(img, dtype=np.uint8)
  except _DECODE_ERRORS as e:
    raise errors.CorruptImageError(name, f"{type(e).__name__}: {e}") from e
  if arr.ndim != 3 or arr.shape[-1] != 3:
    raise errors.CorruptImageError(name, f"unexpected array shape {arr.shape}")
  return np.ascontiguousarray(arr)


def load_mask(path: PathLike) -> np.ndarray:
  """Reads a ground-truth mask.

  Args:
    path: mask file. Any non-zero pixel (in any colour channel, alpha
      excluded) is anomalous, so 0/255, 0/1 and coloured masks all work.

  Returns:
    bool array (H, W).

  Raises:
    CorruptImageError: the file cannot be decoded.
    DatasetError: the file does not exist.
  """
  return _as_mask(_open(path), os.fspath(path))


def decode_mask(data: bytes, *, name: str) -> np.ndarray:
  """``load_mask`` of encoded bytes; ``name`` labels errors."""
  return _as_mask(_decode(io.BytesIO(data), name), name)


def _as_mask(img: Image.Image, name: str) -> np.ndarray:
  try:
    if img.mode == "P":
      # Palette index 0 need not be black; compare actual colours.
      img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    arr = np.asarray(img)
  except _DECODE_ERRORS as e:
    raise errors.CorruptImageError(name,
                                   f"{type(e).__name__}: {e}") from e
  if arr.ndim == 3:
    if img.mode in ("LA", "RGBA", "La", "RGBa", "PA"):
      arr = arr[..., :-1]
    return np.any(arr != 0, axis=-1)
  if arr.ndim != 2:
    raise errors.CorruptImageError(name,
                                   f"unexpected mask shape {arr.shape}")
  return arr != 0
