"""The standard metric set of METHODS §4 and markdown tables of results.

``compute_metrics`` runs a list of evaluators over one evaluation view. An
evaluator is a plain function registered by name in ``EVALUATORS``; it takes
the view's arrays as keyword arguments and yields ``(metric_name, value)``
pairs (the big_vision evaluator style), so a new metric is one function and
one registry entry::

    def _my_eval(*, image_scores, image_labels, **unused):
      yield "my_metric", float(...)

    EVALUATORS["mine"] = _my_eval
    compute_metrics(..., evaluators=("image", "pixel", "mine"))
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Optional, Sequence

from absl import logging
import numpy as np

from dicofun import metrics

Evaluator = Callable[..., Iterator[tuple[str, float]]]


def _image_evaluator(*, image_scores: np.ndarray, image_labels: np.ndarray,
                     **unused: Any) -> Iterator[tuple[str, float]]:
  """image_auroc and image_f1_max."""
  yield "image_auroc", metrics.image_auroc(image_scores, image_labels)
  yield "image_f1_max", metrics.image_f1_max(image_scores, image_labels)


def _pixel_evaluator(*, maps: Optional[np.ndarray],
                     masks: Optional[np.ndarray],
                     has_mask: Optional[np.ndarray], fpr_limit: float = 0.3,
                     **unused: Any) -> Iterator[tuple[str, float]]:
  """pixel_auroc, aupro and pixel_ap over the images that have a mask."""
  if maps is None or masks is None:
    return
  maps = np.asarray(maps)
  masks = np.asarray(masks)
  if maps.shape != masks.shape:
    raise ValueError(f"maps {maps.shape} and masks {masks.shape} differ")
  if has_mask is not None:
    keep = np.flatnonzero(np.asarray(has_mask, bool))
    if keep.size < len(maps):
      logging.info("Pixel metrics over the %d of %d images with a mask",
                   keep.size, len(maps))
      # Index only when needed: ``maps[keep]`` copies every kept map.
      maps, masks = maps[keep], masks[keep]
  if len(maps) == 0:
    logging.warning("No image with a ground-truth mask: no pixel metrics")
    return
  # Before sorting every pixel: masks without one anomalous pixel (a dataset
  # without masks, e.g. ELPV, has only its normals' empty masks) define no
  # pixel ROC.
  if not np.any(masks > 0.5):
    logging.warning("No anomalous pixel in the %d masks: no pixel metrics",
                    len(masks))
    return
  # One sort of all pixels serves the three metrics.
  yield from metrics.pixel_metrics(maps, masks, fpr_limit=fpr_limit).items()


def image_auroc_by_defect(image_scores: np.ndarray, image_labels: np.ndarray,
                          defects: Sequence[str]) -> dict[str, dict[str, float]]:
  """Image AUROC of each defect type: its anomalies against every normal.

  Which kinds of defect a method misses is what the one pooled AUROC hides
  (e.g. thin cracks against large breaks on magnetic tile).

  Args:
    image_scores: (N,) image anomaly scores.
    image_labels: (N,) 0 normal / 1 anomalous.
    defects: (N,) defect type per image (the normal images' is ignored).

  Returns:
    ``{defect: {"image_auroc": value, "count": anomalies of that type}}``
    over the anomalous images' types, sorted by name; empty when there is no
    normal image.
  """
  scores = np.asarray(image_scores, np.float64).reshape(-1)
  labels = np.asarray(image_labels).reshape(-1)
  defects = np.asarray([str(d) for d in defects])
  if defects.shape != scores.shape:
    raise ValueError(f"{defects.size} defect names for {scores.size} scores")
  normal = labels == 0
  out: dict[str, dict[str, float]] = {}
  if not normal.any():
    return out
  for name in sorted(set(defects[labels == 1].tolist())):
    keep = normal | ((labels == 1) & (defects == name))
    out[name] = {"image_auroc": metrics.image_auroc(scores[keep], labels[keep]),
                 "count": int(np.sum(keep & ~normal))}
  return out


def flat_metrics(view_metrics: dict[str, Any], prefix: str = ""
                 ) -> dict[str, float]:
  """One view's metrics with nested entries joined by dots, numbers only:
  ``{"image_auroc": a, "by_defect": {"crack": {"image_auroc": b}}}`` →
  ``{"image_auroc": a, "by_defect.crack.image_auroc": b, ...}``."""
  out: dict[str, float] = {}
  for key, value in view_metrics.items():
    name = f"{prefix}{key}"
    if isinstance(value, dict):
      out.update(flat_metrics(value, prefix=f"{name}."))
    elif isinstance(value, (int, float, np.integer, np.floating)) and not \
        isinstance(value, bool):
      out[name] = float(value)
  return out


# Name → evaluator. Plain dict: add entries to plug in new metrics.
EVALUATORS: dict[str, Evaluator] = {
    "image": _image_evaluator,
    "pixel": _pixel_evaluator,
}

METRIC_NAMES = ("image_auroc", "pixel_auroc", "aupro", "image_f1_max",
                "pixel_ap")


def compute_metrics(*, image_scores: np.ndarray, image_labels: np.ndarray,
                    maps: Optional[np.ndarray] = None,
                    masks: Optional[np.ndarray] = None,
                    has_mask: Optional[np.ndarray] = None,
                    evaluators: Sequence[str] = ("image", "pixel"),
                    fpr_limit: float = 0.3,
                    defects: Optional[Sequence[str]] = None
                    ) -> dict[str, Any]:
  """The metrics of one evaluation view.

  Args:
    image_scores: (N,) image anomaly scores, higher = more anomalous.
    image_labels: (N,) 0 normal / 1 anomalous (both must be present).
    maps: optional (N, H, W) anomaly maps at the evaluation size.
    masks: optional (N, H, W) ground-truth masks (pixels > 0.5 anomalous).
    has_mask: optional (N,) bool; pixel metrics use only the images where it
      is True (e.g. anomalies whose mask file is missing are left out). None
      means every image.
    evaluators: names in ``EVALUATORS`` to run, in order.
    fpr_limit: AUPRO integration limit (0.3 in METHODS §4).
    defects: optional (N,) defect type per image; adds ``by_defect``.

  Returns:
    {"image_auroc", "image_f1_max"} always, plus {"pixel_auroc", "aupro",
    "pixel_ap"} when maps and masks are given and the masked images hold both
    normal and anomalous pixels. Values are Python floats. With ``defects``
    and at least two defect types, also ``"by_defect"``:
    ``image_auroc_by_defect``'s dict.
  """
  image_scores = np.asarray(image_scores, np.float64).reshape(-1)
  image_labels = np.asarray(image_labels).reshape(-1)
  if maps is not None and len(maps) != len(image_scores):
    raise ValueError(f"{len(maps)} maps for {len(image_scores)} scores")
  out: dict[str, float] = {}
  for name in evaluators:
    if name not in EVALUATORS:
      raise KeyError(f"unknown evaluator {name!r}; known: "
                     f"{sorted(EVALUATORS)}")
    for key, value in EVALUATORS[name](
        image_scores=image_scores, image_labels=image_labels, maps=maps,
        masks=masks, has_mask=has_mask, fpr_limit=fpr_limit):
      out[key] = float(value)
  if defects is not None:
    by = image_auroc_by_defect(image_scores, image_labels, defects)
    if len(by) >= 2:
      out["by_defect"] = by
  return out


def _cell(v: Any, float_fmt: str) -> str:
  if v is None:
    return "—"
  if isinstance(v, (bool, np.bool_)):
    return str(bool(v))
  if isinstance(v, (float, np.floating)):
    return "—" if np.isnan(v) else float_fmt.format(float(v))
  return str(v).replace("|", "\\|")


def format_table(rows: list[dict[str, Any]], columns: Sequence[str], *,
                 headers: Optional[Sequence[str]] = None,
                 float_fmt: str = "{:.4f}") -> str:
  """A markdown table: one line per row dict, one column per key.

  Args:
    rows: dicts; a missing key or None/NaN shows as "—".
    columns: keys to show, in order.
    headers: optional column titles (default: the keys).
    float_fmt: format of float cells.

  Returns:
    The table, ending with a newline.
  """
  headers = list(columns) if headers is None else list(headers)
  if len(headers) != len(columns):
    raise ValueError("headers and columns differ in length")
  lines = ["| " + " | ".join(headers) + " |",
           "|" + "---|" * len(columns)]
  for row in rows:
    lines.append("| " + " | ".join(_cell(row.get(c), float_fmt)
                                   for c in columns) + " |")
  return "\n".join(lines) + "\n"
