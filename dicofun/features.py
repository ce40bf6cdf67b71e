"""Feature extraction for a dataset: batched, jitted, sharded, cached.

Every method that works on frozen-backbone features (PatchCore, SoftPatch,
FUN-AD) gets them from ``extract_records``:

* ``layout="patchcore"``: locally aware patch features (METHODS §3). For a CNN
  the stride-8 and stride-16 stages, each 3×3 locally averaged, the stride-16
  one bilinearly resized to the stride-8 grid, concatenated on channels. For a
  ViT the selected block's patch tokens, ``config.backbone.vit_local_average``
  × that locally averaged **(ours)**; default 1, none (METHODS §1: bank
  methods on ViT tokens use no local average by default).
* ``layout="tokens"``: FUN-AD's per-patch ``[CLS ‖ patch token]`` of the
  selected block (METHODS §1). For a CNN (no CLS token) the PatchCore layout is
  used instead **(ours)**.

The batch axis is sharded over the ``data`` axis of the device mesh (one
compiled function, padded fixed-size batches); in a multi-process run each
process decodes only its slice of every batch and the features are gathered on
every host. Results are cached on disk under ``$DICOFUN_CACHE/features``
(default ``~/.cache/dicofun/features``): one folder per backbone, weights
checksum, layer, intermediate LayerNorm, ViT local average, layout and
preprocessing, one file per image keyed by its
path and a hash of its bytes (a ``tfds://`` record by its URI and the size
and modification time of its split's array_record files). The hash is computed
once per file per process; a file replaced by another of the same size within
the same second (which a size + mtime key missed) gets a new key.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from typing import Any, Callable, Optional

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from dicofun import parallel
from dicofun import progress as progress_lib
from dicofun.data import pipeline
from dicofun.data import tfds_source
from dicofun.models import names
from dicofun.models import registry
from dicofun.ops import maps

LAYOUTS = ("patchcore", "tokens")
_CACHE_ENV = "DICOFUN_CACHE"


def cache_dir() -> str:
  """Root of dicofun's caches (``$DICOFUN_CACHE`` or ``~/.cache/dicofun``)."""
  return os.environ.get(_CACHE_ENV,
                        os.path.join(os.path.expanduser("~"), ".cache",
                                     "dicofun"))


def _is_vit(backbone) -> bool:
  return bool(getattr(backbone, "patch", 0))


def layout_fn(backbone, layout: str, *,
              vit_local_average: int = names.DEFAULT_VIT_LOCAL_AVERAGE
              ) -> Callable[[Any, jax.Array], jax.Array]:
  """A pure ``fn(variables, images NHWC) -> (B, h, w, C)`` for ``layout``.

  Args:
    backbone: a ``dicofun.models.registry.Backbone``.
    layout: one of ``LAYOUTS``.
    vit_local_average: ViT PatchCore layout only: the side of the local
      average of the patch tokens (1 = none); CNN stages always use 3×3
      (METHODS §3).

  Returns:
    The pure layout function.
  """
  if layout not in LAYOUTS:
    raise ValueError(f"feature layout {layout!r} is not one of {LAYOUTS}")

  def fn(variables, images):
    feats = backbone.apply_features(variables, images)
    if _is_vit(backbone):
      tokens = feats["tokens"]
      if layout == "tokens":
        cls = jnp.broadcast_to(feats["cls"][:, None, None, :], tokens.shape)
        return jnp.concatenate([cls, tokens], axis=-1)
      return maps.local_average(tokens, size=int(vit_local_average))
    f8 = maps.local_average(feats["stride8"], size=3)
    f16 = maps.local_average(feats["stride16"], size=3)
    f16 = maps.resize_features(f16, f8.shape[1:3])
    return jnp.concatenate([f8, f16], axis=-1)

  return fn


# Content hashes of this process, by (path, size, mtime, ctime, inode):
# reading a file is cheap next to decoding it, but not free for a bank of
# thousands of images read by several phases of one run.
_CONTENT_HASHES: dict[tuple, str] = {}


def _content_hash(path: str, st: os.stat_result) -> str:
  """blake2b of the bytes of ``path`` (``st``: its stat, the memo's key)."""
  memo = (path, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
  if memo not in _CONTENT_HASHES:
    h = hashlib.blake2b(digest_size=20)
    with open(path, "rb") as f:
      for block in iter(lambda: f.read(1 << 20), b""):
        h.update(block)
    _CONTENT_HASHES[memo] = h.hexdigest()
  return _CONTENT_HASHES[memo]


def _file_signature(path: str) -> list:
  """What a cached feature of ``path`` depends on: its path and its bytes."""
  if tfds_source.is_uri(path):
    return tfds_source.signature(path)
  try:
    st = os.stat(path)
    # Version 3 of the key (2: size and whole-second mtime).
    return [path, st.st_size, "blake2b", _content_hash(path, st)]
  except OSError:
    return [path, -1, -1]


# The ViT local average the version-2 cache was written with.
_V2_LOCAL_AVERAGE = 3


def cache_key(*, backbone_name: str, weights_sha256: str, layer: Any,
              layout: str, preprocess_key: str, norm_intermediate: bool,
              vit_local_average: Optional[int]) -> str:
  """A hash of everything but the image that a cached feature depends on.

  Args:
    backbone_name, weights_sha256, layer: the backbone.
    layout: one of ``LAYOUTS``.
    preprocess_key: ``Preprocess.key()``.
    norm_intermediate: the backbone's ``norm_intermediate`` (False for CNNs
      and for the final layer, final-normed either way).
    vit_local_average: the ViT PatchCore layout's local average; None when
      it does not apply (a CNN).

  The LayerNorm flag and the local average enter the payload only when they
  differ from what the version-2 cache was written with (raw tokens, 3×3),
  so existing caches stay valid; the tokens layout has no local average.
  """
  payload = {
      "backbone": backbone_name, "weights": weights_sha256, "layer": layer,
      "layout": layout, "preprocess": preprocess_key, "version": 2,
  }
  if norm_intermediate:
    payload["norm_intermediate"] = True
  if (layout == "patchcore" and vit_local_average is not None and
      int(vit_local_average) != _V2_LOCAL_AVERAGE):
    payload["vit_local_average"] = int(vit_local_average)
  blob = json.dumps(payload, sort_keys=True).encode()
  return hashlib.sha256(blob).hexdigest()[:32]


def _image_key(path: str) -> str:
  if not tfds_source.is_uri(path):
    path = os.path.abspath(path)
  blob = json.dumps(_file_signature(path)).encode()
  return hashlib.sha256(blob).hexdigest()[:40]


_COMPILED: dict[tuple, Callable] = {}


def _compiled(backbone, layout: str, vit_local_average: int) -> Callable:
  """One jitted layout function per backbone setting and layout."""
  key = (backbone.name, backbone.weights_sha256, backbone.layer,
         backbone.norm_intermediate, layout, int(vit_local_average))
  if key not in _COMPILED:
    _COMPILED[key] = jax.jit(layout_fn(backbone, layout,
                                       vit_local_average=vit_local_average))
  return _COMPILED[key]


def _batch_geometry(batch_size: int, mesh):
  """(global batch, rows per process, mesh): a multiple of the device count."""
  mesh = mesh or parallel.make_mesh()
  ndev = mesh.devices.size
  gbs = int(np.ceil(batch_size / ndev) * ndev)
  return gbs, gbs // jax.process_count(), mesh


def _run(backbone, batch_iter, n: int, *, layout: str, gbs: int,
         per_proc: int, mesh, desc: str,
         vit_local_average: int) -> np.ndarray:
  """Runs the jitted layout function over host-local slices of each batch."""
  fn = _compiled(backbone, layout, vit_local_average)
  variables = jax.device_put(backbone.variables, parallel.replicated(mesh))
  out = None
  t0 = time.time()
  for start, local in zip(range(0, n, gbs),
                          progress_lib.progress(batch_iter, total=-(-n // gbs), desc=desc)):
    valid = min(gbs, n - start)
    if len(local) < per_proc:
      # Fixed shapes: the last batch is padded, its padding rows dropped.
      pad = np.zeros((per_proc - len(local),) + tuple(local.shape[1:]),
                     np.float32)
      local = np.concatenate([local, pad]) if len(local) else pad
    x = parallel.shard_batch(mesh, local)
    feats = parallel.gather_to_host(fn(variables, x))[:valid]
    if out is None:
      out = np.empty((n,) + feats.shape[1:], np.float32)
    out[start:start + valid] = feats
  if out is None:
    raise ValueError(f"{desc}: no images to extract features from")
  dt = time.time() - t0
  logging.info("%s: %d images in %.1fs (%.1f images/s), features %s", desc, n,
               dt, n / max(dt, 1e-9), out.shape[1:])
  return out


def extract_records(backbone, records, pre, *, layout: str,
                    batch_size: int = 16, num_workers: int = 4,
                    use_cache: bool = True, mesh=None,
                    desc: str = "features",
                    vit_local_average: int = names.DEFAULT_VIT_LOCAL_AVERAGE
                    ) -> np.ndarray:
  """Features of dataset records, cached on disk.

  Args:
    backbone: a ``dicofun.models.registry.Backbone``.
    records: the images (``Record`` list); masks are not read.
    pre: the ``dicofun.data.pipeline.Preprocess`` (with the backbone's norm).
    layout: "patchcore" or "tokens".
    batch_size: global batch (rounded up to a multiple of the device count).
    num_workers: image-decoding threads.
    use_cache: read/write the on-disk cache.
    mesh: device mesh (default: all devices on a ``data`` axis).
    desc: progress label.
    vit_local_average: ViT PatchCore layout only: the local-average side
      (1 = none; ignored by CNNs).

  Returns:
    (N, h, w, C) float32 features, in record order.
  """
  if not _is_vit(backbone):
    vit_local_average = _V2_LOCAL_AVERAGE  # Not used by CNNs.
  files = [None] * len(records)
  todo = list(range(len(records)))
  cached = {}
  if use_cache:
    # One file per image, so any subset (a contamination ratio, a predict
    # folder) reuses what an earlier run extracted.
    folder = os.path.join(cache_dir(), "features", cache_key(
        backbone_name=backbone.name, weights_sha256=backbone.weights_sha256,
        layer=backbone.layer, layout=layout, preprocess_key=pre.key(),
        norm_intermediate=backbone.norm_intermediate,
        vit_local_average=vit_local_average if _is_vit(backbone) else None))
    files = [os.path.join(folder, _image_key(r.image_path) + ".npy")
             for r in records]
    todo = []
    for i, f in enumerate(files):
      try:
        cached[i] = np.load(f)
      except (OSError, ValueError):
        todo.append(i)
    if cached:
      logging.info("%s: %d of %d images from the cache %s", desc, len(cached),
                   len(records), folder)
  fresh = None
  if todo:
    fresh = _extract_uncached(backbone, [records[i] for i in todo], pre,
                              layout=layout, batch_size=batch_size,
                              num_workers=num_workers, mesh=mesh, desc=desc,
                              vit_local_average=vit_local_average)
    if use_cache and jax.process_index() == 0:
      os.makedirs(os.path.dirname(files[0]), exist_ok=True)
      for row, i in enumerate(todo):
        tmp = f"{files[i]}.tmp{os.getpid()}.npy"
        np.save(tmp, fresh[row])
        os.replace(tmp, files[i])
  if not cached:
    return fresh
  some = next(iter(cached.values()))
  out = np.empty((len(records),) + some.shape, np.float32)
  for i, v in cached.items():
    out[i] = v
  if fresh is not None:
    out[todo] = fresh
  return out


def _extract_uncached(backbone, records, pre, *, layout: str, batch_size: int,
                      num_workers: int, mesh, desc: str,
                      vit_local_average: int) -> np.ndarray:
  gbs, per_proc, mesh = _batch_geometry(batch_size, mesh)
  pindex = jax.process_index()

  def batches():
    # Each process decodes only its slice of every global batch.
    for start in range(0, len(records), gbs):
      mine = records[start + pindex * per_proc:start + (pindex + 1) * per_proc]
      if not mine:
        yield np.zeros((0, pre.image_size, pre.image_size, 3), np.float32)
        continue
      yield pipeline.load_arrays(mine, pre, num_workers=num_workers,
                                 allow_missing_mask=True, desc=None,
                                 with_masks=False)["image"]

  return _run(backbone, batches(), len(records), layout=layout, gbs=gbs,
              per_proc=per_proc, mesh=mesh, desc=desc,
              vit_local_average=vit_local_average)


def backbone_for(config) -> Any:
  """The backbone named by ``config.backbone`` (weights loaded)."""
  bb = config.backbone
  return registry.get_backbone(bb.name, weights=bb.weights, layer=bb.layer,
                               norm_intermediate=bool(bb.norm_intermediate))


def check_input_size(backbone, image_size: int) -> None:
  patch = getattr(backbone, "patch", 0)
  if patch and image_size % patch:
    raise ValueError(
        f"config.dataset.image_size={image_size} is not a multiple of the "
        f"{backbone.name} patch size {patch}; use e.g. "
        f"{(image_size // patch) * patch} or {(image_size // patch + 1) * patch}")


def load_features(config, records, *, layout: str,
                  backbone: Optional[Any] = None,
                  desc: str = "features") -> np.ndarray:
  """Features of ``records`` for the run ``config`` (cached)."""
  backbone = backbone or backbone_for(config)
  check_input_size(backbone, config.dataset.image_size)
  pre = pipeline.preprocess_for(config, mean=backbone.mean, std=backbone.std)
  return extract_records(backbone, records, pre, layout=layout,
                         batch_size=config.backbone.batch_size,
                         num_workers=config.dataset.num_workers,
                         use_cache=bool(config.features_cache), desc=desc,
                         vit_local_average=int(
                             config.backbone.vit_local_average))
