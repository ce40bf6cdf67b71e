"""The evaluation protocol of METHODS §4: data in, three views out.

``prepare_data`` reads the dataset named by ``config.dataset``, applies the
contamination protocol and (optionally) holds a validation split out of the
test set; ``evaluate_predictions`` computes every reported metric from a
method's ``Predictions`` in the three views:

* ``test``: the no-overlap test set (moved anomalies removed);
* ``test_overlap``: the moved anomalies kept in the test set too;
* ``transductive``: the method's scores on its own contaminated training set.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from absl import logging
import ml_collections
import numpy as np

from dicofun import api
from dicofun import evaluate
from dicofun import data as data_lib
from dicofun.data import contamination
from dicofun.data import pipeline
from dicofun.data import records as records_lib


def prepare_data(config: ml_collections.ConfigDict, workdir: str) -> api.RunData:
  """Reads the dataset and applies the contamination protocol."""
  ds = config.dataset
  records = data_lib.read_dataset(ds, workdir)
  result = contamination.contaminate(
      records, ratio=ds.contamination, seed=ds.contamination_seed,
      overlap=False)
  moved_keys = {r.image_path for r in result.moved}
  test = list(result.test) + [
      dataclasses.replace(r, split="test") for r in result.moved]
  test_is_moved = np.array([False] * len(result.test) + [True] * len(result.moved))
  assert not moved_keys & {r.image_path for r in result.test}
  validation = []
  if config.eval.validation_fraction > 0:
    test, test_is_moved, validation = split_validation(
        test, test_is_moved, fraction=config.eval.validation_fraction,
        seed=ds.contamination_seed)
  counts = records_lib.count_by(result.train + test, "split", "label")
  logging.info("Dataset %s/%s: %s (moved into train: %d)", ds.name,
               ds.category, counts, len(result.moved))
  return api.RunData(train=list(result.train), test=test,
                     moved=list(result.moved),
                     category=ds.category or ds.name,
                     test_is_moved=test_is_moved, validation=validation)


def split_validation(test: list[records_lib.Record], test_is_moved: np.ndarray,
                     *, fraction: float, seed: int):
  """Holds a stratified, seeded fraction of the no-overlap test set out.

  Returns:
    (test, test_is_moved, validation): the held-out records leave the test set
    so no reported metric is computed on the images the threshold was
    chosen on.
  """
  if not 0 < fraction < 1:
    raise ValueError(f"config.eval.validation_fraction={fraction} must be in "
                     "[0, 1)")
  rng = np.random.default_rng(seed + 1)
  val_idx = []
  for label in (records_lib.NORMAL, records_lib.ANOMALOUS):
    cand = [i for i, r in enumerate(test)
            if r.label == label and not test_is_moved[i]]
    take = int(round(fraction * len(cand)))
    val_idx += [cand[i] for i in rng.permutation(len(cand))[:take]]
  chosen = set(val_idx)
  keep = [i for i in range(len(test)) if i not in chosen]
  validation = [test[i] for i in sorted(val_idx)]
  logging.info("Validation split for the threshold: %d images held out of "
               "the test set", len(validation))
  return [test[i] for i in keep], test_is_moved[keep], validation


def load_eval_arrays(config: ml_collections.ConfigDict,
                     records: list[records_lib.Record]) -> dict[str, np.ndarray]:
  """Masks, labels and mask availability at the evaluation size.

  The runner calls this before ``method.run``: it is the validation of every
  input the evaluation needs.

  Raises:
    MissingMaskError: an anomalous test image (moved anomalies included) has
      no mask and ``config.dataset.allow_missing_masks`` is False; the message
      names the image and, for the MVTec layout, the expected mask path.
    CorruptImageError: a mask file cannot be decoded.
  """
  arrays = pipeline.load_arrays(
      records, pipeline.preprocess_for(config), num_workers=config.dataset.num_workers,
      allow_missing_mask=config.dataset.allow_missing_masks,
      desc="evaluation masks", with_images=False)
  return arrays


def _view_metrics(scores, labels, maps, masks, has_mask,
                  defects=None) -> dict[str, Any]:
  if len(np.unique(labels)) < 2:
    return {"error": "only one class present"}
  return evaluate.compute_metrics(image_scores=scores, image_labels=labels,
                                  maps=maps, masks=masks, has_mask=has_mask,
                                  defects=defects)


def evaluate_predictions(preds: api.Predictions, data: api.RunData,
                         eval_arrays: dict[str, np.ndarray]) -> dict[str, Any]:
  """Metrics of the three views of METHODS §4."""
  n = len(data.test)
  scores = np.asarray(preds.test_scores, np.float64)
  if scores.shape != (n,):
    raise ValueError(f"method returned test_scores of shape {scores.shape}, "
                     f"expected ({n},)")
  maps = None if preds.test_maps is None else np.asarray(preds.test_maps)
  if maps is not None and maps.shape != eval_arrays["mask"].shape:
    raise ValueError(f"method returned test_maps of shape {maps.shape}, "
                     f"expected {eval_arrays['mask'].shape}")
  labels = eval_arrays["label"]
  moved = (np.zeros(n, bool) if data.test_is_moved is None
           else np.asarray(data.test_is_moved, bool))
  keep = ~moved
  defects = np.array([r.defect for r in data.test])
  out = {"test": _view_metrics(
      scores[keep], labels[keep], None if maps is None else maps[keep],
      eval_arrays["mask"][keep], eval_arrays["has_mask"][keep],
      defects[keep])}
  if moved.any():
    out["test_overlap"] = _view_metrics(scores, labels, maps, eval_arrays["mask"],
                                        eval_arrays["has_mask"], defects)
  if preds.train_scores is not None:
    train_labels = np.array([r.label for r in data.train])
    if len(np.unique(train_labels)) == 2:
      out["transductive"] = _view_metrics(
          np.asarray(preds.train_scores, np.float64), train_labels, None, None,
          None, [r.defect for r in data.train])
  return out
