"""TensorBoard event files written without TensorFlow."""

import glob
import os
import struct

import numpy as np
import pytest

from dicofun import summary


def _crc32c_bitwise(data: bytes) -> int:
  """Reference CRC-32C, bit by bit (independent of the table version)."""
  crc = 0xFFFFFFFF
  for b in data:
    crc ^= b
    for _ in range(8):
      crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
  return crc ^ 0xFFFFFFFF


def _masked(crc: int) -> int:
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def test_crc32c_known_values():
  # RFC 3720 / iSCSI check values.
  assert summary.crc32c(b"123456789") == 0xE3069283
  assert summary.crc32c(bytes(32)) == 0x8A9136AA
  assert summary.crc32c(bytes([0xFF] * 32)) == 0x62A8AB43
  data = bytes(range(200))
  assert summary.crc32c(data) == _crc32c_bitwise(data)


def _parse(path):
  """Independent TFRecord parser: (length, data) with checksums checked."""
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


def test_writer_round_trip(tmp_path):
  logdir = str(tmp_path / "tb")
  with summary.SummaryWriter(logdir) as writer:
    for step in range(5):
      writer.scalar("loss", 1.0 / (step + 1), step)
    writer.scalars({"auroc/image": 0.75, "auroc/pixel": 0.5}, step=10)
    writer.flush()
  files = glob.glob(os.path.join(logdir, "events.out.tfevents.*"))
  assert files == [writer.path]
  records = _parse(writer.path)
  assert len(records) == 1 + 5 + 1
  first = summary.decode_event(records[0])
  assert first["file_version"] == "brain.Event:2"
  assert first["wall_time"] > 1e9
  events = [summary.decode_event(r) for r in records[1:]]
  assert [e["step"] for e in events] == [0, 1, 2, 3, 4, 10]
  np.testing.assert_allclose([e["scalars"]["loss"] for e in events[:5]],
                             [1, 1 / 2, 1 / 3, 1 / 4, 1 / 5], rtol=1e-7)
  assert events[5]["scalars"] == {"auroc/image": 0.75, "auroc/pixel": 0.5}
  scalars = summary.read_scalars(writer.path)
  assert scalars["auroc/pixel"] == [(10, 0.5)]
  assert [s for s, _ in scalars["loss"]] == [0, 1, 2, 3, 4]


def test_hand_encoded_event_bytes():
  # Event{wall_time: 2.0, step: 300, summary{value{tag: "a", simple_value:
  # 1.5}}}: 0x09 + double, 0x10 + varint(300) = ac 02, then field 5
  # (0x2a) wrapping field 1 (0x0a) wrapping tag (0a 01 'a') and float (0x15).
  data = summary.encode_event(wall_time=2.0, step=300, scalars={"a": 1.5})
  value = b"\x0a\x01a" + b"\x15" + struct.pack("<f", 1.5)
  expected = (b"\x09" + struct.pack("<d", 2.0) + b"\x10\xac\x02" + b"\x2a" +
              bytes([len(value) + 2]) + b"\x0a" + bytes([len(value)]) + value)
  assert data == expected
  assert summary.decode_event(
      summary.encode_event(wall_time=0.0, step=-3))["step"] == -3


def test_parses_with_protobuf_runtime(tmp_path):
  """Decodes our bytes with the protobuf library and the Event schema."""
  pytest.importorskip("google.protobuf")
  from google.protobuf import descriptor_pb2  # pylint: disable=g-import-not-at-top
  from google.protobuf import descriptor_pool  # pylint: disable=g-import-not-at-top
  from google.protobuf import message_factory  # pylint: disable=g-import-not-at-top
  fdp = descriptor_pb2.FileDescriptorProto(name="ev_test.proto",
                                           package="evtest", syntax="proto3")
  f = descriptor_pb2.FieldDescriptorProto
  value = fdp.message_type.add(name="Value")
  value.field.add(name="tag", number=1, type=f.TYPE_STRING,
                  label=f.LABEL_OPTIONAL)
  value.field.add(name="simple_value", number=2, type=f.TYPE_FLOAT,
                  label=f.LABEL_OPTIONAL)
  summ = fdp.message_type.add(name="Summary")
  summ.field.add(name="value", number=1, type=f.TYPE_MESSAGE,
                 label=f.LABEL_REPEATED, type_name=".evtest.Value")
  event = fdp.message_type.add(name="Event")
  event.field.add(name="wall_time", number=1, type=f.TYPE_DOUBLE,
                  label=f.LABEL_OPTIONAL)
  event.field.add(name="step", number=2, type=f.TYPE_INT64,
                  label=f.LABEL_OPTIONAL)
  event.field.add(name="file_version", number=3, type=f.TYPE_STRING,
                  label=f.LABEL_OPTIONAL)
  event.field.add(name="summary", number=5, type=f.TYPE_MESSAGE,
                  label=f.LABEL_OPTIONAL, type_name=".evtest.Summary")
  pool = descriptor_pool.DescriptorPool()
  pool.Add(fdp)
  cls = message_factory.GetMessageClass(
      pool.FindMessageTypeByName("evtest.Event"))
  writer = summary.SummaryWriter(str(tmp_path))
  writer.scalar("train/loss", 0.25, 7)
  writer.close()
  records = list(summary.read_records(writer.path))
  first, second = cls.FromString(records[0]), cls.FromString(records[1])
  assert first.file_version == "brain.Event:2"
  assert second.step == 7
  assert second.summary.value[0].tag == "train/loss"
  assert second.summary.value[0].simple_value == 0.25


def test_corrupt_record_detected(tmp_path):
  writer = summary.SummaryWriter(str(tmp_path))
  writer.scalar("x", 1.0, 1)
  writer.close()
  raw = bytearray(open(writer.path, "rb").read())
  raw[-6] ^= 0x01  # flip a bit inside the last record's data
  open(writer.path, "wb").write(bytes(raw))
  with pytest.raises(ValueError):
    list(summary.read_records(writer.path))


def test_disabled_writer_writes_nothing(tmp_path):
  writer = summary.SummaryWriter(str(tmp_path / "tb"), enabled=False)
  writer.scalar("loss", 1.0, 0)
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
