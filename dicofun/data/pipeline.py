"""The input pipeline: records → preprocessed numpy arrays.

Records name files, or examples of a prepared TFDS dataset (``tfds://``
URIs, ``dicofun.data.tfds_source``); ``read_image``/``read_mask`` decode
either, so everything below (sharding included) is the same for both.

Two ways in:

* ``load_arrays`` decodes a whole (small) split into memory at once — the
  evaluation masks, the figures, feature caching of a few hundred images.
* ``iterate_batches`` streams fixed-size batches, shuffled by seed, each
  process reading only its shard, the next batch decoded in a thread pool
  while the current one is used.

Preprocessing (METHODS §1): resize the image to a square of side
``round(S / crop_fraction)``, centre-crop ``S``, normalise with the
backbone's mean/std. Masks take the same geometric path with nearest
resampling and are binarised, so image and mask stay aligned pixel for pixel.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
from typing import Any, Iterator, Optional, Sequence

from absl import logging
import numpy as np
from PIL import Image

from dicofun import progress as progress_lib
from dicofun.constants import IMAGENET_MEAN
from dicofun.constants import IMAGENET_STD
from dicofun.data import errors
from dicofun.data import images
from dicofun.data import mvtec
from dicofun.data import records as records_lib
from dicofun.data import tfds_source

Record = records_lib.Record

_RESAMPLE = {"bilinear": Image.Resampling.BILINEAR,
             "bicubic": Image.Resampling.BICUBIC}
# Image and mask whose aspect ratios differ by more than this cannot be
# aligned by resizing both to the same square **(ours)**.
_ASPECT_TOLERANCE = 0.02


@dataclasses.dataclass(frozen=True)
class Preprocess:
  """Geometric and photometric preprocessing of images and masks.

  Attributes:
    image_size: output side S.
    crop_fraction: S / resize side; 1.0 resizes straight to S (no crop),
      0.875 is 256 → 224.
    mean: per-channel mean subtracted after scaling pixels to [0, 1].
    std: per-channel std dividing after the mean is subtracted.
    resample: "bilinear" (torchvision's default, with PIL's antialiasing when
      downsizing) or "bicubic", for images; masks always use nearest.
    max_pixels: images with more pixels are refused (``images.load_image``);
      None: no limit. Larger images than the resize side needs are decoded
      reduced (``images.reduce_factor``).
  """

  image_size: int = 224
  crop_fraction: float = 0.875
  mean: tuple = IMAGENET_MEAN
  std: tuple = IMAGENET_STD
  resample: str = "bilinear"
  max_pixels: Optional[int] = None

  def __post_init__(self):
    if int(self.image_size) <= 0:
      raise ValueError(f"image_size must be positive, got {self.image_size}")
    if not 0.0 < float(self.crop_fraction) <= 1.0:
      raise ValueError(
          f"crop_fraction must be in (0, 1], got {self.crop_fraction}")
    if self.resample not in _RESAMPLE:
      raise ValueError(f"resample must be one of {sorted(_RESAMPLE)}, got "
                       f"{self.resample!r}")
    mean = tuple(float(m) for m in self.mean)
    std = tuple(float(s) for s in self.std)
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
      raise ValueError(f"mean/std must be 3 values (std > 0): {mean}, {std}")
    object.__setattr__(self, "image_size", int(self.image_size))
    object.__setattr__(self, "crop_fraction", float(self.crop_fraction))
    object.__setattr__(self, "mean", mean)
    object.__setattr__(self, "std", std)

  @property
  def resize_size(self) -> int:
    """Side of the square the input is resized to before the crop."""
    return max(self.image_size,
               int(round(self.image_size / self.crop_fraction)))

  def _crop_box(self) -> tuple[int, int, int, int]:
    off = (self.resize_size - self.image_size) // 2
    return (off, off, off + self.image_size, off + self.image_size)

  def image(self, img: np.ndarray) -> np.ndarray:
    """uint8 (H, W, 3) → normalised float32 (S, S, 3)."""
    img = np.asarray(img)
    if img.ndim == 2:
      img = np.repeat(img[..., None], 3, axis=-1)
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[-1] != 3:
      raise ValueError(f"expected uint8 (H, W, 3), got {img.dtype} "
                       f"{img.shape}")
    r = self.resize_size
    pil = Image.fromarray(img).resize((r, r), _RESAMPLE[self.resample])
    out = np.asarray(pil.crop(self._crop_box()), np.float32) / 255.0
    return ((out - np.asarray(self.mean, np.float32))
            / np.asarray(self.std, np.float32)).astype(np.float32)

  def mask(self, mask: np.ndarray) -> np.ndarray:
    """bool (H, W) → float32 (S, S) with values in {0, 1}."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
      raise ValueError(f"expected a (H, W) mask, got shape {mask.shape}")
    r = self.resize_size
    pil = Image.fromarray((mask > 0).astype(np.uint8) * 255)
    pil = pil.resize((r, r), Image.Resampling.NEAREST).crop(self._crop_box())
    return (np.asarray(pil, np.float32) / 255.0 > 0.5).astype(np.float32)

  def key(self) -> str:
    """A string naming this preprocessing, for cache keys."""
    fmt = lambda v: ",".join(f"{x:.6g}" for x in v)
    return (f"S{self.image_size}-crop{self.crop_fraction:.6g}-"
            f"resize{self.resize_size}-{self.resample}-"
            f"mean{fmt(self.mean)}-std{fmt(self.std)}")


def preprocess_for(config, *, mean: Optional[Sequence[float]] = None,
                   std: Optional[Sequence[float]] = None) -> Preprocess:
  """The preprocessing of a run config's ``config.dataset`` block.

  Args:
    config: a run config (reads ``dataset.image_size``,
      ``dataset.crop_fraction``, ``dataset.max_image_pixels``).
    mean: optional normalisation mean (a backbone's); default ImageNet's.
    std: the matching std.
  """
  kw = {}
  if mean is not None:
    kw.update(mean=tuple(mean), std=tuple(std))
  return Preprocess(image_size=config.dataset.image_size,
                    crop_fraction=config.dataset.crop_fraction,
                    max_pixels=max_image_pixels(config), **kw)


def max_image_pixels(config) -> Optional[int]:
  """``config.dataset.max_image_pixels`` (0 or absent: no limit)."""
  return int(config.dataset.get("max_image_pixels", 0)) or None


def _expected_mask(record: Record) -> Optional[str]:
  if tfds_source.is_uri(record.image_path):
    return None
  return mvtec.expected_mask_path(record.image_path)


def read_image(path: str, *, min_side: Optional[int] = None,
               max_pixels: Optional[int] = None) -> np.ndarray:
  """uint8 (H, W, 3) of an image file or a ``tfds://`` example
  (``images.load_image``'s ``min_side``, ``max_pixels``; a tfds example is
  decoded as stored)."""
  if tfds_source.is_uri(path):
    return tfds_source.load_image(path)
  return images.load_image(path, min_side=min_side, max_pixels=max_pixels)


def read_mask(path: str) -> np.ndarray:
  """bool (H, W) of a mask file or a ``tfds://`` example's mask."""
  if tfds_source.is_uri(path):
    return tfds_source.load_mask(path)
  return images.load_mask(path)


def _missing_masks(records: Sequence[Record]) -> list[int]:
  return [i for i, r in enumerate(records)
          if r.label == records_lib.ANOMALOUS and r.mask_path is None]


def _check_masks(records: Sequence[Record], allow_missing_mask: bool,
                 what: Optional[str]) -> None:
  missing = _missing_masks(records)
  if not missing:
    return
  first = records[missing[0]]
  if not allow_missing_mask:
    raise errors.MissingMaskError(first.image_path, _expected_mask(first),
                                  count=len(missing))
  if what is None:  # Quiet mode (callers loading many small chunks).
    return
  logging.warning(
      "%s: %d anomalous image(s) have no mask (first: %s); their mask is all "
      "zeros and has_mask is False", what, len(missing), first.image_path)


def _load_one(record: Record, pre: Preprocess, with_image: bool,
              with_mask: bool = True
              ) -> tuple[Optional[np.ndarray], np.ndarray, bool]:
  """Decodes and preprocesses one record: (image, mask, has_mask)."""
  s = pre.image_size
  raw = (read_image(record.image_path, min_side=pre.resize_size,
                    max_pixels=pre.max_pixels) if with_image else None)
  image = None if raw is None else pre.image(raw)
  if record.label == records_lib.NORMAL:
    return image, np.zeros((s, s), np.float32), True
  if record.mask_path is None:
    return image, np.zeros((s, s), np.float32), False
  if not with_mask:
    return image, np.zeros((s, s), np.float32), True
  m = read_mask(record.mask_path)
  if raw is not None and m.shape != raw.shape[:2]:
    a_img = raw.shape[1] / raw.shape[0]
    a_mask = m.shape[1] / m.shape[0]
    if abs(a_img / a_mask - 1.0) > _ASPECT_TOLERANCE:
      raise errors.DatasetError(
          f"mask {record.mask_path!r} ({m.shape[1]}x{m.shape[0]}) does not "
          f"match image {record.image_path!r} "
          f"({raw.shape[1]}x{raw.shape[0]})")
    logging.log_first_n(
        logging.WARNING, "mask %s is %s, its image %s; resizing both", 3,
        record.mask_path, m.shape, raw.shape[:2])
  return image, pre.mask(m), True


def load_arrays(records: Sequence[Record], pre: Preprocess, *,
                num_workers: int = 4, allow_missing_mask: bool = False,
                desc: Optional[str] = "images", with_images: bool = True,
                with_masks: bool = True) -> dict[str, np.ndarray]:
  """Decodes and preprocesses all ``records`` into memory.

  Args:
    records: the records, in the order of the output rows.
    pre: the preprocessing.
    num_workers: decoding threads.
    allow_missing_mask: when False, an anomalous record without a mask
      raises MissingMaskError (before anything is decoded); when True its
      mask is zeros and ``has_mask`` False (one warning with the count).
    desc: label of the progress log; None is quiet (no progress lines, no
      missing-mask warning), for callers that load many small chunks.
    with_images: decode images too; False returns only masks, labels and
      has_mask (masks need no image decoding), e.g. for evaluation **(ours)**.
    with_masks: decode mask files; False leaves every mask zeros (has_mask
      still tells which masks exist), e.g. for feature extraction **(ours)**.

  Returns:
    ``image`` (N, S, S, 3) float32 (when with_images), ``mask`` (N, S, S)
    float32 in {0, 1} (zeros for normals), ``label`` (N,) int32,
    ``has_mask`` (N,) bool (True for normals).

  Raises:
    MissingMaskError, CorruptImageError, DatasetError.
  """
  records = list(records)
  _check_masks(records, allow_missing_mask, desc)
  n, s = len(records), pre.image_size
  out = {}
  if with_images:
    out["image"] = np.empty((n, s, s, 3), np.float32)
  out["mask"] = np.zeros((n, s, s), np.float32)
  out["label"] = np.array([r.label for r in records], np.int32).reshape(n)
  out["has_mask"] = np.ones((n,), bool)
  # Only anomalous records need a file opened when images are skipped.
  todo = [i for i, r in enumerate(records)
          if with_images or (with_masks and r.label == records_lib.ANOMALOUS
                             and r.mask_path is not None)]
  out["has_mask"][_missing_masks(records)] = False
  if not todo:
    return out
  with concurrent.futures.ThreadPoolExecutor(max(1, num_workers)) as pool:
    results = pool.map(
        lambda i: _load_one(records[i], pre, with_images, with_masks), todo)
    if desc is not None:
      results = progress_lib.progress(results, total=len(todo), desc=desc)
    for i, (image, mask, has_mask) in zip(todo, results):
      if with_images:
        out["image"][i] = image
      out["mask"][i] = mask
      out["has_mask"][i] = has_mask
  return out


def shard_indices(n: int, *, process_index: int, process_count: int,
                  pad: bool = False) -> np.ndarray:
  """Positions ``[0, n)`` owned by one process: contiguous, equal-size shards.

  Every process gets the same number of positions so that all of them run
  the same number of steps (collectives would otherwise hang). Remainder:
  with ``pad=False`` each shard has ``n // process_count`` positions and the
  last ``n % process_count`` positions are not used by anyone (with a
  shuffled order these are different items every epoch); with ``pad=True``
  each shard has ``ceil(n / process_count)`` positions, every position is
  used exactly once and the missing slots at the end of the last shard(s)
  are ``-1``.

  Args:
    n: number of items.
    process_index: this process, in [0, process_count).
    process_count: number of processes.
    pad: see above.

  Returns:
    int64 array of positions (``-1`` = padding).
  """
  if process_count < 1 or not 0 <= process_index < process_count:
    raise ValueError(f"bad process_index={process_index} / "
                     f"process_count={process_count}")
  size = -(-n // process_count) if pad else n // process_count
  idx = np.arange(process_index * size, (process_index + 1) * size,
                  dtype=np.int64)
  if pad:
    idx[idx >= n] = -1
  return idx


def _default_process(process_index: Optional[int],
                     process_count: Optional[int]) -> tuple[int, int]:
  if process_index is None or process_count is None:
    import jax  # pylint: disable=g-import-not-at-top
    if process_index is None:
      process_index = jax.process_index()
    if process_count is None:
      process_count = jax.process_count()
  return int(process_index), int(process_count)


def batch_order(n: int, *, shuffle: bool, seed: int) -> np.ndarray:
  """The global order of the items of one pass (before sharding)."""
  if shuffle:
    return np.random.default_rng(seed).permutation(n).astype(np.int64)
  return np.arange(n, dtype=np.int64)


def iterate_batches(records: Sequence[Record], pre: Preprocess, *,
                    batch_size: int, shuffle: bool = False, seed: int = 0,
                    drop_last: bool = False,
                    process_index: Optional[int] = None,
                    process_count: Optional[int] = None,
                    num_workers: int = 4, allow_missing_mask: bool = True,
                    prefetch: int = 2) -> Iterator[dict[str, np.ndarray]]:
  """Streams preprocessed batches of this process's shard, one pass.

  The global order is ``np.random.default_rng(seed).permutation(N)`` when
  shuffling (pass a different seed per epoch), else the record order; it is
  then split into contiguous per-process shards (``shard_indices``), so
  every process draws the same permutation and reads only its part.
  ``batch_size`` is the per-process batch size.

  Args:
    records: the records.
    pre: the preprocessing.
    batch_size: images per batch on this process.
    shuffle: shuffle the order with ``seed``.
    seed: seed of the shuffle.
    drop_last: drop the last partial batch (and the items that do not fill
      equal shards). When False every item is yielded once over all
      processes; the last batch may be smaller, and when ``process_count``
      does not divide N some shards end with padding rows (``index == -1``,
      zero image and mask, label 0, has_mask False).
    process_index: this process (default ``jax.process_index()``).
    process_count: number of processes (default ``jax.process_count()``).
    num_workers: decoding threads.
    allow_missing_mask: see ``load_arrays`` (default True: training does not
      need masks).
    prefetch: number of batches decoded ahead.

  Yields:
    dicts with ``image`` (B, S, S, 3) float32, ``mask`` (B, S, S) float32,
    ``label`` (B,) int32, ``has_mask`` (B,) bool and ``index`` (B,) int64
    (position in ``records``).
  """
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size}")
  records = list(records)
  _check_masks(records, allow_missing_mask, "batches")
  pi, pc = _default_process(process_index, process_count)
  order = batch_order(len(records), shuffle=shuffle, seed=seed)
  pos = shard_indices(len(order), process_index=pi, process_count=pc,
                      pad=not drop_last)
  local = np.where(pos >= 0, order[np.maximum(pos, 0)] if len(order) else -1,
                   -1)
  batches = [local[i:i + batch_size] for i in range(0, len(local), batch_size)]
  if drop_last and batches and len(batches[-1]) < batch_size:
    batches.pop()
  s = pre.image_size

  def load(i: int):
    if i < 0:
      return (np.zeros((s, s, 3), np.float32), np.zeros((s, s), np.float32),
              False)
    return _load_one(records[i], pre, True)

  pool = concurrent.futures.ThreadPoolExecutor(max(1, num_workers))
  queue: collections.deque = collections.deque()
  try:
    it = iter(batches)

    def submit() -> None:
      b = next(it, None)
      if b is not None:
        queue.append((b, [pool.submit(load, int(i)) for i in b]))

    for _ in range(max(1, prefetch)):
      submit()
    while queue:
      idx, futures = queue.popleft()
      submit()  # Keeps `prefetch` batches decoding while this one is used.
      loaded = [f.result() for f in futures]
      yield {
          "image": np.stack([x[0] for x in loaded]),
          "mask": np.stack([x[1] for x in loaded]),
          "label": np.array([records[i].label if i >= 0 else 0 for i in idx],
                            np.int32),
          "has_mask": np.array([x[2] for x in loaded], bool),
          "index": np.asarray(idx, np.int64),
      }
  finally:
    pool.shutdown(wait=False, cancel_futures=True)


def num_batches(n: int, *, batch_size: int, drop_last: bool,
                process_count: int = 1) -> int:
  """Batches per process that ``iterate_batches`` yields for ``n`` records."""
  if drop_last:
    return (n // process_count) // batch_size
  return -(-(-(-n // process_count)) // batch_size)


def describe(records: Sequence[Record]) -> dict[str, Any]:
  """Counts per split / label / defect, for logs and results."""
  return {"/".join(map(str, k)): v for k, v in sorted(
      records_lib.count_by(records, "split", "label", "defect").items())}
