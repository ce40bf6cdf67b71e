"""Prepared TFDS datasets (``mvtec_ad``, ``visa``) as a source of records.

With ``config.dataset.source = "tfds"`` the records of a run come from one
dataset prepared by ``dicofun.data.tfds_builders`` (``array_record`` files,
read by random access through ``tfds.data_source``, no TensorFlow) instead of
the image folders. Each record names its example by a URI::

  tfds://<data_dir, %-quoted>/<builder>/<config>/<split>/<filename>#<index>

``index`` is the example's position in the split's data source (random
access); ``filename`` is its path relative to the dataset folder, put before
the index so that sorting URIs sorts like sorting the folder paths (the
contamination draw sorts anomalies by ``image_path`` and so moves the same
images with either source). An anomalous record's ``mask_path`` is the same
URI: its mask is the example's ``mask`` feature.

Images and masks are read as encoded bytes and decoded with
``dicofun.data.images`` (PIL), exactly as the files are, so both sources give
the same pixels. Each data source is opened once per process and cached;
reading is thread safe (the pipeline decodes in a thread pool). The feature
cache keys a record by ``signature``: its URI and the size and modification
time of its split's files, the counterpart of a file's path, size and mtime.

``tensorflow_datasets`` is imported on first use only, so runs reading
folders do not pay for importing it.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import threading
import urllib.parse
from typing import Any, Callable, Sequence

import numpy as np

from dicofun.data import errors
from dicofun.data import images
from dicofun.data import records as records_lib

SCHEME = "tfds://"
_SPLITS = ("train", "test")


def is_uri(path: str) -> bool:
  """Whether ``path`` names a TFDS example rather than a file."""
  return isinstance(path, str) and path.startswith(SCHEME)


@dataclasses.dataclass(frozen=True)
class Example:
  """The parts of a ``tfds://`` URI."""

  data_dir: str
  builder: str
  config: str
  split: str
  filename: str
  index: int


def make_uri(example: Example) -> str:
  """The URI of ``example`` (see the module docstring)."""
  return (f"{SCHEME}{urllib.parse.quote(example.data_dir, safe='')}/"
          f"{example.builder}/{example.config}/{example.split}/"
          f"{example.filename}#{example.index}")


def parse_uri(uri: str) -> Example:
  """Inverse of ``make_uri``.

  Raises:
    DatasetError: ``uri`` is not a well-formed ``tfds://`` URI.
  """
  body, sep, index = uri[len(SCHEME):].rpartition("#")
  parts = body.split("/", 4)
  if not is_uri(uri) or not sep or not index.isdigit() or len(parts) != 5:
    raise errors.DatasetError(
        f"{uri!r} is not a dicofun TFDS URI "
        f"({SCHEME}<data_dir>/<builder>/<config>/<split>/<filename>#<index>)")
  data_dir, builder, config, split, filename = parts
  return Example(urllib.parse.unquote(data_dir), builder, config, split,
                 filename, int(index))


def dataset_dir(data_dir: str, builder: str, config: str) -> str:
  """Where TFDS puts ``builder/config`` under ``data_dir`` (versions below)."""
  return os.path.join(data_dir, builder, config)


def build_command(builder: str, config: str, data_dir: str) -> str:
  """The command that prepares ``builder/config`` under ``data_dir``."""
  return (f"python -m dicofun.data.tfds_builders --builder={builder} "
          f"--category={config} --manual_dir=<the extracted download> "
          f"--data_dir={data_dir}")


def _prepared_version_dir(data_dir: str, builder: str, config: str) -> str:
  """The newest prepared version folder, or raises naming the fix."""
  where = dataset_dir(data_dir, builder, config)
  found = sorted(
      (os.path.dirname(p) for p in glob.glob(
          os.path.join(glob.escape(where), "*", "dataset_info.json"))),
      key=lambda d: [int(x) if x.isdigit() else x
                     for x in os.path.basename(d).split(".")])
  if not found:
    raise errors.TfdsNotPreparedError(
        where, name=f"{builder}/{config}",
        command=build_command(builder, config, data_dir))
  return found[-1]


class _Source:
  """One prepared ``builder/config``: its splits, opened once."""

  def __init__(self, data_dir: str, builder: str, config: str):
    self.version_dir = _prepared_version_dir(data_dir, builder, config)
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    # Encoded bytes come back as they are stored; dicofun decodes them.
    skip = {"image": tfds.decode.SkipDecoding(),
            "mask": tfds.decode.SkipDecoding()}
    version = os.path.basename(self.version_dir)
    self.splits = tfds.data_source(
        f"{builder}/{config}:{version}", data_dir=data_dir, download=False,
        decoders=skip)
    self._lock = threading.Lock()
    self._stats: dict[str, list] = {}

  def split(self, split: str):
    if split not in self.splits:
      raise errors.DatasetError(
          f"split {split!r} not in the prepared TFDS dataset "
          f"{self.version_dir!r} (splits: {sorted(self.splits)})")
    return self.splits[split]

  def example(self, split: str, index: int) -> dict[str, Any]:
    source = self.split(split)
    if not 0 <= index < len(source):
      raise errors.DatasetError(
          f"example {index} out of range: {split} of {self.version_dir!r} "
          f"has {len(source)} examples (was the dataset rebuilt?)")
    with self._lock:  # The array_record readers are shared by threads.
      return source[index]

  def file_stats(self, split: str) -> list:
    """[total bytes, newest mtime] of the split's array_record files."""
    with self._lock:
      if split not in self._stats:
        files = glob.glob(os.path.join(glob.escape(self.version_dir),
                                       f"*-{split}.array_record*"))
        st = [os.stat(f) for f in files]
        self._stats[split] = [sum(s.st_size for s in st),
                              max((int(s.st_mtime) for s in st), default=-1)]
      return self._stats[split]


_SOURCES: dict[tuple[str, str, str], _Source] = {}
_SOURCES_LOCK = threading.Lock()


def _source(data_dir: str, builder: str, config: str) -> _Source:
  key = (os.path.abspath(data_dir), builder, config)
  with _SOURCES_LOCK:
    if key not in _SOURCES:
      _SOURCES[key] = _Source(*key)
    return _SOURCES[key]


def _fetch(uri: str) -> tuple[Example, dict[str, Any]]:
  ex = parse_uri(uri)
  return ex, _source(ex.data_dir, ex.builder, ex.config).example(
      ex.split, ex.index)


def load_image(uri: str) -> np.ndarray:
  """The example's image as uint8 (H, W, 3) (see ``images.load_image``)."""
  _, example = _fetch(uri)
  return images.decode_image(example["image"], name=uri)


def load_mask(uri: str) -> np.ndarray:
  """The example's mask as bool (H, W) (see ``images.load_mask``)."""
  _, example = _fetch(uri)
  return images.decode_mask(example["mask"], name=uri)


def signature(uri: str) -> list:
  """What the feature cache keys a record by: [uri, bytes, mtime]."""
  ex = parse_uri(uri)
  try:
    return [uri] + _source(ex.data_dir, ex.builder, ex.config).file_stats(
        ex.split)
  except errors.DatasetError:
    return [uri, -1, -1]


def _mvtec_order(r: records_lib.Record, filename: str) -> tuple:
  # read_mvtec: train/good, then test/good, then the defects alphabetically,
  # each folder sorted by file name.
  return (_SPLITS.index(r.split), r.defect != records_lib.GOOD, r.defect,
          os.path.basename(filename))


def _visa_order(r: records_lib.Record, filename: str) -> tuple:
  # read_visa: (split, label, image path).
  return (_SPLITS.index(r.split), r.label, filename)


# Builder → the sort key giving the order of its folder reader.
ORDERS: dict[str, Callable[[records_lib.Record, str], tuple]] = {
    "mvtec_ad": _mvtec_order,
    "visa": _visa_order,
}


def read_records(builder: str, config: str, *, data_dir: str,
                 category: str) -> list[records_lib.Record]:
  """All records of a prepared dataset, in its folder reader's order.

  Reads every example once (bytes, not decoded; masks of anomalous examples
  are decoded to tell an all-zero mask, which the builders write for a
  missing mask file, from a real one: such records get ``mask_path=None``,
  as the folder readers give them).

  Args:
    builder: "mvtec_ad" or "visa" (a key of ``ORDERS``).
    config: the builder config (the category).
    data_dir: the TFDS data directory holding the prepared dataset.
    category: the records' ``category``.

  Returns:
    Records of both splits whose ``image_path`` (and ``mask_path``) are
    ``tfds://`` URIs.

  Raises:
    TfdsNotPreparedError: the dataset is not prepared under ``data_dir``
      (the message names the directory and the command that prepares it).
  """
  if builder not in ORDERS:
    raise errors.DatasetError(f"no TFDS record order for builder {builder!r}; "
                              f"known: {sorted(ORDERS)}")
  data_dir = os.path.abspath(os.path.expanduser(data_dir))
  source = _source(data_dir, builder, config)
  keyed = []
  for split in _SPLITS:
    if split not in source.splits:
      continue
    for i in range(len(source.split(split))):
      example = source.example(split, i)
      filename = example["filename"].decode()
      label = int(example["label"])
      uri = make_uri(Example(data_dir, builder, config, split, filename, i))
      mask = None
      if label == records_lib.ANOMALOUS and images.decode_mask(
          example["mask"], name=uri).any():
        mask = uri
      r = records_lib.Record(image_path=uri, mask_path=mask, label=label,
                             defect=example["defect"].decode(), split=split,
                             category=category)
      keyed.append((ORDERS[builder](r, filename), r))
  keyed.sort(key=lambda kr: kr[0])
  return [r for _, r in keyed]


def filenames(records: Sequence[records_lib.Record]) -> list[str]:
  """The dataset-relative file names of tfds records (for logs and tests)."""
  return [parse_uri(r.image_path).filename for r in records]
