"""``dicofun inspect FOLDER``: which images of an unlabelled folder are defective.

The folder is the training set, unlabelled and presumably contaminated: the
method is fitted on every readable image under it and its *transductive*
scores on those same images (``Predictions.train_scores``, METHODS §4 view c;
for the memory-bank methods each image is scored against the other images'
patches only) are the answer. The same ``method.run`` the runner calls does
the work, on a ``RunData`` built from the folder with no test split; no
second pipeline exists.

Default: SoftPatch on EfficientNet-Lite0 at 224. SoftPatch is the method the
benchmarks (BENCHMARKS.md) show best under training-set contamination today;
its LOF filter keeps the folder's own defects out of the memory bank, and it
has no training epochs to tune. EfficientNet-Lite0 at 224 extracts features
several times faster than DINOv2-S on a laptop CPU. FUN-AD becomes the
default once its default preset beats SoftPatch there.

Outputs, in ``out_dir``:

* ``scores.csv``: ``file`` (relative to the folder), ``score``, ``rank``
  (1 = most anomalous), ``decision`` (1 = flagged), ``label`` (when known)
  and ``overlay`` (its overlay thumbnail, relative to ``out_dir``);
* ``report.html`` with ``images/`` and ``overlays/`` (small JPEG
  thumbnails of each image and of its anomaly-map overlay),
  ``histogram.png`` (and ``roc.png`` with labels), see ``dicofun.report``;
* ``model/``: the inference checkpoint with the threshold, so
  ``dicofun predict --model=OUT_DIR --images=NEW`` scores new images the
  same way (on the inspected images themselves ``predict`` differs from
  scores.csv: there each image's own kept patches are in the bank);
* ``errors.csv``: ``file``, ``reason`` of every file that could not be read
  (skipped; ``strict=True`` aborts instead);
* ``inspect.json``: counts, threshold, metrics and settings;
* ``training/``: the trained methods' checkpoints and their TensorBoard
  curves (``tensorboard --logdir OUT/training/tensorboard``);
* ``.dicofun-output``: the marker that makes the folder dicofun's (below).

The output folder is never the user's: ``out_dir`` must be new, empty, or a
folder an earlier dicofun run made (``fileio.replacing_dir``; a non-empty
folder without the marker, or with files dicofun did not write, is refused
before any work), and it may not overlap the inspected folder. Everything is
written into a hidden sibling ``.OUT.dicofun-new-*`` (live training curves
are there while the run lasts) and renamed to ``out_dir`` at the end, so
``out_dir`` holds the previous run's results or this run's, never a mix.

Decision threshold, without labels (``metrics.robust_threshold``): median +
3.5 · 1.4826 · MAD of the folder's scores (a robust outlier rule), or, with a
contamination hint c, the 1 − c quantile of the scores.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import time
from typing import Any, Callable, Optional

from absl import logging
import ml_collections
import numpy as np

from dicofun import api
from dicofun import checkpoint
from dicofun import metrics as metrics_lib
from dicofun import configlib
from dicofun import fileio
from dicofun import methods
from dicofun import predict as predict_lib
from dicofun import progress
from dicofun import report
from dicofun import results as results_lib
from dicofun import viz
from dicofun.data import errors
from dicofun.data import folder as folder_lib
from dicofun.data import images as images_lib
from dicofun.data import mvtec
from dicofun.data import pipeline
from dicofun.methods.dico import config as dico_config
from dicofun.methods.funad import config as funad_config
from dicofun.methods.patchcore import config as patchcore_config
from dicofun.methods.softpatch import config as softpatch_config

DEFAULT_METHOD = "softpatch"
DEFAULT_BACKBONE = "efficientnet_lite0"
DEFAULT_IMAGE_SIZE = 224

# The config module of each method (``methods/<name>/config.py``).
_CONFIGS = {
    "softpatch": softpatch_config,
    "patchcore": patchcore_config,
    "funad": funad_config,
    "dico": dico_config,
}


@dataclasses.dataclass
class InspectOutcome:
  """What ``inspect_folder`` found and wrote.

  Attributes:
    files: the scored image paths, in the order of the rows of scores.csv.
    scores: (n,) transductive image scores.
    decisions: (n,) bool, score >= threshold (``metrics.is_anomalous``).
    threshold: the label-free threshold.
    threshold_rule: how it was chosen, in words.
    labels: (n,) 0/1/-1 (-1 = unlabelled).
    metrics: metrics against the known labels ({} without both classes).
    errors: ``(path, reason)`` of the skipped files.
    small: ``(path, (w, h))`` of images smaller than the input size.
    out_dir: the output folder; report_path, csv_path, errors_path in it.
    seconds: wall time.
    root: the inspected folder (absolute).
  """

  files: list[str]
  scores: np.ndarray
  decisions: np.ndarray
  threshold: float
  threshold_rule: str
  labels: np.ndarray
  metrics: dict[str, Any]
  errors: list[tuple[str, str]]
  small: list[tuple[str, tuple[int, int]]]
  out_dir: str
  report_path: str
  csv_path: str
  errors_path: str
  seconds: float
  root: str = ""


def inspect_config(method: str = DEFAULT_METHOD, *,
                   backbone: str = DEFAULT_BACKBONE,
                   image_size: int = DEFAULT_IMAGE_SIZE,
                   seed: int = 0) -> ml_collections.ConfigDict:
  """The run config of ``dicofun inspect``: the method's own defaults on the
  ``folder`` dataset (no centre crop), with training-set maps on."""
  methods.check_method(method)
  if method not in _CONFIGS:
    raise methods.UnknownMethodError(
        f"dicofun inspect supports {sorted(_CONFIGS)}, not {method!r}")
  module = _CONFIGS[method]
  cfg = configlib.run_config(
      method=method, method_config=module.default_config(), dataset="folder",
      backbone=backbone, image_size=image_size)
  cfg = module.apply_args(
      cfg, f"backbone={backbone},image_size={image_size},seed={seed}")
  cfg.eval.train_maps = True
  # FUN-AD and DiCo write their live training curves to
  # <out>/training/tensorboard (the memory-bank methods have no epochs).
  cfg.eval.tensorboard = True
  return cfg


def _mask_records(records: list, labels: np.ndarray) -> list:
  """Labelled records with their MVTec-layout masks, where those exist."""
  out = []
  for r, y in zip(records, labels):
    m = mvtec.expected_mask_path(r.image_path) if y == 1 else None
    out.append(dataclasses.replace(
        r, label=int(y), mask_path=m if m and os.path.isfile(m) else None))
  return out


def labelled_metrics(config, records, scores, maps, labels, decisions
                     ) -> dict[str, Any]:
  """AUROC, F1-max, precision/recall of the decisions (and pixel AUROC,
  AUPRO when every labelled anomaly has an MVTec-layout mask) on the
  labelled images; {} unless both classes are present."""
  known = np.flatnonzero(labels >= 0)
  y = labels[known]
  if len(np.unique(y)) < 2:
    return {}
  s = scores[known]
  out: dict[str, Any] = {
      "labelled_images": int(len(known)),
      "image_auroc": metrics_lib.image_auroc(s, y),
      "image_f1_max": metrics_lib.image_f1_max(s, y),
  }
  d = decisions[known]
  tp = int(np.sum(d & (y == 1)))
  out["precision_at_threshold"] = tp / max(int(d.sum()), 1)
  out["recall_at_threshold"] = tp / int(np.sum(y == 1))
  sub = _mask_records([records[i] for i in known], y)
  if maps is not None and all(r.mask_path for r in sub if r.label == 1):
    arr = pipeline.load_arrays(sub, pipeline.preprocess_for(config),
                               num_workers=config.dataset.num_workers,
                               with_images=False, desc="masks")
    mk = maps[known]
    out["pixel_auroc"] = metrics_lib.pixel_auroc(mk, arr["mask"])
    out["aupro"] = metrics_lib.aupro(mk, arr["mask"])
  else:
    out["aupro"] = "n/a (no ground-truth masks)"
  return out


def write_images(config, root: str, out_dir: str, files: list[str],
                 maps: np.ndarray, threshold: float
                 ) -> tuple[list[tuple[str, str]], list[float], list[float]]:
  """Per image: the report's JPEG thumbnails of the preprocessed view and of
  its overlay, every overlay on one colour scale (``predict.color_scale``).

  Returns:
    The ``(thumbnail, overlay)`` paths relative to ``out_dir``, and each
    view's grey-level mean and spread (``predict.view_stats``).
  """
  scale = predict_lib.color_scale(float(np.min(maps)), threshold)
  written, means, stds = [], [], []
  for i in progress.progress(range(len(files)), desc="report images"):
    view = predict_lib.overlay_image(config, files[i])
    mean, std = predict_lib.view_stats(view)
    means.append(mean)
    stds.append(std)
    written.append(report.write_thumbs(
        out_dir, os.path.relpath(files[i], root), view, maps[i], scale))
  return written, means, stds


def inspect_folder(folder: str, *, out_dir: str,
                   method: str = DEFAULT_METHOD,
                   labels_csv: Optional[str] = None,
                   contamination_hint: Optional[float] = None,
                   strict: bool = False,
                   config: Optional[ml_collections.ConfigDict] = None
                   ) -> InspectOutcome:
  """Fits ``method`` on every image under ``folder`` and reports its scores.

  Args:
    folder: the images (searched recursively; hidden files skipped).
    out_dir: output folder: new, empty, or an earlier dicofun output
      (replaced as a whole at the end); not inside ``folder`` nor around it.
    method: one of softpatch, patchcore, funad, dico (ignored with
      ``config``).
    labels_csv: optional CSV of known labels (``data.folder`` docstring);
      without it sub-folders named good/ok label their images.
    contamination_hint: optional expected fraction of defective images; the
      threshold is then the ``1 − hint`` quantile of the scores.
    strict: abort on the first unreadable file instead of skipping it.
    config: a full run config instead of ``inspect_config(method)``.

  Returns:
    An InspectOutcome.

  Raises:
    DatasetError: no image under ``folder``, none readable, or ``strict``
      and one unreadable.
    OutputFolderError: ``out_dir`` holds files dicofun did not write, or
      overlaps ``folder``.
  """
  t0 = time.time()
  root = os.path.abspath(os.path.expanduser(folder))
  if not os.path.isdir(root):
    raise errors.DatasetError(f"folder to inspect not found: {root!r}")
  out_dir = os.path.abspath(os.path.expanduser(out_dir))
  fileio.check_disjoint(root, out_dir)
  config = config if config is not None else inspect_config(method)
  paths = images_lib.list_images_recursive(root)
  if not paths:
    raise errors.EmptyCategoryError(
        root, "image", expected=", ".join(images_lib.IMAGE_EXTENSIONS))
  # Everything is written into a fresh sibling folder that replaces out_dir
  # at the end, so a failure (a full disk) leaves the old results whole, and
  # nothing in out_dir that dicofun did not write is ever touched.
  with fileio.replacing_dir(out_dir, command="inspect",
                            info={"folder": root}) as tmp:
    found = _inspect_into(tmp, root, paths, config=config, out_dir=out_dir,
                          labels_csv=labels_csv,
                          contamination_hint=contamination_hint,
                          strict=strict, t0=t0)
  return found


def _inspect_into(tmp: str, root: str, paths: list[str], *,
                  config: ml_collections.ConfigDict, out_dir: str,
                  labels_csv: Optional[str],
                  contamination_hint: Optional[float], strict: bool,
                  t0: float) -> InspectOutcome:
  """``inspect_folder``'s work, writing into ``tmp`` (renamed to
  ``out_dir`` once it returns)."""
  size = int(config.dataset.image_size)
  screened = predict_lib.screen(
      root, paths, out_dir=tmp, image_size=size, strict=strict,
      max_pixels=pipeline.max_image_pixels(config))
  files = screened.readable
  methods.check_train_count(config, len(files))  # Before any work.
  labels = folder_lib.folder_labels(root, files, labels_csv=labels_csv)
  records = folder_lib.unlabelled_records(files)
  logging.info("Inspecting %d images under %s with %s (%d unreadable, "
               "skipped); writing to %s until done", len(files), root,
               config.method, len(screened.errors), tmp)
  # A fresh folder: a new inspect never resumes another run's training.
  train_dir = os.path.join(tmp, "training")
  preds = methods.get_method(config.method).run(
      config, api.RunData(train=records, test=[], category="inspect"),
      train_dir)
  if preds.train_scores is None or preds.train_maps is None:
    raise ValueError(f"{config.method} returned no training-set scores/maps; "
                     "dicofun inspect needs config.<method>.transductive")
  scores = np.asarray(preds.train_scores, np.float64).reshape(-1)
  maps = np.asarray(preds.train_maps, np.float32)
  threshold, rule = metrics_lib.robust_threshold(
      scores, contamination=contamination_hint)
  decisions = metrics_lib.is_anomalous(scores, threshold)
  metrics = labelled_metrics(config, records, scores, maps, labels, decisions)
  pictures, means, stds = write_images(config, root, tmp, files, maps,
                                       threshold)
  # What predict compares new images with (predict.unlike_training).
  stats = predict_lib.training_stats(
      sizes=[predict_lib.image_size_of(p) for p in files], means=means,
      stds=stds, scores=scores)
  checkpoint.save_inference(
      tmp, state=preds.state, config=config, threshold=threshold,
      meta={"threshold_rule": rule, "method": config.method,
            "inspected_folder": root, predict_lib.TRAINING_STATS: stats})
  order = np.argsort(-scores, kind="stable")
  rank = np.empty(len(files), np.int64)
  rank[order] = np.arange(1, len(files) + 1)
  rels = [os.path.relpath(p, root) for p in files]
  with fileio.open_atomic(os.path.join(tmp, "scores.csv"), newline="") as f:
    w = csv.writer(f)
    w.writerow(["file", "score", "rank", "decision", "label", "overlay"])
    for i in order:
      w.writerow([rels[i], repr(float(scores[i])), int(rank[i]),
                  int(decisions[i]), "" if labels[i] < 0 else int(labels[i]),
                  pictures[i][1]])
  viz.save_score_histogram(os.path.join(tmp, "histogram.png"), scores,
                           threshold=threshold, labels=labels)
  if metrics:
    known = labels >= 0
    viz.save_roc_curves(os.path.join(tmp, "roc.png"),
                        image_scores=scores[known], image_labels=labels[known])
  seconds = time.time() - t0
  settings = {
      "folder": root, "method": config.method,
      "backbone": config.backbone.name, "image_size": size,
      "threshold": threshold, "threshold_rule": rule,
      "contamination_hint": contamination_hint, "labels_csv": labels_csv,
      "commit": results_lib.git_commit(), "seconds": round(seconds, 1),
      "config": config.to_dict(),
  }
  small_files = [(os.path.relpath(p, root), int(w), int(h))
                 for p, (w, h) in screened.small]
  scale = predict_lib.color_scale(float(np.min(maps)), threshold)
  results_lib.write_json_atomic(os.path.join(tmp, "inspect.json"), {
      "images": len(files), "flagged": int(decisions.sum()),
      "unreadable": len(screened.errors), "small": len(screened.small),
      "small_files": small_files,
      "colour_scale": dict(scale, threshold=threshold) if scale else None,
      "metrics": metrics, "extra": preds.extra, **settings})
  # The page from the files just written: `dicofun report` rebuilds it the
  # same way.
  report.build(tmp, shown_dir=out_dir)
  return InspectOutcome(
      files=files, scores=scores, decisions=decisions, threshold=threshold,
      threshold_rule=rule, labels=labels, metrics=metrics,
      errors=screened.errors, small=screened.small, out_dir=out_dir,
      report_path=os.path.join(out_dir, "report.html"),
      csv_path=os.path.join(out_dir, "scores.csv"),
      errors_path=os.path.join(out_dir, "errors.csv"), seconds=seconds,
      root=root)


def summary(outcome: InspectOutcome) -> str:
  """The one-screen summary ``dicofun inspect`` prints at the end."""
  n = len(outcome.files)
  lines = [f"dicofun inspect: {n} images under {outcome.root} scored in "
           f"{outcome.seconds:.0f}s",
           f"  flagged: {int(outcome.decisions.sum())} (score >= "
           f"{outcome.threshold:.6g}; {outcome.threshold_rule})"]
  lines.append("  highest scores:")
  top = np.argsort(-outcome.scores, kind="stable")[:5]
  for i in top:
    mark = "FLAGGED" if outcome.decisions[i] else "ok     "
    name = (os.path.relpath(outcome.files[i], outcome.root) if outcome.root
            else outcome.files[i])
    lines.append(f"    {mark} {outcome.scores[i]:10.5g}  {name}")
  if outcome.metrics:
    m = outcome.metrics
    lines.append(f"  against the {m['labelled_images']} labelled images: "
                 f"transductive image AUROC {m['image_auroc']:.4f}, precision "
                 f"{m['precision_at_threshold']:.2f}, recall "
                 f"{m['recall_at_threshold']:.2f}")
  lines.append(f"  unreadable, skipped: {len(outcome.errors)}"
               + (f" (listed in {outcome.errors_path})" if outcome.errors
                  else ""))
  if outcome.small:
    lines.append(f"  smaller than the input size (upscaled): "
                 f"{len(outcome.small)}")
  lines.append(f"  report: {outcome.report_path}")
  lines.append(f"  scores: {outcome.csv_path}")
  return "\n".join(lines)
