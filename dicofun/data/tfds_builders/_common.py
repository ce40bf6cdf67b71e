"""What the MVTec AD and VisA TFDS builders share: features and encoding.

Encoding without TensorFlow **(ours)**: in tensorflow-datasets 4.9.10,
``tfds.features.Image.encode_example`` runs ``tf.image.encode_png`` on numpy
arrays (so it needs TensorFlow), but stores ``bytes``, file paths and PIL
images as they are. The builders therefore always hand it encoded bytes:

* an image file that already is what the feature declares (an 8-bit RGB PNG
  for MVTec AD, an 8-bit RGB JPEG for VisA) is stored byte for byte, so no
  quality is lost and nothing is re-compressed;
* anything else (grayscale MVTec categories such as grid/screw/zipper, RGBA,
  16-bit) is decoded with ``dicofun.data.images.load_image`` (uint8 RGB) and
  stored as a lossless RGB PNG;
* masks are decoded with ``images.load_mask`` and stored as 1-channel PNGs
  with values 0/255; normal images get an all-zero mask of their size.

Reading (``tfds.data_source``) decodes with OpenCV when installed, else PIL,
again without TensorFlow. Records are written as ``array_record`` files.
"""

from __future__ import annotations

import io
import os
from typing import Iterator, Optional, Sequence

import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

from dicofun.data import images
from dicofun.data import records as records_lib

LABEL_NAMES = ("normal", "anomalous")
FILE_FORMAT = "array_record"


class ArrayRecordByDefault:
  """Builder mixin: write ``array_record`` unless told otherwise **(ours)**.

  TFDS defaults to TFRecord, which ``tfds.data_source`` cannot read; with
  this default, ``tfds.data_source("mvtec_ad/bottle", ...)`` works without
  ``builder_kwargs={"file_format": ...}``.
  """

  def __init__(self, *, file_format=None, **kwargs):
    super().__init__(file_format=file_format or FILE_FORMAT, **kwargs)


def features(*, image_format: str) -> tfds.features.FeaturesDict:
  """The feature spec of both builders.

  Args:
    image_format: "png" or "jpeg": the encoding of ``image`` (the format the
      dataset ships in, so that files can be copied unchanged).

  Returns:
    ``image`` uint8 (H, W, 3); ``mask`` uint8 (H, W, 1), 0/255; ``label``
    0 normal / 1 anomalous; ``defect`` ("good" for normal images) and
    ``filename`` (the path relative to the dataset folder), read back as
    ``bytes``.
  """
  return tfds.features.FeaturesDict({
      "image": tfds.features.Image(shape=(None, None, 3), dtype=np.uint8,
                                   encoding_format=image_format),
      "mask": tfds.features.Image(shape=(None, None, 1), dtype=np.uint8,
                                  encoding_format="png"),
      "label": tfds.features.ClassLabel(names=list(LABEL_NAMES)),
      "defect": tfds.features.Text(),
      "filename": tfds.features.Text(),
  })


def png_bytes(array: np.ndarray) -> bytes:
  """Lossless PNG of a uint8 (H, W, 3) or (H, W) array."""
  buf = io.BytesIO()
  Image.fromarray(np.ascontiguousarray(array)).save(buf, format="PNG")
  return buf.getvalue()


_PIL_FORMATS = {"png": "PNG", "jpeg": "JPEG"}


def encode_image(path: str, *,
                 image_format: str) -> tuple[bytes, tuple[int, int]]:
  """Encoded bytes of an image file for the ``image`` feature.

  Args:
    path: image file.
    image_format: the feature's declared encoding ("png" or "jpeg").

  Returns:
    (bytes, (height, width)).
  """
  try:
    with Image.open(path) as im:  # Reads the header only.
      fmt, mode, (w, h) = im.format, im.mode, im.size
  except (OSError, SyntaxError, ValueError):
    fmt = mode = None  # load_image below raises the library's error.
  if fmt == _PIL_FORMATS[image_format] and mode == "RGB":
    with open(path, "rb") as f:
      return f.read(), (h, w)
  array = images.load_image(path)
  return png_bytes(array), array.shape[:2]


def encode_mask(mask_path: Optional[str], size: tuple[int, int], *,
                image_path: str) -> bytes:
  """PNG bytes of the (H, W, 1) 0/255 mask; all zero when ``mask_path`` is None.

  Raises:
    ValueError: the mask's size differs from the image's.
  """
  if mask_path is None:
    mask = np.zeros(size, np.uint8)
  else:
    mask = images.load_mask(mask_path).astype(np.uint8) * 255
    if mask.shape != tuple(size):
      raise ValueError(
          f"mask {mask_path!r} is {mask.shape[1]}x{mask.shape[0]} but its "
          f"image {image_path!r} is {size[1]}x{size[0]}")
  return png_bytes(mask)


def generate_examples(records: Sequence[records_lib.Record], *, root: str,
                      image_format: str) -> Iterator[tuple[str, dict]]:
  """``(key, example)`` pairs of one split.

  Args:
    records: the split's records.
    root: folder the ``filename`` (and key) are made relative to.
    image_format: the ``image`` feature's encoding.

  Yields:
    key (the relative image path, unique within a split) and the example.
  """
  for r in records:
    rel = os.path.relpath(r.image_path, root).replace(os.sep, "/")
    image, size = encode_image(r.image_path, image_format=image_format)
    mask = encode_mask(r.mask_path, size, image_path=r.image_path)
    yield rel, {
        "image": image,
        "mask": mask,
        "label": int(r.label),
        "defect": r.defect,
        "filename": rel,
    }


def by_split(records: Sequence[records_lib.Record]
             ) -> dict[str, list[records_lib.Record]]:
  """Records grouped into "train" and "test" (empty splits left out)."""
  out = {}
  for split in ("train", "test"):
    rs = [r for r in records if r.split == split]
    if rs:
      out[split] = rs
  return out
