"""TensorBoard summaries: tensorboardX writes them, a small reader reads them.

``SummaryWriter`` writes through tensorboardX (a maintained writer that needs
neither TensorFlow nor torch; the class says which part) and adds what dicofun
needs: a disabled writer on processes that must not write (so callers need no
``if``), a file name unique per writer (tensorboardX names files by the second
and host only, so two writers of one process in the same second would share a
file), the path of the event file, and a real ``flush``. Training writes
through it live: ``training.run_loop`` flushes after every epoch, so
``tensorboard --logdir <workdir>/tensorboard`` shows a run while it trains.

tensorboardX has no reader; ``read_events`` parses event files back (the
TFRecord framing, then tensorboardX's own ``Event`` protobuf) for tests and
for tools that want a run's curves without TensorBoard. It reads a file that
is still being written up to its last complete record.
"""

from __future__ import annotations

import glob
import itertools
import os
import struct
import time
from typing import Iterator, Mapping, Optional

from absl import logging
import numpy as np
from tensorboardX import event_file_writer
from tensorboardX import summary as tb_summary
from tensorboardX.proto import event_pb2
from tensorboardX.proto import summary_pb2

TENSORBOARD_DIR = "tensorboard"  # Under a run's workdir.

_serial = itertools.count()  # Makes each writer's file name unique.


class SummaryWriter:
  """Writes scalar and image summaries to ``<logdir>/events.out.tfevents.*``.

  The events are built by ``tensorboardX.summary`` and written by
  tensorboardX's synchronous ``EventsWriter`` (framing and checksums are
  tensorboardX's): ``flush`` puts every event written so far on disk. (The
  queued ``tensorboardX.SummaryWriter`` flushes only what its background
  thread has dequeued, so a flushed epoch could still be missing.)

  Only the writing process should pass ``enabled=True`` (the runner passes
  ``jax.process_index() == 0``); a disabled writer accepts every call and
  writes nothing.

  Attributes:
    enabled: whether this writer writes.
    path: its event file (None when disabled).
  """

  def __init__(self, logdir: str, *, enabled: bool = True,
               filename_suffix: str = ""):
    """Opens a new event file.

    Args:
      logdir: directory of the event file (created).
      enabled: False on processes that must not write.
      filename_suffix: appended to the file name (after a ``.<pid>.<n>``
        that makes the name unique).
    """
    self.enabled = enabled
    self.path: Optional[str] = None
    self._writer = None
    if not enabled:
      return
    os.makedirs(logdir, exist_ok=True)
    suffix = f".{os.getpid()}.{next(_serial)}{filename_suffix}"
    # Writes the file-version event TensorBoard expects first.
    self._writer = event_file_writer.EventsWriter(
        os.path.join(logdir, "events"), suffix)
    self._writer.flush()
    found = glob.glob(os.path.join(glob.escape(logdir),
                                   f"events.out.tfevents.*{suffix}"))
    self.path = found[0] if len(found) == 1 else None
    logging.info("TensorBoard events: %s", self.path or logdir)

  def _write(self, value: summary_pb2.Summary, step: int) -> None:
    self._writer.write_event(event_pb2.Event(
        wall_time=time.time(), step=int(step), summary=value))

  def scalar(self, tag: str, value: float, step: int) -> None:
    """Writes one scalar value."""
    if self._writer is not None:
      self._write(tb_summary.scalar(tag, float(value)), step)

  def scalars(self, values: Mapping[str, float], step: int) -> None:
    """Writes several scalars of one step (one event each)."""
    for tag, value in values.items():
      self.scalar(tag, value, step)

  def image(self, tag: str, image: np.ndarray, step: int) -> None:
    """Writes an (H, W, 3) uint8 RGB image (PNG-encoded by tensorboardX)."""
    if self._writer is None:
      return
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
      raise ValueError(f"expected an (H, W, 3) uint8 image, got "
                       f"{image.shape} {image.dtype}")
    self._write(tb_summary.image(tag, image, dataformats="HWC"), step)

  def flush(self) -> None:
    """Puts everything written so far on disk (a reader sees it now)."""
    if self._writer is not None:
      self._writer.flush()

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()
      self._writer = None

  def __enter__(self) -> "SummaryWriter":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


# ----------------------------------------------------------------------------
# Reading.


def read_records(path: str) -> Iterator[bytes]:
  """The data of each complete TFRecord in ``path``.

  A TFRecord is ``uint64 length, uint32 crc, data, uint32 crc``; the
  checksums are not verified (the protobuf parse rejects garbage). A record
  cut off at the end (a file still being written) ends the iteration.
  """
  with open(path, "rb") as f:
    while True:
      header = f.read(12)
      if len(header) < 12:
        return
      (length,) = struct.unpack("<Q", header[:8])
      data = f.read(length)
      if len(data) < length or len(f.read(4)) < 4:
        return
      yield data


def event_files(path: str) -> list[str]:
  """``path`` itself, or the event files under directory ``path`` (sorted)."""
  if os.path.isdir(path):
    return sorted(glob.glob(os.path.join(glob.escape(path), "**",
                                         "events.out.tfevents.*"),
                            recursive=True))
  return [path]


def read_events(path: str) -> Iterator[event_pb2.Event]:
  """The ``Event`` protos of an event file, or of every one under a dir."""
  for name in event_files(path):
    for data in read_records(name):
      yield event_pb2.Event.FromString(data)


def read_scalars(path: str) -> dict[str, list[tuple[int, float]]]:
  """``{tag: [(step, value), ...]}`` of an event file or a directory of them.

  Values are in file order (files sorted by name: their creation time).
  """
  out: dict[str, list[tuple[int, float]]] = {}
  for event in read_events(path):
    for value in event.summary.value:
      if value.HasField("simple_value"):
        out.setdefault(value.tag, []).append(
            (int(event.step), float(value.simple_value)))
  return out


def read_images(path: str) -> dict[str, list[tuple[int, bytes]]]:
  """``{tag: [(step, PNG bytes), ...]}`` of the image summaries."""
  out: dict[str, list[tuple[int, bytes]]] = {}
  for event in read_events(path):
    for value in event.summary.value:
      if value.HasField("image"):
        out.setdefault(value.tag, []).append(
            (int(event.step), bytes(value.image.encoded_image_string)))
  return out
