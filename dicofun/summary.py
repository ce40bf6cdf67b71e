"""TensorBoard scalar summaries without TensorFlow, torch or tensorboard.

An event file is a sequence of TFRecords, each framed as::

    uint64 length (little-endian)
    uint32 masked_crc32c(length bytes)
    bytes  data (a serialised ``tensorflow.Event`` protobuf)
    uint32 masked_crc32c(data)

The few protobuf fields needed are encoded by hand:

    Event:   wall_time double = 1; step int64 = 2; file_version string = 3;
             summary Summary = 5
    Summary: repeated Value value = 1
    Value:   tag string = 1; simple_value float = 2

so ``SummaryWriter`` works wherever numpy does; TensorBoard reads the files
(``tensorboard --logdir <workdir>``). ``read_scalars`` parses them back.
"""

from __future__ import annotations

import os
import socket
import struct
import time
from typing import Iterator, Mapping, Optional

from absl import logging


# ----------------------------------------------------------------------------
# CRC32C (Castagnoli), table driven; events are small, so pure Python is fast
# enough and needs no extra package.


def _make_table() -> list[int]:
  poly = 0x82F63B78  # reversed Castagnoli polynomial
  table = []
  for i in range(256):
    c = i
    for _ in range(8):
      c = (c >> 1) ^ poly if c & 1 else c >> 1
    table.append(c)
  return table


_TABLE = _make_table()


def crc32c(data: bytes) -> int:
  """CRC-32C of ``data`` (e.g. ``crc32c(b"123456789") == 0xE3069283``)."""
  crc = 0xFFFFFFFF
  table = _TABLE
  for b in data:
    crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
  return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
  """The TFRecord checksum: CRC-32C rotated right by 15 plus a constant."""
  crc = crc32c(data)
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def frame_record(data: bytes) -> bytes:
  """One TFRecord: length, its checksum, the data, the data's checksum."""
  header = struct.pack("<Q", len(data))
  return (header + struct.pack("<I", masked_crc32c(header)) + data +
          struct.pack("<I", masked_crc32c(data)))


def read_records(path: str) -> Iterator[bytes]:
  """The data of each TFRecord in ``path``; checksums are verified.

  Args:
    path: a TFRecord file (e.g. an event file).

  Yields:
    Each record's data bytes.

  Raises:
    ValueError: on a checksum mismatch or a truncated record.
  """
  with open(path, "rb") as f:
    while True:
      header = f.read(8)
      if not header:
        return
      if len(header) < 8:
        raise ValueError(f"{path}: truncated record header")
      (length,) = struct.unpack("<Q", header)
      (crc,) = struct.unpack("<I", f.read(4))
      if crc != masked_crc32c(header):
        raise ValueError(f"{path}: bad length checksum")
      data = f.read(length)
      footer = f.read(4)
      if len(data) < length or len(footer) < 4:
        raise ValueError(f"{path}: truncated record")
      if struct.unpack("<I", footer)[0] != masked_crc32c(data):
        raise ValueError(f"{path}: bad data checksum")
      yield data


# ----------------------------------------------------------------------------
# Minimal protobuf wire format.


def _varint(n: int) -> bytes:
  if n < 0:
    n += 1 << 64  # int64 negatives: 10-byte two's complement
  out = bytearray()
  while True:
    b = n & 0x7F
    n >>= 7
    if n:
      out.append(b | 0x80)
    else:
      out.append(b)
      return bytes(out)


def _key(field: int, wire_type: int) -> bytes:
  return _varint((field << 3) | wire_type)


def _len_field(field: int, payload: bytes) -> bytes:
  return _key(field, 2) + _varint(len(payload)) + payload


def encode_event(*, wall_time: float, step: int = 0,
                 file_version: Optional[str] = None,
                 scalars: Optional[Mapping[str, float]] = None) -> bytes:
  """A serialised ``Event`` with optional file version and scalar values."""
  out = _key(1, 1) + struct.pack("<d", wall_time)
  if step:
    out += _key(2, 0) + _varint(int(step))
  if file_version is not None:
    out += _len_field(3, file_version.encode())
  if scalars:
    summary = b"".join(
        _len_field(1, _len_field(1, tag.encode()) + _key(2, 5) +
                   struct.pack("<f", float(value)))
        for tag, value in scalars.items())
    out += _len_field(5, summary)
  return out


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
  shift = result = 0
  while True:
    b = buf[pos]
    pos += 1
    result |= (b & 0x7F) << shift
    shift += 7
    if not b & 0x80:
      return result, pos


def _fields(buf: bytes) -> Iterator[tuple[int, int, object]]:
  """(field number, wire type, value) of a serialised message."""
  pos = 0
  while pos < len(buf):
    key, pos = _read_varint(buf, pos)
    field, wire = key >> 3, key & 7
    if wire == 0:
      value, pos = _read_varint(buf, pos)
    elif wire == 1:
      value, pos = buf[pos:pos + 8], pos + 8
    elif wire == 2:
      n, pos = _read_varint(buf, pos)
      value, pos = buf[pos:pos + n], pos + n
    elif wire == 5:
      value, pos = buf[pos:pos + 4], pos + 4
    else:
      raise ValueError(f"unsupported wire type {wire}")
    yield field, wire, value


def decode_event(data: bytes) -> dict:
  """Decodes the fields ``encode_event`` writes.

  Returns:
    {"wall_time": float, "step": int, "file_version": str or None,
     "scalars": {tag: float}}.
  """
  event = {"wall_time": 0.0, "step": 0, "file_version": None, "scalars": {}}
  for field, _, value in _fields(data):
    if field == 1:
      event["wall_time"] = struct.unpack("<d", value)[0]
    elif field == 2:
      step = value
      event["step"] = step - (1 << 64) if step >= 1 << 63 else step
    elif field == 3:
      event["file_version"] = value.decode()
    elif field == 5:
      for f, _, v in _fields(value):
        if f != 1:
          continue
        tag, simple = None, None
        for vf, _, vv in _fields(v):
          if vf == 1:
            tag = vv.decode()
          elif vf == 2:
            simple = struct.unpack("<f", vv)[0]
        if tag is not None and simple is not None:
          event["scalars"][tag] = simple
  return event


def read_scalars(path: str) -> dict[str, list[tuple[int, float]]]:
  """{tag: [(step, value), ...]} from an event file (checksums verified)."""
  out: dict[str, list[tuple[int, float]]] = {}
  for data in read_records(path):
    event = decode_event(data)
    for tag, value in event["scalars"].items():
      out.setdefault(tag, []).append((event["step"], value))
  return out


# ----------------------------------------------------------------------------
# Writer.


class SummaryWriter:
  """Writes scalar summaries to ``<logdir>/events.out.tfevents.*``.

  Only the writing process should pass ``enabled=True`` (the runner passes
  ``jax.process_index() == 0``); a disabled writer accepts every call and
  writes nothing, so callers need no ``if``.
  """

  def __init__(self, logdir: str, *, enabled: bool = True,
               filename_suffix: str = ""):
    """Opens a new event file.

    Args:
      logdir: directory of the event file (created).
      enabled: False on processes that must not write.
      filename_suffix: appended to the file name.
    """
    self.enabled = enabled
    self.path: Optional[str] = None
    self._file = None
    if not enabled:
      return
    os.makedirs(logdir, exist_ok=True)
    name = (f"events.out.tfevents.{int(time.time()):010d}."
            f"{socket.gethostname()}.{os.getpid()}{filename_suffix}")
    self.path = os.path.join(logdir, name)
    self._file = open(self.path, "wb")
    # TensorBoard expects the first event to carry the file version.
    self._write(encode_event(wall_time=time.time(),
                             file_version="brain.Event:2"))
    self.flush()
    logging.info("TensorBoard events: %s", self.path)

  def _write(self, data: bytes) -> None:
    self._file.write(frame_record(data))

  def scalar(self, tag: str, value: float, step: int) -> None:
    """Writes one scalar value."""
    self.scalars({tag: value}, step)

  def scalars(self, values: Mapping[str, float], step: int) -> None:
    """Writes several scalars of one step as one event."""
    if self._file is None or not values:
      return
    self._write(encode_event(wall_time=time.time(), step=int(step),
                             scalars={k: float(v) for k, v in values.items()}))

  def flush(self) -> None:
    if self._file is not None:
      self._file.flush()

  def close(self) -> None:
    if self._file is not None:
      self._file.close()
      self._file = None

  def __enter__(self) -> "SummaryWriter":
    return self

  def __exit__(self, *exc) -> None:
    self.close()
