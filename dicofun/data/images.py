"""Decoding image and mask files into numpy arrays (PIL).

Pixels are used as stored: EXIF orientation tags are ignored, so that an image
and its mask (often written by different tools) stay aligned **(ours)**.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
from typing import Optional, Sequence, Union

import numpy as np
from PIL import Image

from dicofun import progress as progress_lib
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
  try:
    img = Image.open(path)
    img.load()  # Decodes now, so truncated files fail here, not later.
  except _DECODE_ERRORS as e:
    raise errors.CorruptImageError(path, f"{type(e).__name__}: {e}") from e
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
  img = _open(path)
  try:
    if img.mode in ("I", "F") or img.mode.startswith("I;16"):
      gray = _high_depth_to_uint8(img)
      return np.repeat(gray[..., None], 3, axis=-1)
    if img.mode != "RGB":
      img = img.convert("RGB")
    arr = np.asarray(img, dtype=np.uint8)
  except _DECODE_ERRORS as e:
    raise errors.CorruptImageError(os.fspath(path),
                                   f"{type(e).__name__}: {e}") from e
  if arr.ndim != 3 or arr.shape[-1] != 3:
    raise errors.CorruptImageError(os.fspath(path),
                                   f"unexpected array shape {arr.shape}")
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
  img = _open(path)
  try:
    if img.mode == "P":
      # Palette index 0 need not be black; compare actual colours.
      img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    arr = np.asarray(img)
  except _DECODE_ERRORS as e:
    raise errors.CorruptImageError(os.fspath(path),
                                   f"{type(e).__name__}: {e}") from e
  if arr.ndim == 3:
    if img.mode in ("LA", "RGBA", "La", "RGBa", "PA"):
      arr = arr[..., :-1]
    return np.any(arr != 0, axis=-1)
  if arr.ndim != 2:
    raise errors.CorruptImageError(os.fspath(path),
                                   f"unexpected mask shape {arr.shape}")
  return arr != 0


def list_images_recursive(directory: PathLike) -> list[str]:
  """Every image file under ``directory`` (any depth), sorted by path.

  Hidden files and folders (a leading ``.``) are skipped. Matching is by
  extension (IMAGE_EXTENSIONS, any case); whether a file decodes is
  ``screen_images``' question.
  """
  found = []
  for root, dirs, files in os.walk(os.fspath(directory)):
    dirs[:] = sorted(d for d in dirs if not d.startswith("."))
    for f in files:
      if not f.startswith(".") and is_image_file(f):
        found.append(os.path.join(root, f))
  return sorted(found)


@dataclasses.dataclass
class Screened:
  """The outcome of ``screen_images``.

  Attributes:
    readable: paths that decode, in input order.
    errors: ``(path, reason)`` of every file that does not decode.
    small: ``(path, (width, height))`` of readable images smaller than the
      input size on either side (they are upscaled, which blurs defects).
  """

  readable: list[str]
  errors: list[tuple[str, str]]
  small: list[tuple[str, tuple[int, int]]]


def _probe(path: str) -> tuple[Optional[tuple[int, int]], str]:
  """((width, height), "") when ``path`` decodes, else (None, reason)."""
  try:
    if os.path.getsize(path) == 0:
      return None, "empty file (0 bytes)"
    arr = load_image(path)
  except OSError as e:
    return None, f"{type(e).__name__}: {e}"
  except errors.CorruptImageError as e:
    return None, e.reason or str(e)
  except errors.DatasetError as e:
    return None, str(e)
  return (int(arr.shape[1]), int(arr.shape[0])), ""


def screen_images(paths: Sequence[str], *, min_size: int = 0,
                  num_workers: int = 4,
                  desc: Optional[str] = "reading images") -> Screened:
  """Decodes every image once and sorts them into readable and unreadable.

  A user's folder from a line may hold a truncated upload or an empty file;
  those are reported, not fatal, so one bad file never stops the others
  from being scored **(ours)**.

  Args:
    paths: image files.
    min_size: input side S; readable images narrower or lower than S are
      listed in ``small``.
    num_workers: decoding threads.
    desc: progress label (None: quiet).

  Returns:
    A Screened.
  """
  paths = [os.fspath(p) for p in paths]
  out = Screened([], [], [])
  with concurrent.futures.ThreadPoolExecutor(max(1, num_workers)) as pool:
    results = pool.map(_probe, paths)
    if desc is not None:
      results = progress_lib.progress(results, total=len(paths), desc=desc)
    for path, (size, reason) in zip(paths, results):
      if size is None:
        out.errors.append((path, reason))
        continue
      out.readable.append(path)
      if min(size) < min_size:
        out.small.append((path, size))
  return out
