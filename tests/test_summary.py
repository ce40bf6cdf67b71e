"""TensorBoard event files written through tensorboardX and read back."""

import io
import os
import struct

import numpy as np
from PIL import Image
import pytest

from dicofun import summary


def _crc32c_bitwise(data: bytes) -> int:
  """Reference CRC-32C, bit by bit (independent of any table version)."""
  crc = 0xFFFFFFFF
  for b in data:
    crc ^= b
    for _ in range(8):
      crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
  return crc ^ 0xFFFFFFFF


def _masked(crc: int) -> int:
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _parse(path):
  """Independent TFRecord parser: every record's data, checksums checked."""
  raw = open(path, "rb").read()
  pos, records = 0, []
  while pos < len(raw):
    header = raw[pos:pos + 8]
    (length,) = struct.unpack("<Q", header)
    (hcrc,) = struct.unpack("<I", raw[pos + 8:pos + 12])
    assert hcrc == _masked(_crc32c_bitwise(header))
    data = raw[pos + 12:pos + 12 + length]
    (dcrc,) = struct.unpack("<I", raw[pos + 12 + length:pos + 16 + length])
    assert dcrc == _masked(_crc32c_bitwise(data))
    records.append(data)
    pos += 16 + length
  assert pos == len(raw)
  return records


def test_scalars_round_trip_as_valid_tfrecords(tmp_path):
  logdir = str(tmp_path / "tb")
  with summary.SummaryWriter(logdir) as writer:
    for step in range(5):
      writer.scalar("loss", 1.0 / (step + 1), step)
    writer.scalars({"auroc/image": 0.75, "auroc/pixel": 0.5}, step=10)
  assert os.listdir(logdir) == [os.path.basename(writer.path)]
  # Checksums valid; the first event is the file version TensorBoard wants.
  records = _parse(writer.path)
  assert len(records) == 1 + 5 + 2
  events = list(summary.read_events(writer.path))
  assert events[0].file_version == "brain.Event:2"
  assert events[0].wall_time > 1e9
  scalars = summary.read_scalars(writer.path)
  assert scalars["loss"] == [(0, 1.0), (1, 0.5), (2, pytest.approx(1 / 3)),
                             (3, 0.25), (4, pytest.approx(0.2))]
  assert scalars["auroc/image"] == [(10, 0.75)]
  assert scalars["auroc/pixel"] == [(10, 0.5)]


def test_image_summary_is_the_png_of_the_array(tmp_path):
  image = np.zeros((4, 6, 3), np.uint8)
  image[1, 2] = (255, 0, 0)
  image[3, 5] = (10, 20, 30)
  with summary.SummaryWriter(str(tmp_path)) as writer:
    writer.image("maps", image, 7)
    with pytest.raises(ValueError, match="uint8"):
      writer.image("maps", image.astype(np.float32), 8)
  [(step, png)] = summary.read_images(str(tmp_path))["maps"]
  assert step == 7
  np.testing.assert_array_equal(
      np.asarray(Image.open(io.BytesIO(png)).convert("RGB")), image)


def test_flush_puts_events_on_disk_before_close(tmp_path):
  writer = summary.SummaryWriter(str(tmp_path))
  writer.scalar("loss", 2.0, 1)
  writer.flush()
  assert summary.read_scalars(writer.path) == {"loss": [(1, 2.0)]}
  writer.scalar("loss", 3.0, 2)
  writer.flush()
  assert summary.read_scalars(writer.path)["loss"] == [(1, 2.0), (2, 3.0)]
  writer.close()


def test_two_writers_in_one_second_get_two_files(tmp_path):
  # tensorboardX names a file by the second and the host only.
  a = summary.SummaryWriter(str(tmp_path), filename_suffix=".train")
  b = summary.SummaryWriter(str(tmp_path), filename_suffix=".train")
  a.scalar("x", 1.0, 1)
  b.scalar("x", 2.0, 2)
  a.close()
  b.close()
  assert a.path != b.path and a.path.endswith(".train")
  assert len(summary.event_files(str(tmp_path))) == 2
  # A directory reads as all its files, in creation order.
  assert summary.read_scalars(str(tmp_path)) == {"x": [(1, 1.0), (2, 2.0)]}


def test_a_record_cut_off_mid_write_is_not_read(tmp_path):
  with summary.SummaryWriter(str(tmp_path)) as writer:
    writer.scalar("x", 1.0, 1)
    writer.scalar("x", 2.0, 2)
  raw = open(writer.path, "rb").read()
  open(writer.path, "wb").write(raw[:-3])
  assert summary.read_scalars(writer.path) == {"x": [(1, 1.0)]}


def test_disabled_writer_writes_nothing(tmp_path):
  writer = summary.SummaryWriter(str(tmp_path / "tb"), enabled=False)
  writer.scalar("loss", 1.0, 0)
  writer.image("maps", np.zeros((2, 2, 3), np.uint8), 0)
  writer.flush()
  writer.close()
  assert writer.path is None
  assert not os.path.exists(tmp_path / "tb")


def test_tensorboard_reads_our_file(tmp_path):
  ea = pytest.importorskip(
      "tensorboard.backend.event_processing.event_accumulator")
  writer = summary.SummaryWriter(str(tmp_path))
  for step in range(3):
    writer.scalar("loss", float(step), step)
  writer.close()
  acc = ea.EventAccumulator(str(tmp_path))
  acc.Reload()
  assert [(e.step, e.value) for e in acc.Scalars("loss")] == [
      (0, 0.0), (1, 1.0), (2, 2.0)]
