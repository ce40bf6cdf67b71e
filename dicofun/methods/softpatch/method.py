"""SoftPatch (Jiang et al., NeurIPS 2022): PatchCore with patch-level denoising.

METHODS §3: before the coreset, compute for every patch position the local
outlier factor (k = 6) of each training image's patch among all training
images' patches at that position, and drop the most outlying 15% of patches.
Unlabelled anomalies in a contaminated training set are thereby kept out of the
memory bank. Everything after the filter is PatchCore.
"""

from __future__ import annotations

import ml_collections
import numpy as np

from dicofun import api
from dicofun.methods.patchcore import method as patchcore
from dicofun.ops import lof


def denoise_mask(train_features: np.ndarray, *, k: int = 6,
                 drop_fraction: float = 0.15) -> np.ndarray:
  """(N, h, w) bool: True for patches kept in the bank.

  Args:
    train_features: (N, h, w, C) patch features.
    k: LOF neighbourhood size.
    drop_fraction: fraction of all patches dropped, highest LOF first
      (a global threshold over all positions).

  Returns:
    The keep mask.
  """
  n, h, w, c = train_features.shape
  if n <= k:
    raise ValueError(f"SoftPatch needs more than k={k} training images, got {n}")
  scores = np.asarray(lof.lof_per_position(
      train_features.reshape(n, h * w, c).astype(np.float32), k=k))
  cut = np.quantile(scores, 1.0 - drop_fraction)
  return (scores <= cut).reshape(n, h, w)


# Inference is PatchCore's: the denoising only changes what enters the bank.
predict = patchcore.predict


def run(config: ml_collections.ConfigDict, data: api.RunData,
        workdir: str) -> api.Predictions:
  """SoftPatch on ``data`` (the runner's entry point)."""
  cfg = config.softpatch
  return patchcore.run_bank_method(
      config, data, workdir, cfg=cfg,
      keep_fn=lambda f: denoise_mask(f, k=cfg.lof_k,
                                     drop_fraction=cfg.drop_fraction))
