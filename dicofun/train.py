"""The runner: data → method → metrics → results, for every method.

``train_and_evaluate(config, workdir)`` is what ``experiments/main.py`` calls.
It reads the dataset named by ``config.dataset``, applies the contamination
protocol, hands a ``RunData`` to the method registered under ``config.method``
and evaluates the returned ``Predictions`` in the three views of METHODS §4:

* ``test``: the no-overlap test set (moved anomalies removed);
* ``test_overlap``: the moved anomalies kept in the test set too;
* ``transductive``: the method's scores on its own contaminated training set.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import importlib
import json
import os
import subprocess
import time
from typing import Any, Optional

from absl import logging
import ml_collections
import numpy as np

from dicofun import api
from dicofun.data import records as records_lib

# name -> module path; each module exposes ``run(config, data, workdir)``.
METHODS = {
    "patchcore": "dicofun.methods.patchcore",
    "softpatch": "dicofun.methods.softpatch",
    "funad": "dicofun.methods.funad",
    "dico": "dicofun.methods.dico",
}

_DATA_ENV = "DICOFUN_DATA"


class UnknownMethodError(ValueError):
  """``config.method`` names no registered method."""


def get_method(name: str):
  """Returns the method module registered under ``name``."""
  if name not in METHODS:
    raise UnknownMethodError(
        f"config.method={name!r} is not a dicofun method; known methods: "
        f"{sorted(METHODS)}")
  return importlib.import_module(METHODS[name])


def default_data_root(dataset: str) -> str:
  """Where a dataset lives when ``config.dataset.root`` is empty.

  ``$DICOFUN_DATA/<name>`` (default ``~/data/<name>``); for magnetic tile, a
  source checkout's sibling ``../shared/data/magnetic_tile`` is used when
  that is where the data is and ``$DICOFUN_DATA`` is unset.
  """
  sub = {"mvtec": "mvtec_ad", "visa": "visa", "magnetic_tile": "magnetic_tile"}
  name = sub.get(dataset, dataset)
  if _DATA_ENV not in os.environ and dataset == "magnetic_tile":
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    shared = os.path.join(os.path.dirname(repo), "shared", "data", name)
    if os.path.isdir(shared):
      return shared
  base = os.environ.get(_DATA_ENV, os.path.join(os.path.expanduser("~"), "data"))
  return os.path.join(base, name)


def read_dataset(ds: ml_collections.ConfigDict,
                 workdir: str) -> list[records_lib.Record]:
  """Reads all records (both splits) of the dataset named by ``ds``."""
  # Imported here so `import dicofun.train` stays light.
  from dicofun.data import folder, mvtec, synthetic, visa  # pylint: disable=g-import-not-at-top
  name = ds.name
  if name == "synthetic":
    root = ds.root or os.path.join(workdir, "data")
    s = ds.synthetic
    gen = functools.partial(
        synthetic.generate, root, category=ds.category or "texture",
        num_train=s.num_train, num_test_good=s.num_test_good,
        num_test_anomalous=s.num_test_anomalous, image_size=s.image_size,
        seed=s.seed)
    import jax  # pylint: disable=g-import-not-at-top
    if jax.process_count() > 1:
      # Process 0 writes first; the others then find its manifest on a shared
      # filesystem (or, without one, write their own identical copy).
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      if jax.process_index() == 0:
        gen()
      multihost_utils.sync_global_devices("dicofun_synthetic_data")
    category_dir = gen()
    return mvtec.read_mvtec(category_dir, category=ds.category or "texture")
  if name == "mvtec":
    if not ds.category:
      raise ValueError("config.dataset.category must name an MVTec AD category")
    root = ds.root or default_data_root("mvtec")
    return mvtec.read_mvtec(os.path.join(root, ds.category),
                            category=ds.category)
  if name == "magnetic_tile":
    root = ds.root or default_data_root("magnetic_tile")
    return mvtec.read_mvtec(root, category="magnetic_tile")
  if name == "visa":
    if not ds.category:
      raise ValueError("config.dataset.category must name a VisA category")
    root = ds.root or default_data_root("visa")
    return visa.read_visa(root, ds.category)
  if name == "folder":
    f = ds.folder
    if not f.normal_dir:
      raise ValueError("config.dataset.folder.normal_dir must be set for the "
                       "folder dataset")
    return folder.read_folder(
        f.normal_dir, abnormal_dir=f.abnormal_dir or None,
        mask_dir=f.mask_dir or None, test_fraction=f.test_fraction,
        seed=ds.contamination_seed, category=ds.category or "custom")
  raise ValueError(f"config.dataset.name={name!r} is not a known dataset")


def prepare_data(config: ml_collections.ConfigDict, workdir: str) -> api.RunData:
  """Reads the dataset and applies the contamination protocol."""
  from dicofun.data import contamination  # pylint: disable=g-import-not-at-top
  ds = config.dataset
  records = read_dataset(ds, workdir)
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


def load_features(config: ml_collections.ConfigDict,
                  records: list[records_lib.Record], *, layout: str,
                  desc: str = "features") -> np.ndarray:
  """Frozen-backbone features of ``records`` (see ``dicofun.features``)."""
  from dicofun import features  # pylint: disable=g-import-not-at-top
  return features.load_features(config, records, layout=layout, desc=desc)


def choose_threshold(config: ml_collections.ConfigDict, method, data: api.RunData,
                     preds: api.Predictions) -> tuple[Optional[float], str]:
  """The decision threshold stored with the model, and how it was chosen."""
  from dicofun import metrics  # pylint: disable=g-import-not-at-top
  if data.validation and preds.state is not None:
    scores, _ = method.predict(config, preds.state, data.validation)
    labels = np.array([r.label for r in data.validation])
    if len(np.unique(labels)) == 2:
      return (float(metrics.f1_optimal_threshold(np.asarray(scores), labels)),
              f"F1-optimal on {len(labels)} held-out validation images")
  if preds.train_scores is not None:
    q = config.eval.threshold_percentile
    return (metrics.percentile_threshold(np.asarray(preds.train_scores), q),
            f"{q}th percentile of the training-image scores")
  logging.warning("No threshold: neither a validation split nor training "
                  "scores; predict.py will need --threshold")
  return None, "none"


def _write_json_atomic(path: str, obj: Any) -> None:
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "w") as f:
    json.dump(_jsonable(obj), f, indent=1)
  os.replace(tmp, path)


def write_scores_csv(path: str, data: api.RunData,
                     preds: api.Predictions) -> None:
  """Per-image test scores (file, defect, label, moved, score)."""
  moved = (np.zeros(len(data.test), bool) if data.test_is_moved is None
           else np.asarray(data.test_is_moved, bool))
  with open(path, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["image_path", "defect", "label", "moved", "score"])
    for r, m, s in zip(data.test, moved, np.asarray(preds.test_scores)):
      w.writerow([r.image_path, r.defect, r.label, int(m), repr(float(s))])


def write_summaries(workdir: str, metrics: dict[str, Any],
                    extra: dict[str, Any], *, enabled: bool) -> None:
  """Final metrics (and any per-epoch history) as TensorBoard scalars."""
  from dicofun import summary  # pylint: disable=g-import-not-at-top
  writer = summary.SummaryWriter(os.path.join(workdir, "tensorboard"),
                                 enabled=enabled)
  try:
    for row in extra.get("history", []) or []:
      step = int(row.get("epoch", 0))
      for k, v in row.items():
        if k != "epoch" and isinstance(v, (int, float, np.floating)):
          writer.scalar(f"history/{k}", float(v), step)
    final_step = int(extra.get("epochs", 0) or 0)
    for view, m in metrics.items():
      for k, v in (m.items() if isinstance(m, dict) else []):
        if isinstance(v, (int, float, np.floating)):
          writer.scalar(f"{view}/{k}", float(v), final_step)
  finally:
    writer.close()


def preprocess_for(config: ml_collections.ConfigDict, *, mean=None, std=None):
  """The dataset preprocessing of ``config`` (optionally a backbone's norm)."""
  from dicofun.data import pipeline  # pylint: disable=g-import-not-at-top
  kw = {}
  if mean is not None:
    kw.update(mean=tuple(mean), std=tuple(std))
  return pipeline.Preprocess(image_size=config.dataset.image_size,
                             crop_fraction=config.dataset.crop_fraction, **kw)


def load_eval_arrays(config: ml_collections.ConfigDict,
                     records: list[records_lib.Record]) -> dict[str, np.ndarray]:
  """Masks, labels and mask availability at the evaluation size."""
  from dicofun.data import pipeline  # pylint: disable=g-import-not-at-top
  arrays = pipeline.load_arrays(
      records, preprocess_for(config), num_workers=config.dataset.num_workers,
      allow_missing_mask=config.dataset.allow_missing_masks,
      desc="evaluation masks", with_images=False)
  return arrays


def git_commit() -> str:
  """The commit of the dicofun checkout, or 'unknown' outside git."""
  here = os.path.dirname(os.path.abspath(__file__))
  try:
    out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here,
                         capture_output=True, text=True, timeout=10, check=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                           cwd=here, capture_output=True, text=True, timeout=10)
    return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
  except (OSError, subprocess.SubprocessError):
    return "unknown"


def _view_metrics(scores, labels, maps, masks, has_mask) -> dict[str, Any]:
  from dicofun import evaluate  # pylint: disable=g-import-not-at-top
  if len(np.unique(labels)) < 2:
    return {"error": "only one class present"}
  return evaluate.compute_metrics(image_scores=scores, image_labels=labels,
                                  maps=maps, masks=masks, has_mask=has_mask)


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
  out = {"test": _view_metrics(
      scores[keep], labels[keep], None if maps is None else maps[keep],
      eval_arrays["mask"][keep], eval_arrays["has_mask"][keep])}
  if moved.any():
    out["test_overlap"] = _view_metrics(scores, labels, maps, eval_arrays["mask"],
                                        eval_arrays["has_mask"])
  if preds.train_scores is not None:
    train_labels = np.array([r.label for r in data.train])
    if len(np.unique(train_labels)) == 2:
      out["transductive"] = _view_metrics(
          np.asarray(preds.train_scores, np.float64), train_labels, None, None,
          None)
  return out


def _jsonable(x: Any) -> Any:
  if isinstance(x, dict):
    return {str(k): _jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_jsonable(v) for v in x]
  if isinstance(x, np.ndarray):
    return x.tolist()
  if isinstance(x, (np.floating, np.integer, np.bool_)):
    return x.item()
  return x


def metrics_table(metrics: dict[str, Any], *, title: str = "") -> str:
  """A markdown table: one row per view, one column per metric."""
  cols = ["image_auroc", "pixel_auroc", "aupro", "image_f1_max", "pixel_ap"]
  lines = []
  if title:
    lines.append(f"### {title}\n")
  lines.append("| view | " + " | ".join(cols) + " |")
  lines.append("|---" * (len(cols) + 1) + "|")
  for view, m in metrics.items():
    cells = []
    for c in cols:
      v = m.get(c) if isinstance(m, dict) else None
      cells.append("—" if v is None else f"{v:.4f}")
    lines.append(f"| {view} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def write_figures(workdir: str, config: ml_collections.ConfigDict,
                  data: api.RunData, preds: api.Predictions,
                  eval_arrays: dict[str, np.ndarray]) -> list[str]:
  """Anomaly-map figure, ROC curves and best/worst grid as PNGs."""
  from dicofun import viz  # pylint: disable=g-import-not-at-top
  from dicofun.data import pipeline  # pylint: disable=g-import-not-at-top
  written = []
  labels = eval_arrays["label"]
  scores = np.asarray(preds.test_scores)
  viz.save_roc_curves(os.path.join(workdir, "roc.png"), image_scores=scores,
                      image_labels=labels, maps=preds.test_maps,
                      masks=eval_arrays["mask"])
  written.append("roc.png")
  if preds.test_maps is None:
    return written
  pre = preprocess_for(config)
  k = max(1, min(config.eval.num_figures, len(data.test)) // 2)
  # A few anomalies and a few normals, highest-scored first.
  anomalous = np.flatnonzero(labels == 1)
  normal = np.flatnonzero(labels == 0)
  pick = np.concatenate([anomalous[np.argsort(-scores[anomalous])][:k],
                         normal[np.argsort(-scores[normal])][:k]])
  sub = [data.test[i] for i in pick]
  arr = pipeline.load_arrays(sub, pre, num_workers=2, allow_missing_mask=True,
                             desc="figure images")
  viz.save_anomaly_maps(
      os.path.join(workdir, "anomaly_maps.png"), arr["image"], arr["mask"],
      np.asarray(preds.test_maps)[pick], scores=scores[pick],
      titles=[os.path.basename(r.image_path) for r in sub],
      mean=pre.mean, std=pre.std)
  written.append("anomaly_maps.png")
  ranked = np.concatenate([np.argsort(scores)[:4], np.argsort(-scores)[:4]])
  ranked = np.unique(ranked)
  sub = [data.test[i] for i in ranked]
  arr = pipeline.load_arrays(sub, pre, num_workers=2, allow_missing_mask=True,
                             desc="figure images")
  viz.save_best_worst_grid(
      os.path.join(workdir, "best_worst.png"), arr["image"], arr["mask"],
      np.asarray(preds.test_maps)[ranked], scores[ranked], labels[ranked],
      k=min(4, len(ranked) // 2 or 1))
  written.append("best_worst.png")
  return written


def jax_process_index() -> int:
  import jax  # pylint: disable=g-import-not-at-top
  return jax.process_index()


def train_and_evaluate(config: ml_collections.ConfigDict,
                       workdir: str) -> dict[str, Any]:
  """Runs ``config.method`` on ``config.dataset`` and writes the results.

  Args:
    config: a run config (see ``configs/``).
    workdir: output directory (created); results.json, metrics.md and PNG
      figures are written there by process 0.

  Returns:
    The metrics dict (views → metric → value).
  """
  method = get_method(config.method)
  from dicofun import parallel  # pylint: disable=g-import-not-at-top
  parallel.maybe_initialize_distributed()
  main_process = parallel.is_main_process()
  os.makedirs(workdir, exist_ok=True)
  t0 = time.time()
  data = prepare_data(config, workdir)
  preds = method.run(config, data, workdir)
  eval_arrays = load_eval_arrays(config, data.test)
  metrics = evaluate_predictions(preds, data, eval_arrays)
  threshold, threshold_how = choose_threshold(config, method, data, preds)
  if preds.state is not None:
    from dicofun import checkpoint  # pylint: disable=g-import-not-at-top
    checkpoint.save_inference(
        workdir, state=preds.state, config=config, threshold=threshold,
        meta={"threshold_rule": threshold_how, "method": config.method})
  elapsed = time.time() - t0
  table = metrics_table(
      metrics, title=f"{config.method} on {config.dataset.name}/{data.category}"
      f" (contamination {config.dataset.contamination})")
  logging.info("Results:\n%s", table)
  if main_process:
    figures = write_figures(workdir, config, data, preds, eval_arrays)
    results = {
        "method": config.method,
        "dataset": config.dataset.name,
        "category": data.category,
        "seed": config.seed,
        "commit": git_commit(),
        "config": config.to_dict(),
        "metrics": metrics,
        "counts": {
            "train": len(data.train),
            "train_anomalous": int(sum(r.label for r in data.train)),
            "test": int(len(data.test) - len(data.moved)),
            "moved": len(data.moved),
        },
        "moved_files": [r.image_path for r in data.moved],
        "validation_files": [r.image_path for r in data.validation],
        "threshold": threshold,
        "threshold_rule": threshold_how,
        "figures": figures,
        "seconds": elapsed,
        "extra": preds.extra,
    }
    with open(os.path.join(workdir, "metrics.md"), "w") as f:
      f.write(table)
    write_scores_csv(os.path.join(workdir, "test_scores.csv"), data, preds)
    if config.eval.tensorboard:
      write_summaries(workdir, metrics, preds.extra, enabled=True)
    # Written last and atomically: its presence marks a finished run (sweeps
    # skip such cells).
    _write_json_atomic(os.path.join(workdir, "results.json"), results)
    logging.info("Process %d wrote results to %s", jax_process_index(),
                 workdir)
  return metrics
