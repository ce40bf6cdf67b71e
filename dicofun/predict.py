"""Scoring a folder of new images with a trained run's inference checkpoint.

``predict_folder(run_dir, images_dir)`` loads ``<run_dir>/model`` (written by
the runner through ``checkpoint.save_inference``), finds every image under
``images_dir`` (recursively, sorted), and asks the run's method to score them.

Unlike the training images: a model saved by ``dicofun inspect`` stores
statistics of its training images (``training_stats``: size, grey-level mean
and spread, image scores). When the new images' medians fall outside what
the training images show (``unlike_training``), predict logs a warning and
the report shows it; a model without them (older ones) loads and predicts
as before, without the check.

Contract with the methods: ``method.predict(config, state, records)`` receives
a list of ``Record``s (label 0, defect "good", no mask, split "test") and
returns ``(scores (n,), maps (n, S, S) or None)``. The method loads and
preprocesses the images through exactly the path it used for the test set
during the run (its backbone's normalisation, its feature layout), so a
score from ``predict`` equals the score the run reported for the same file
**(ours)**: no second preprocessing path exists that could drift.

Outputs, in ``out_dir`` (default ``<run_dir>/predictions``):

* ``scores.csv``: ``file`` (relative to ``images_dir``), ``score``,
  ``decision`` (1 when score >= threshold, else 0: the rule of
  ``metrics.is_anomalous``, under which the F1-optimal threshold was chosen)
  and ``threshold``; written atomically;
* ``overlays/<file>.png``: each image with its anomaly map (methods with
  maps), all on one colour scale centred on the threshold (``color_scale``);
* ``maps.npy`` (only with ``keep_maps``): the (n, S, S) float32 maps;
* ``report.html`` (``dicofun.report``, as ``dicofun inspect`` writes it:
  ranked, thumbnails and overlays on one colour scale, the threshold) with
  ``images/``, ``overlays/<file>.jpg``, ``histogram.png`` and
  ``predict.json`` (counts, threshold, warnings);
* ``errors.csv``: ``file``, ``reason`` of every file that could not be
  decoded. Those are skipped and every other image is scored; with
  ``strict`` the first one aborts instead;
* ``.dicofun-output``: the marker of a folder dicofun made. ``out_dir`` must
  be new, empty or an earlier dicofun output, outside ``images_dir``; it is
  written as a whole into a hidden sibling and renamed into place at the end
  (``fileio.replacing_dir``), so it never mixes two runs.
"""

from __future__ import annotations

import csv
import dataclasses
import os
from typing import Any, Optional, Sequence

from absl import logging
import numpy as np
from PIL import Image

from dicofun import checkpoint
from dicofun import fileio
from dicofun import methods
from dicofun import metrics
from dicofun import progress
from dicofun import report
from dicofun import results as results_lib
from dicofun import viz
from dicofun.data import errors
from dicofun.data import images
from dicofun.data import pipeline
from dicofun.data import records as records_lib


@dataclasses.dataclass
class PredictOutcome:
  """What ``predict_folder`` wrote.

  Attributes:
    files: image paths, in the order of the rows of ``scores.csv``.
    scores: (n,) image scores.
    decisions: (n,) bool, score >= threshold (``metrics.is_anomalous``).
    threshold: the threshold used.
    csv_path: path of scores.csv.
    overlays: overlay PNG paths (empty when the method returns no maps).
    errors: ``(path, reason)`` of the unreadable files (not scored).
    errors_path: path of errors.csv.
    warnings: lines saying how the images are unlike the training images
      (``unlike_training``); [] when they are alike or the model has no
      statistics.
    report_path: path of report.html.
  """

  files: list[str]
  scores: np.ndarray
  decisions: np.ndarray
  threshold: float
  csv_path: str
  overlays: list[str]
  errors: list[tuple[str, str]] = dataclasses.field(default_factory=list)
  errors_path: str = ""
  warnings: list[str] = dataclasses.field(default_factory=list)
  report_path: str = ""


def list_images(directory: str) -> list[str]:
  """Every image file under ``directory`` (recursive), sorted by path.

  Raises:
    FileNotFoundError: ``directory`` does not exist or holds no image.
  """
  if not os.path.isdir(directory):
    raise FileNotFoundError(f"--images={directory!r} is not a directory")
  found = images.list_images_recursive(directory)
  if not found:
    raise FileNotFoundError(
        f"no image files ({', '.join(images.IMAGE_EXTENSIONS)}) under "
        f"{directory!r}")
  return found


def write_errors_csv(path: str, root: str,
                     bad: Sequence[tuple[str, str]]) -> str:
  """``file`` (relative to ``root``), ``reason`` of each unreadable file."""
  with open(path, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["file", "reason"])
    for p, why in bad:
      w.writerow([os.path.relpath(p, root), why])
  return path


def screen(root: str, paths: Sequence[str], *, out_dir: str, image_size: int,
           strict: bool, max_pixels: Optional[int] = None
           ) -> images.Screened:
  """Decodes every file once, writes ``errors.csv``, warns about small ones.

  Shared by ``predict_folder`` and ``dicofun inspect``. Images with more
  than ``max_pixels`` pixels are unreadable files (listed, skipped).

  Raises:
    DatasetError: ``strict`` and a file is unreadable, or none is readable.
  """
  screened = images.screen_images(paths, min_size=image_size,
                                  max_pixels=max_pixels)
  if screened.errors and strict:
    # Before anything is written: the output folder is not created.
    p, why = screened.errors[0]
    more = [os.path.relpath(q, root) for q, _ in screened.errors[1:6]]
    raise errors.DatasetError(
        f"{len(screened.errors)} unreadable file(s) under {root!r} (first: "
        f"{p!r}: {why}"
        + (f"; then {', '.join(more)}" if more else "")
        + "). Without --strict they are skipped and listed in errors.csv.")
  errors_path = write_errors_csv(os.path.join(out_dir, "errors.csv"), root,
                                 screened.errors)
  for p, why in screened.errors:
    logging.warning("skipping unreadable %s: %s", p, why)
  if screened.small:
    p, (w, h) = screened.small[0]
    logging.warning(
        "%d image(s) are smaller than the %dx%d input (first: %s, %dx%d); "
        "they are upscaled, which blurs small defects", len(screened.small),
        image_size, image_size, p, w, h)
  if not screened.readable:
    raise errors.DatasetError(
        f"none of the {len(paths)} image files under {root!r} can be read; "
        f"see {errors_path}")
  return screened


def records_for(paths: Sequence[str], *, category: str = ""
                ) -> list[records_lib.Record]:
  """Unlabelled images as test records (label 0 is a placeholder)."""
  return [records_lib.Record(image_path=p, mask_path=None,
                             label=records_lib.NORMAL, defect=records_lib.GOOD,
                             split="test", category=category) for p in paths]


def overlay_image(config, path: str) -> np.ndarray:
  """The image as the model saw it (resize + crop), uint8 (S, S, 3)."""
  # Identity normalisation: the same geometry, pixel values kept in [0, 1].
  pre = pipeline.preprocess_for(config, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
  img = pre.image(images.load_image(path, min_side=pre.resize_size,
                                    max_pixels=pre.max_pixels))
  return np.clip(np.round(img * 255.0), 0, 255).astype(np.uint8)


def summary(outcome: PredictOutcome) -> str:
  """The lines ``dicofun predict`` prints at the end."""
  lines = [f"{int(outcome.decisions.sum())}/{len(outcome.files)} images above "
           f"threshold {outcome.threshold:.6g}; scores in {outcome.csv_path}"]
  if outcome.errors:
    lines.append(f"{len(outcome.errors)} unreadable file(s) skipped, listed "
                 f"in {outcome.errors_path}")
  if outcome.warnings:
    lines.append("warning: unlike the training images (see the log and the "
                 "report)")
  lines.append(f"report: {outcome.report_path}")
  return "\n".join(lines)


def _overlay_path(out_dir: str, images_dir: str, path: str) -> str:
  rel = os.path.relpath(path, images_dir)
  return os.path.join(out_dir, "overlays", os.path.splitext(rel)[0] + ".png")


def color_scale(map_min: float, threshold: float) -> dict[str, float]:
  """The overlay colour range: ``[min, 2·threshold − min]``.

  One range for every image of a folder, centred on the decision threshold,
  so colours compare across images and the upper half of the colour map
  (yellow to red in ``jet``) means "above the threshold" **(ours)**.
  """
  if not np.isfinite(map_min) or threshold <= map_min:
    return {}
  return dict(vmin=float(map_min), vmax=float(2.0 * threshold - map_min))


TRAINING_STATS = "training_stats"  # The key of the model's meta.
# How far new images may lie from the training images before predict warns
# (ours): a median image side off by more than this factor...
_SIZE_FACTOR = 1.25
# ...a median intensity statistic beyond the training images' 5-95 % range
# widened by this fraction of the range on each side (and at least
# _MIN_GREY grey levels)...
_RANGE_MARGIN = 0.5
_MIN_GREY = 8.0
# ...and a median image score above the training images' 95th percentile
# (a score is the method's feature distance to its training data).
_SCORE_QUANTILE = 95


def _quantiles(values: Sequence[float]) -> Optional[list[float]]:
  """``[min, 5 %, median, 95 %, max]`` of ``values`` (None if empty)."""
  v = np.asarray([x for x in values if x is not None and np.isfinite(x)],
                 np.float64)
  if not v.size:
    return None
  return [float(x) for x in np.percentile(v, [0, 5, 50, 95, 100])]


def image_size_of(path: str) -> Optional[tuple[int, int]]:
  """``(width, height)`` from the file's header, or None."""
  try:
    with Image.open(path) as img:
      return img.size
  except (OSError, ValueError):
    return None


def view_stats(view: np.ndarray) -> tuple[float, float]:
  """Mean and standard deviation of an image's grey levels (0-255)."""
  v = np.asarray(view, np.float32)
  return float(v.mean()), float(v.std())


def training_stats(*, sizes: Sequence[Optional[tuple[int, int]]],
                   means: Sequence[float], stds: Sequence[float],
                   scores: Optional[Sequence[float]]) -> dict[str, Any]:
  """What ``unlike_training`` compares new images with, stored in the
  model's meta at fit time (``TRAINING_STATS``).

  Args:
    sizes: ``(width, height)`` of each training image (None: unknown).
    means: each training image's mean grey level, as the model saw it.
    stds: each one's grey-level standard deviation.
    scores: the training images' scores (transductive for inspect), or None.
  """
  known = [s for s in sizes if s]
  return {
      "images": len(means),
      "width": _quantiles([w for w, _ in known]),
      "height": _quantiles([h for _, h in known]),
      "mean": _quantiles(means), "std": _quantiles(stds),
      "score": None if scores is None else _quantiles(scores),
  }


def sample_training_stats(config, paths: Sequence[str], *,
                          max_images: int = 200) -> Optional[dict[str, Any]]:
  """``training_stats`` of up to ``max_images`` evenly spaced training
  images, without scores (a ``dicofun run`` model's training scores are
  not comparable with new images'); None when none can be read here.

  Args:
    config: the run config (its preprocessing gives the views).
    paths: the training images.
    max_images: how many are decoded at most (bounded cost).
  """
  idx = np.unique(np.linspace(0, len(paths) - 1, min(len(paths), max_images))
                  .round().astype(np.int64)) if len(paths) else []
  sizes, means, stds = [], [], []
  for i in idx:
    try:
      mean, std = view_stats(overlay_image(config, paths[i]))
    except Exception:  # pylint: disable=broad-except
      continue  # A tfds:// record or an unreadable file: not needed here.
    sizes.append(image_size_of(paths[i]))
    means.append(mean)
    stds.append(std)
  if not means:
    return None
  return training_stats(sizes=sizes, means=means, stds=stds, scores=None)


def _outside(value: float, q: list[float]) -> bool:
  lo, hi = q[1], q[3]
  margin = max(_RANGE_MARGIN * (hi - lo), _MIN_GREY)
  return not lo - margin <= value <= hi + margin


def unlike_training(stats: Optional[dict[str, Any]], *,
                    sizes: Sequence[Optional[tuple[int, int]]],
                    means: Sequence[float], stds: Sequence[float],
                    scores: Sequence[float]) -> list[str]:
  """Warnings, one a line, when new images are unlike the training images.

  Compared, as medians over the new images against the training images'
  statistics (``training_stats``): the image size, the grey-level mean and
  spread, and the image score, the method's feature distance to its training
  data (above the training images' 95th percentile: farther from the
  training distribution than the training images themselves are). [] for a
  model saved without statistics (before issue 29).
  """
  if not stats:
    return []
  out = []
  known = [s for s in sizes if s]
  if known and stats.get("width") and stats.get("height"):
    w = float(np.median([x for x, _ in known]))
    h = float(np.median([y for _, y in known]))
    tw, th = stats["width"][2], stats["height"][2]
    if (max(w / tw, tw / w) > _SIZE_FACTOR
        or max(h / th, th / h) > _SIZE_FACTOR):
      out.append(f"the new images are {w:.0f}x{h:.0f} px (median), the "
                 f"training images were {tw:.0f}x{th:.0f}")
  for key, values, what in (("mean", means, "mean grey level"),
                            ("std", stds, "grey-level spread")):
    q = stats.get(key)
    if q and values and _outside(float(np.median(values)), q):
      out.append(f"their {what} is {float(np.median(values)):.1f} (median), "
                 f"the training images' {q[1]:.1f} to {q[3]:.1f}")
  q = stats.get("score")
  if q and len(scores) and float(np.median(scores)) > q[3]:
    out.append(f"their median score {float(np.median(scores)):.4g} is above "
               f"{_SCORE_QUANTILE} % of the training images' scores "
               f"({q[3]:.4g}): they lie farther from the training features "
               "than the training images do")
  if not out:
    return []
  return ["These images are unlike the model's training images ("
          + "; ".join(out) + "): its scores and threshold may not apply; "
          "inspect them, or train a model on images of this kind"]


def predict_folder(run_dir: str, images_dir: str, *,
                   out_dir: Optional[str] = None,
                   threshold: Optional[float] = None,
                   chunk: int = 64,
                   overlays: bool = True,
                   keep_maps: bool = False,
                   strict: bool = False) -> PredictOutcome:
  """Scores every image under ``images_dir`` with the run in ``run_dir``.

  Args:
    run_dir: a finished run's workdir (holds the ``model`` checkpoint).
    images_dir: folder of images (searched recursively).
    out_dir: output folder (default ``<run_dir>/predictions``).
    threshold: decision threshold; None uses the one stored with the model.
    chunk: images per ``method.predict`` call; bounds the memory held by
      anomaly maps **(ours)**.
    overlays: write the per-image overlay PNGs.
    keep_maps: keep ``maps.npy``, the (n, S, S) float32 anomaly maps in the
      row order of scores.csv (the maps are spooled there anyway, so that
      memory stays bounded while overlays share one colour scale).
    strict: abort on an unreadable file instead of skipping it.

  Returns:
    A PredictOutcome.

  Raises:
    FileNotFoundError: no checkpoint in ``run_dir`` or no image found.
    ValueError: the run stored no threshold and none is given.
    DatasetError: no file is readable, or ``strict`` and one is not.
  """
  state, config, meta = checkpoint.load_inference(run_dir)
  method = methods.get_method(config.method)
  threshold_given = threshold is not None
  if threshold is None:
    if meta.get("threshold") is None:
      raise ValueError(f"the run in {run_dir} stored no decision threshold "
                       "(no validation split, no training scores); pass "
                       "--threshold")
    threshold = float(meta["threshold"])
  out_dir = os.path.abspath(out_dir or os.path.join(run_dir, "predictions"))
  paths = list_images(images_dir)
  fileio.check_disjoint(images_dir, out_dir, input_flag="--images")
  # Written into a fresh sibling folder that replaces out_dir at the end:
  # a failure leaves the previous predictions whole, and a folder holding
  # files dicofun did not write is refused (``fileio.replacing_dir``).
  with fileio.replacing_dir(out_dir, command="predict",
                            info={"model": os.path.abspath(run_dir),
                                  "images": os.path.abspath(images_dir)}
                            ) as tmp:
    outcome = _predict_into(
        tmp, out_dir, config=config, state=state, method=method,
        images_dir=images_dir, paths=paths, threshold=threshold, chunk=chunk,
        overlays=overlays, keep_maps=keep_maps, strict=strict, run_dir=run_dir,
        meta=meta, threshold_given=threshold_given)
  for line in outcome.warnings:
    logging.warning("%s", line)
  return outcome


def _predict_into(tmp: str, out_dir: str, *, config, state, method,
                  images_dir: str, paths: list[str], threshold: float,
                  chunk: int, overlays: bool, keep_maps: bool, strict: bool,
                  run_dir: str, meta: dict[str, Any],
                  threshold_given: bool) -> PredictOutcome:
  """``predict_folder``'s work, writing into ``tmp`` (renamed to
  ``out_dir`` once it returns); the outcome names the final paths."""
  screened = screen(images_dir, paths, out_dir=tmp,
                    image_size=int(config.dataset.image_size), strict=strict,
                    max_pixels=pipeline.max_image_pixels(config))
  paths = screened.readable
  logging.info("Scoring %d images from %s with the %s model of %s "
               "(threshold %.6g)", len(paths), images_dir, config.method,
               run_dir, threshold)
  category = config.dataset.get("category", "") if "dataset" in config else ""
  chunk = max(int(chunk), 1)
  starts = range(0, len(paths), chunk)
  scores = np.zeros(len(paths), np.float64)
  maps_path = os.path.join(tmp, "maps.npy")
  maps_file = None
  map_min, map_max = np.inf, -np.inf
  for start in progress.progress(starts, total=len(starts), desc="predict"):
    sub = paths[start:start + chunk]
    s, maps = method.predict(config, state, records_for(sub,
                                                        category=category))
    s = np.asarray(s, np.float64).reshape(-1)
    if s.shape != (len(sub),):
      raise ValueError(f"{config.method}.predict returned {s.shape} scores "
                       f"for {len(sub)} images")
    scores[start:start + len(sub)] = s
    if maps is None:
      continue
    maps = np.asarray(maps, np.float32)
    if maps_file is None:
      maps_file = np.lib.format.open_memmap(
          maps_path, mode="w+", dtype=np.float32,
          shape=(len(paths),) + maps.shape[1:])
    maps_file[start:start + len(sub)] = maps
    map_min = min(map_min, float(maps.min()))
    map_max = max(map_max, float(maps.max()))
  decisions = metrics.is_anomalous(scores, threshold)
  csv_path = os.path.join(out_dir, "scores.csv")
  with fileio.open_atomic(os.path.join(tmp, "scores.csv"), newline="") as f:
    w = csv.writer(f)
    w.writerow(["file", "score", "decision", "threshold"])
    for path, s, d in zip(paths, scores, decisions):
      w.writerow([os.path.relpath(path, images_dir), repr(float(s)), int(d),
                  repr(float(threshold))])
  written, pictures, means, stds = [], [], [], []
  scale = {}
  if maps_file is not None:
    # Centred on the threshold; where every map lies above it (images
    # unlike the training ones), the maps' own common range.
    scale = color_scale(map_min, threshold) or (
        dict(vmin=float(map_min), vmax=float(map_max))
        if map_max > map_min else {})
  rels = [os.path.relpath(p, images_dir) for p in paths]
  # One decode per image: the report's thumbnails, the full-size overlay
  # and the grey-level statistics compared with the training images'.
  for i in progress.progress(range(len(paths)), desc="report images"):
    view = overlay_image(config, paths[i])
    mean, std = view_stats(view)
    means.append(mean)
    stds.append(std)
    amap = None if maps_file is None else np.asarray(maps_file[i])
    pictures.append(report.write_thumbs(tmp, rels[i], view, amap, scale))
    if overlays and amap is not None:
      out = _overlay_path(tmp, images_dir, paths[i])
      os.makedirs(os.path.dirname(out), exist_ok=True)
      viz.save_overlay(out, view, amap, **scale)
      written.append(_overlay_path(out_dir, images_dir, paths[i]))
  if maps_file is not None:
    maps_file.flush()
    del maps_file
    if not keep_maps:
      os.remove(maps_path)
  warnings = unlike_training(
      meta.get(TRAINING_STATS), sizes=[image_size_of(p) for p in paths],
      means=means, stds=stds, scores=scores)
  viz.save_score_histogram(os.path.join(tmp, "histogram.png"), scores,
                           threshold=threshold)
  rule = ("given with --threshold" if threshold_given else
          f"the model's: {meta.get('threshold_rule') or 'stored with it'}")
  fileio.write_json_atomic(os.path.join(tmp, report.PREDICT_JSON), {
      "images_dir": os.path.abspath(images_dir),
      "model": os.path.abspath(run_dir), "method": config.method,
      "image_size": int(config.dataset.image_size),
      "threshold": float(threshold), "threshold_rule": rule,
      "images": len(paths), "flagged": int(decisions.sum()),
      "unreadable": len(screened.errors),
      "colour_scale": dict(scale, threshold=float(threshold)) if scale
                      else None,
      "warnings": warnings, "commit": results_lib.git_commit()}, indent=1)
  report.build(tmp, shown_dir=out_dir)
  logging.info("%d of %d images at or above the threshold; wrote %s and %d "
               "overlays", int(decisions.sum()), len(paths), csv_path,
               len(written))
  return PredictOutcome(files=paths, scores=scores, decisions=decisions,
                        threshold=float(threshold), csv_path=csv_path,
                        overlays=written, errors=screened.errors,
                        errors_path=os.path.join(out_dir, "errors.csv"),
                        warnings=warnings,
                        report_path=os.path.join(out_dir, report.REPORT))
