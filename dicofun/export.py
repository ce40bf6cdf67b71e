r"""``dicofun export``: a memory-bank model as one portable StableHLO file.

``export_scorer(workdir, out)`` reads the inference checkpoint of a PatchCore
or SoftPatch run (``<workdir>/model``, written by ``dicofun run`` or
``dicofun inspect``) and serialises, with ``jax.export``, the whole scoring
function — normalisation, backbone, patch layout, nearest-bank-row distance,
max-pooled image score, resized and blurred map — with the weights and the
memory bank inside. Two files:

* ``out``: the serialised ``jax.export.Exported``;
* ``out + ".json"``: what the caller must do before calling it (the input
  shape, the PIL resize and crop) and the run's threshold.

The exported function takes ``uint8`` images ``(B, S, S, 3)`` already
resized (PIL bilinear to ``resize`` × ``resize``, centre crop ``S``) and
returns ``(scores (B,), maps (B, S, S))``. Loading it needs jax, numpy and
PIL only — no dicofun::

  import json, numpy as np, jax
  from PIL import Image
  meta = json.load(open("model.stablehlo.json"))
  scorer = jax.export.deserialize(open("model.stablehlo", "rb").read())
  r, s = meta["resize"], meta["image_size"]
  off = (r - s) // 2
  img = Image.open("part.png").convert("RGB").resize((r, r), Image.BILINEAR)
  x = np.asarray(img.crop((off, off, off + s, off + s)), np.uint8)[None]
  x = np.concatenate([x] * meta["batch_size"])  # the batch is fixed
  scores, maps = scorer.call(x)

Its scores equal the checkpoint's (``dicofun predict``) to 1e-5 relative
(tests/test_export.py): the same layout function and the same kNN engine
(``ops.knn.knn_padded``, exact float32) run inside it. The batch size is
fixed at export time (``batch_size``); pad the last batch. It is lowered for
the platform it is exported on (CPU by default).
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable, Sequence

import jax
from jax import export as jax_export
import jax.numpy as jnp
import numpy as np

from dicofun import checkpoint
from dicofun import features as features_lib
from dicofun import fileio
from dicofun import user_errors
from dicofun.data import pipeline
from dicofun.ops import knn
from dicofun.ops import maps as maps_lib

EXPORTABLE = ("patchcore", "softpatch")


class NotExportableError(user_errors.UserError, ValueError):
  """The run's method has no exported scorer."""


def scoring_function(config, state: dict[str, Any], backbone
                     ) -> Callable[[jax.Array], tuple[jax.Array, jax.Array]]:
  """The pure ``uint8 (B, S, S, 3) → (scores, maps)`` of a bank model."""
  layout = features_lib.layout_fn(
      backbone, "patchcore",
      vit_local_average=int(config.backbone.vit_local_average))
  variables = backbone.variables
  bank = jnp.asarray(np.asarray(state["bank"], np.float32))
  valid = jnp.ones((bank.shape[0],), bool)
  mean = jnp.asarray(backbone.mean, jnp.float32)
  std = jnp.asarray(backbone.std, jnp.float32)
  size = int(config.dataset.image_size)
  sigma = float(config[config.method].blur_sigma)

  def score(images_uint8: jax.Array) -> tuple[jax.Array, jax.Array]:
    x = (images_uint8.astype(jnp.float32) / 255.0 - mean) / std
    feats = layout(variables, x)
    b, h, w, c = feats.shape
    d, _ = knn.knn_padded(feats.reshape(b * h * w, c), bank, valid, k=1)
    patch = jnp.sqrt(jnp.maximum(d[:, 0], 0.0)).reshape(b, h, w)
    return (patch.reshape(b, -1).max(axis=1),
            maps_lib.patch_scores_to_map(patch, size=size, sigma=sigma))

  return score


def export_scorer(workdir: str, out: str, *, batch_size: int = 1,
                  platforms: Sequence[str] = ("cpu",)) -> dict[str, Any]:
  """Writes ``out`` (StableHLO) and ``out.json`` for the run in ``workdir``.

  Args:
    workdir: a run or inspect output folder holding ``model/``.
    out: output file.
    batch_size: the fixed batch of the exported function.
    platforms: platforms to lower for (``jax.export`` names).

  Returns:
    The metadata written to ``out.json``.

  Raises:
    NotExportableError: the run's method is not PatchCore/SoftPatch.
    FileNotFoundError: no checkpoint in ``workdir``.
  """
  check_export_target(out)
  state, config, meta = checkpoint.load_inference(workdir)
  if config.method not in EXPORTABLE:
    raise NotExportableError(
        f"dicofun export supports {EXPORTABLE}; the model in {workdir} is "
        f"{config.method!r}")
  backbone = features_lib.backbone_for(config)
  features_lib.check_input_size(backbone, config.dataset.image_size)
  pre = pipeline.preprocess_for(config, mean=backbone.mean, std=backbone.std)
  s = pre.image_size
  fn = jax.jit(scoring_function(config, state, backbone))
  exported = jax_export.export(fn, platforms=tuple(platforms))(
      jax.ShapeDtypeStruct((int(batch_size), s, s, 3), jnp.uint8))
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  with fileio.open_atomic(out, "wb") as f:
    f.write(exported.serialize())
  info = {
      "method": config.method, "backbone": config.backbone.name,
      "image_size": s, "resize": pre.resize_size, "resample": pre.resample,
      "batch_size": int(batch_size), "input": "uint8 (B, S, S, 3) RGB, "
      "PIL-resized to resize x resize, centre-cropped to S",
      "outputs": ["scores (B,) float32", "maps (B, S, S) float32"],
      "threshold": meta.get("threshold"),
      "threshold_rule": meta.get("threshold_rule"),
      "platforms": list(platforms), "bank_rows": int(np.shape(state["bank"])[0]),
  }
  fileio.write_json_atomic(out + ".json", dict(info, **{_MARK_KEY: True}),
                           indent=1)
  return info


_MARK_KEY = "dicofun_export"  # In out.json: the pair is dicofun's.


def check_export_target(out: str) -> None:
  """Raises unless ``out`` and ``out.json`` are new or an earlier export's.

  Raises:
    OutputFolderError: either exists and is not a dicofun export (the
      ``.json`` lacks ``dicofun_export``): dicofun never overwrites a file
      it did not write.
  """
  meta = out + ".json"
  if not (os.path.lexists(out) or os.path.lexists(meta)):
    return
  try:
    with open(meta, encoding="utf-8") as f:
      ours = json.load(f).get(_MARK_KEY) is True
  except (OSError, ValueError, AttributeError):
    ours = False
  if not ours or os.path.isdir(out):
    raise fileio.OutputFolderError(
        f"--out={out!r} (or {meta!r}) exists and is not an earlier dicofun "
        "export; dicofun never overwrites files it did not write: name a new "
        "file with --out")
