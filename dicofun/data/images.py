"""Decoding images and masks into numpy arrays (PIL, tifffile), from files or
bytes.

``load_image``/``load_mask`` read files; ``decode_image``/``decode_mask`` do
the same for encoded bytes already in memory (a TFDS example's ``image`` and
``mask``), so both sources produce identical pixels. Pixels are used as
stored: EXIF orientation tags are ignored, so that an image
and its mask (often written by different tools) stay aligned **(ours)**.

Images come as cameras write them: 8/16-bit grey or RGB, float TIFF, with or
without alpha. ``load_image`` turns each into 8-bit RGB by one documented
rule (``to_unit``, ``to_rgb_uint8``): 16-bit data is scaled by the bit depth
it really uses, floats in [0, 1] are kept, alpha is composited on black.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import io
import os
from typing import Optional, Sequence, Union
import warnings
import zlib

from absl import logging
import numpy as np
from PIL import Image
import tifffile

from dicofun import fileio
from dicofun import progress as progress_lib
from dicofun.data import errors

# Lower-case; matching is case-insensitive (VisA ships ``.JPG``).
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")

PathLike = Union[str, os.PathLike]

# Images above this many pixels are refused (config.dataset.max_image_pixels
# overrides it): below PIL's own decompression-bomb error (2 x 89.5 MP).
DEFAULT_MAX_PIXELS = 150_000_000
# Images above this many pixels are decoded reduced (``load_image``'s
# ``min_side``), to about REDUCE_MARGIN times the side the pipeline needs;
# every image of MVTec AD, VisA and ELPV is smaller, so their pixels are
# exactly those of a full decode.
REDUCE_ABOVE_PIXELS = 4096 * 4096
REDUCE_MARGIN = 4

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


def _open_lazy(source) -> Image.Image:
  """``Image.open`` (header only). PIL's decompression-bomb warning is off:
  dicofun checks its own limit (``max_pixels``) before decoding."""
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", Image.DecompressionBombWarning)
    return Image.open(source)


def reduce_factor(size: tuple[int, int], min_side: Optional[int]) -> int:
  """The integer factor an image of ``size`` (w, h) is decoded reduced by.

  1 unless ``min_side`` is given and the image has more than
  REDUCE_ABOVE_PIXELS pixels; then the largest factor that keeps the short
  side at least REDUCE_MARGIN x ``min_side``.
  """
  if not min_side or size[0] * size[1] <= REDUCE_ABOVE_PIXELS:
    return 1
  return max(1, min(size) // (REDUCE_MARGIN * int(min_side)))


def _reduce(img: Image.Image, factor: int) -> Image.Image:
  """``img`` box-reduced by ``factor`` (modes ``Image.reduce`` lacks are
  first converted as ``_pil_pixels`` would)."""
  if img.mode in ("P", "PA"):
    keep_alpha = img.mode == "PA" or "transparency" in img.info
    img = img.convert("RGBA" if keep_alpha else "RGB")
  elif img.mode == "1":
    img = img.convert("L")
  elif img.mode.startswith("I;16"):
    img = img.convert("I")
  elif img.mode not in ("L", "LA", "RGB", "RGBA", "I", "F", "La", "RGBa"):
    img = img.convert("RGB")
  return img.reduce(factor)


def _decode(source, name: str, *, min_side: Optional[int] = None
            ) -> Image.Image:
  """Opens and decodes ``source`` (a path or a file object) now; reduced by
  ``reduce_factor`` (a JPEG at decode time, with ``draft``)."""
  try:
    img = _open_lazy(source)
    factor = reduce_factor(img.size, min_side)
    if factor > 1 and img.format == "JPEG":
      img.draft(img.mode, (img.size[0] // factor, img.size[1] // factor))
    img.load()  # Decodes now, so truncated files fail here, not later.
    factor = reduce_factor(img.size, min_side)
    if factor > 1:
      img = _reduce(img, factor)
  except _DECODE_ERRORS as e:
    # PIL names a file object by its repr; name the image instead.
    msg = str(e).replace(repr(source), repr(name))
    raise errors.CorruptImageError(name, f"{type(e).__name__}: {msg}") from e
  return img


def check_pixels(data: bytes, *, name: str, max_pixels: Optional[int]
                 ) -> None:
  """Raises ``ImageTooLargeError`` when the image in ``data`` has more than
  ``max_pixels`` pixels (read from its header; nothing is decoded)."""
  if not max_pixels:
    return
  try:
    size = _open_lazy(io.BytesIO(data)).size
  except Image.DecompressionBombError as e:
    raise errors.ImageTooLargeError(name, None, int(max_pixels)) from e
  except _DECODE_ERRORS:
    return  # Not PIL's: the decoder below names the problem.
  if size[0] * size[1] > max_pixels:
    raise errors.ImageTooLargeError(name, size, int(max_pixels))


# Bit depths a camera's integer data is assumed to use (see ``to_unit``).
BIT_DEPTHS = (8, 10, 12, 14, 16)
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def bit_depth(max_value: int) -> int:
  """The smallest of BIT_DEPTHS (or, above 16, the next whole bit count)
  whose range ``[0, 2^d − 1]`` holds ``max_value``."""
  for d in BIT_DEPTHS:
    if max_value < 2 ** d:
      return d
  return int(max_value).bit_length()


def to_unit(arr: np.ndarray) -> np.ndarray:
  """Pixel values → float64 in [0, 1] by the documented rule **(ours)**.

  * ``uint8``: ``v / 255``; ``bool``: 0 or 1.
  * Other integers (16-bit PNG/TIFF, PIL's 32-bit ``I``): ``v / (2^d − 1)``
    where ``d`` is the smallest of 8, 10, 12, 14, 16 bits that holds the
    image's maximum. A 12-bit camera frame in a 16-bit file (max ≤ 4095) is
    divided by 4095, so it spans the full range instead of 0..16/255 as
    with a fixed 65535; a file whose maximum is ≥ 2^14 is divided by 65535.
    Caveat: the depth is inferred per image, so a very dark 12-bit frame
    (max < 1024) is read as 10-bit. Negative values are clipped to 0.
  * Floats: values in [0, 1] are used as they are (a float TIFF in [0, 1]
    keeps its grey levels); otherwise values in [0, 255] are divided by 255
    and any other range is stretched linearly from its min..max to 0..1.
    NaN and ±inf become 0.
  """
  arr = np.asarray(arr)
  if arr.dtype == np.uint8:
    return arr.astype(np.float64) / 255.0
  if arr.dtype == np.bool_:
    return arr.astype(np.float64)
  if np.issubdtype(arr.dtype, np.integer):
    arr = np.maximum(arr.astype(np.int64), 0)
    hi = int(arr.max()) if arr.size else 0
    return arr.astype(np.float64) / float(2 ** bit_depth(hi) - 1)
  arr = np.nan_to_num(arr.astype(np.float64), nan=0.0, posinf=0.0,
                      neginf=0.0)
  if not arr.size:
    return arr
  lo, hi = float(arr.min()), float(arr.max())
  if lo >= 0.0 and hi <= 1.0:
    return arr
  if lo >= 0.0 and hi <= 255.0:
    return arr / 255.0
  return (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)


def to_rgb_uint8(arr: np.ndarray) -> np.ndarray:
  """(H, W), (H, W, 1..4) pixel array of any dtype → uint8 (H, W, 3).

  Values are mapped to [0, 1] by ``to_unit`` (per image, all channels
  together), grey is repeated over 3 channels, and an alpha channel (2 or 4
  channels) is composited on black: ``colour · alpha`` **(ours)** — the
  transparent parts of a cut-out part photo become background, not the
  arbitrary colours stored under alpha 0. Then ``round(255 · v)``.

  Raises:
    ValueError: a shape that is no image.
  """
  arr = np.asarray(arr)
  if arr.ndim == 2:
    arr = arr[..., None]
  if arr.ndim != 3 or arr.shape[-1] not in (1, 2, 3, 4):
    raise ValueError(f"unexpected pixel array shape {arr.shape}")
  unit = to_unit(arr)
  if arr.shape[-1] in (2, 4):
    unit = unit[..., :-1] * unit[..., -1:]
  if unit.shape[-1] == 1:
    unit = np.repeat(unit, 3, axis=-1)
  return np.clip(np.rint(unit * 255.0), 0, 255).astype(np.uint8)


def _png16_colour(data: bytes) -> Optional[np.ndarray]:
  """Pixels of a 16-bit colour PNG as uint16 (H, W, C), or None.

  PIL reads 16-bit RGB(A) and grey+alpha PNGs as 8 bits by keeping only the
  high byte, which turns 12-bit camera data into 0..15; this decodes the
  (non-interlaced) file itself with zlib. Any other PNG returns None and is
  left to PIL.
  """
  if data[:8] != _PNG_SIGNATURE or data[12:16] != b"IHDR":
    return None
  w, h = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
  depth, ctype, interlace = data[24], data[25], data[28]
  if depth != 16 or ctype not in (2, 4, 6) or interlace:
    return None
  channels = {2: 3, 4: 2, 6: 4}[ctype]
  bpp, stride = 2 * channels, 2 * channels * w
  idat, pos = [], 8
  while pos + 8 <= len(data):
    n = int.from_bytes(data[pos:pos + 4], "big")
    kind = data[pos + 4:pos + 8]
    if kind == b"IDAT":
      idat.append(data[pos + 8:pos + 8 + n])
    elif kind == b"IEND":
      break
    pos += 12 + n
  raw = zlib.decompressobj().decompress(b"".join(idat))
  if len(raw) < h * (stride + 1):
    raise OSError("image file is truncated")
  rows = np.frombuffer(raw, np.uint8, count=h * (stride + 1)).reshape(
      h, stride + 1)
  out = np.zeros((h, stride), np.int64)
  prev = np.zeros(stride, np.int64)
  for y in range(h):
    kind, line = rows[y, 0], rows[y, 1:].astype(np.int64)
    if kind == 0:
      cur = line
    elif kind == 1:  # Sub: a running sum along the row, per byte lane.
      cur = (line.reshape(w, bpp).cumsum(0) % 256).reshape(-1)
    elif kind == 2:  # Up.
      cur = (line + prev) % 256
    elif kind in (3, 4):  # Average, Paeth: sequential over pixels.
      cur = np.empty(stride, np.int64)
      left = np.zeros(bpp, np.int64)
      upleft = np.zeros(bpp, np.int64)
      for j in range(w):
        sl = slice(j * bpp, (j + 1) * bpp)
        up = prev[sl]
        if kind == 3:
          pred = (left + up) // 2
        else:
          p = left + up - upleft
          pa, pb, pc = np.abs(p - left), np.abs(p - up), np.abs(p - upleft)
          pred = np.where((pa <= pb) & (pa <= pc), left,
                          np.where(pb <= pc, up, upleft))
        left = cur[sl] = (line[sl] + pred) % 256
        upleft = up
    else:
      raise OSError(f"bad PNG filter type {kind} in row {y}")
    out[y] = prev = cur
  pairs = out.reshape(h, w * channels, 2)
  return (pairs[..., 0] * 256 + pairs[..., 1]).astype(np.uint16).reshape(
      h, w, channels)


def _tiff_pixels(data: bytes) -> Optional[np.ndarray]:
  """A TIFF's first page as stored (any dtype), or None if tifffile cannot
  read it (then PIL tries; PIL drops 16-bit colour to 8 bits and cannot
  read float colour TIFFs)."""
  try:
    arr = tifffile.imread(io.BytesIO(data), key=0)
  except Exception:  # pylint: disable=broad-except
    # tifffile raises many types (compression codecs it lacks, odd tags).
    return None
  arr = np.asarray(arr)
  if arr.ndim == 3 and arr.shape[0] in (3, 4) and arr.shape[-1] not in (
      1, 2, 3, 4):
    arr = np.moveaxis(arr, 0, -1)  # Planar (C, H, W) storage.
  return arr


def _pil_pixels(img: Image.Image) -> np.ndarray:
  """A decoded PIL image as an array with its real depth and alpha."""
  mode = img.mode
  if mode in ("L", "RGB", "LA", "RGBA", "I", "F") or mode.startswith("I;16"):
    return np.asarray(img)
  if mode == "1":
    return np.asarray(img.convert("L"))
  if mode in ("P", "PA"):
    keep_alpha = mode == "PA" or "transparency" in img.info
    return np.asarray(img.convert("RGBA" if keep_alpha else "RGB"))
  if mode in ("La", "RGBa"):  # Premultiplied: undo, then composite.
    return np.asarray(img.convert("RGBA" if mode == "RGBa" else "LA"))
  return np.asarray(img.convert("RGB"))  # CMYK, YCbCr, LAB, HSV.


def load_image(path: PathLike, *, min_side: Optional[int] = None,
               max_pixels: Optional[int] = None) -> np.ndarray:
  """Reads an image as 8-bit RGB, as cameras write them.

  8-bit grey and RGB are used as stored. 16-bit grey and colour PNG/TIFF,
  32-bit integer and float TIFF go through ``to_unit``'s rule (the bit
  depth a 16-bit file really uses, floats in [0, 1] as they are); alpha is
  composited on black (``to_rgb_uint8``). The pipeline works in 8 bits
  from there on.

  Args:
    path: image file (see IMAGE_EXTENSIONS).
    min_side: the side the caller resizes to; an image of more than
      REDUCE_ABOVE_PIXELS pixels is then decoded reduced (``reduce_factor``;
      JPEG with ``draft``, other PIL formats with ``reduce``), so a
      10000 x 10000 PNG never becomes a 2.4 GB float array. None: as
      stored.
    max_pixels: refuse images with more pixels (None: no limit).

  Returns:
    uint8 array (H, W, 3). Grayscale images are repeated over 3 channels.

  Raises:
    CorruptImageError: the file cannot be decoded (the message names it).
    ImageTooLargeError: more than ``max_pixels`` pixels.
    DatasetError: the file does not exist.
  """
  fspath = os.fspath(path)
  if not os.path.isfile(fspath):
    raise errors.DatasetError(f"image file not found: {fspath!r}")
  try:
    with open(fspath, "rb") as f:
      data = f.read()
  except OSError as e:
    raise errors.CorruptImageError(fspath, f"{type(e).__name__}: {e}") from e
  return decode_image(data, name=fspath, min_side=min_side,
                      max_pixels=max_pixels)


def decode_image(data: bytes, *, name: str, min_side: Optional[int] = None,
                 max_pixels: Optional[int] = None) -> np.ndarray:
  """``load_image`` of encoded bytes; ``name`` labels errors.

  The format is told by its signature (TIFF, PNG), not by a file name, so
  bytes from a TFDS example decode exactly as the file they came from.
  16-bit colour PNGs and TIFFs (decoded outside PIL) are checked against
  ``max_pixels`` but not reduced.
  """
  check_pixels(data, name=name, max_pixels=max_pixels)
  arr = None
  try:
    if data[:4] in (b"II*\x00", b"MM\x00*"):
      arr = _tiff_pixels(data)
    elif data[:8] == _PNG_SIGNATURE:
      arr = _png16_colour(data)
  except (OSError, ValueError, zlib.error) as e:
    raise errors.CorruptImageError(name, f"{type(e).__name__}: {e}") from e
  if arr is None:
    img = _decode(io.BytesIO(data), name, min_side=min_side)
    try:
      arr = _pil_pixels(img)
    except _DECODE_ERRORS as e:
      raise errors.CorruptImageError(name, f"{type(e).__name__}: {e}") from e
  try:
    return np.ascontiguousarray(to_rgb_uint8(arr))
  except ValueError as e:
    raise errors.CorruptImageError(name, str(e)) from e


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


def _real_dirs(directory: str) -> set[str]:
  """Real paths of ``directory`` and every folder under it, symlinks not
  followed."""
  return {os.path.realpath(root) for root, _, _ in os.walk(directory)}


def list_images_recursive(directory: PathLike) -> list[str]:
  """Every image file under ``directory`` (any depth), sorted by path.

  Hidden files and folders (a leading ``.``) are skipped, and so are
  dicofun's own output folders (those holding ``fileio.MARKER``), so an old
  report's thumbnails are never read as images. Symlinked folders are
  followed, each real folder once: a link to a folder already in the tree
  (or to one of its ancestors: a loop) is skipped, and a folder reached both
  ways is listed under its real path. Matching is by extension
  (IMAGE_EXTENSIONS, any case); whether a file decodes is ``screen_images``'
  question.
  """
  directory = os.fspath(directory)
  seen = _real_dirs(directory)  # Reached without links: listed there.
  visited = set()
  found = []
  for root, dirs, files in os.walk(directory, followlinks=True):
    real = os.path.realpath(root)
    if real in visited:
      dirs[:] = []
      continue
    visited.add(real)
    keep = []
    for d in sorted(dirs):
      full = os.path.join(root, d)
      if d.startswith("."):
        continue
      if os.path.isfile(os.path.join(full, fileio.MARKER)):
        logging.warning("skipping %s: a dicofun output folder", full)
        continue
      if os.path.islink(full):
        target = os.path.realpath(full)
        if target in seen or target in visited:
          logging.info("not following the symlink %s: %s is scanned anyway "
                       "(or a loop)", full, target)
          continue
        seen |= _real_dirs(target)
      keep.append(d)
    dirs[:] = keep
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


def _probe(path: str, min_size: int = 0, max_pixels: Optional[int] = None
           ) -> tuple[Optional[tuple[int, int]], str]:
  """((width, height), "") when ``path`` decodes, else (None, reason)."""
  try:
    if os.path.getsize(path) == 0:
      return None, "empty file (0 bytes)"
    arr = load_image(path, min_side=max(min_size, 1), max_pixels=max_pixels)
  except OSError as e:
    return None, f"{type(e).__name__}: {e}"
  except errors.CorruptImageError as e:
    return None, e.reason or str(e)
  except errors.DatasetError as e:
    return None, str(e)
  return (int(arr.shape[1]), int(arr.shape[0])), ""


def screen_images(paths: Sequence[str], *, min_size: int = 0,
                  max_pixels: Optional[int] = None,
                  num_workers: int = 4,
                  desc: Optional[str] = "reading images") -> Screened:
  """Decodes every image once and sorts them into readable and unreadable.

  A user's folder from a line may hold a truncated upload or an empty file;
  those are reported, not fatal, so one bad file never stops the others
  from being scored **(ours)**.

  Args:
    paths: image files.
    min_size: input side S; readable images narrower or lower than S are
      listed in ``small``; large images are decoded reduced for it.
    max_pixels: images with more pixels go to ``errors`` (None: no limit).
    num_workers: decoding threads.
    desc: progress label (None: quiet).

  Returns:
    A Screened.
  """
  paths = [os.fspath(p) for p in paths]
  out = Screened([], [], [])
  with concurrent.futures.ThreadPoolExecutor(max(1, num_workers)) as pool:
    results = pool.map(
        functools.partial(_probe, min_size=min_size, max_pixels=max_pixels),
        paths)
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
