"""Figures of a run: ROC curves, anomaly maps, best/worst grids, heatmaps.

matplotlib is imported inside each function with the non-interactive Agg
backend, so importing ``dicofun.viz`` costs nothing and works on headless
machines. Images passed here are the preprocessed (normalised) float arrays
of the pipeline; they are de-normalised with ``mean``/``std`` for display.
Anomaly maps may have another size than the images: they are drawn stretched
over the image's extent.
"""

from __future__ import annotations

import os
from typing import Optional, Sequence

import numpy as np

from dicofun import metrics
from dicofun.constants import IMAGENET_MEAN
from dicofun.constants import IMAGENET_STD


def _pyplot():
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


def _save(fig, path: str, *, dpi: int = 100) -> None:
  plt = _pyplot()
  d = os.path.dirname(path)
  if d:
    os.makedirs(d, exist_ok=True)
  fig.savefig(path, dpi=dpi)
  plt.close(fig)


def _display_image(image: np.ndarray, mean: Sequence[float],
                   std: Sequence[float]) -> np.ndarray:
  """(H, W, 3) float in [0, 1] from a normalised or uint8 image."""
  image = np.asarray(image)
  if image.ndim == 3 and image.shape[0] in (1, 3) and image.shape[-1] not in (
      1, 3):
    image = np.moveaxis(image, 0, -1)  # CHW → HWC
  if image.ndim == 2:
    image = image[..., None]
  if image.dtype == np.uint8:
    out = image.astype(np.float32) / 255.0
  else:
    out = image.astype(np.float32) * np.asarray(std, np.float32) + np.asarray(
        mean, np.float32)
  if out.shape[-1] == 1:
    out = np.repeat(out, 3, axis=-1)
  return np.clip(out, 0.0, 1.0)


def _extent(image: np.ndarray) -> tuple[float, float, float, float]:
  h, w = image.shape[:2]
  return (-0.5, w - 0.5, h - 0.5, -0.5)


def _contour(ax, mask: Optional[np.ndarray], extent, color: str = "lime",
             linewidth: float = 1.0):
  if mask is None:
    return
  mask = np.asarray(mask, np.float32)
  if mask.ndim == 3:
    mask = mask[..., 0]
  if mask.max() <= 0.5:
    return
  h, w = mask.shape
  # Mask pixel centres mapped onto the displayed image's extent.
  x = np.linspace(extent[0], extent[1], w + 1)[:-1] + (extent[1] -
                                                      extent[0]) / (2 * w)
  y = np.linspace(extent[3], extent[2], h + 1)[:-1] + (extent[2] -
                                                      extent[3]) / (2 * h)
  ax.contour(x, y, (mask > 0.5).astype(np.float32), levels=[0.5],
             colors=color, linewidths=linewidth)


def _range(maps: Sequence[np.ndarray], vmin, vmax) -> tuple[float, float]:
  """One colour scale for all maps of a figure, so maps are comparable."""
  if vmin is None:
    vmin = float(min(np.min(m) for m in maps))
  if vmax is None:
    vmax = float(max(np.max(m) for m in maps))
  if vmax <= vmin:
    vmax = vmin + 1e-6
  return vmin, vmax


def _off(ax) -> None:
  ax.set_xticks([])
  ax.set_yticks([])


def save_roc_curves(path: str, *, image_scores: np.ndarray,
                    image_labels: np.ndarray,
                    maps: Optional[np.ndarray] = None,
                    masks: Optional[np.ndarray] = None) -> None:
  """Image ROC and (when maps and masks are given) pixel ROC side by side.

  Args:
    path: output PNG.
    image_scores: (N,) image scores.
    image_labels: (N,) 0/1 labels.
    maps: optional (N, H, W) anomaly maps.
    masks: optional (N, H, W) masks (pixels > 0.5 anomalous).
  """
  from sklearn import metrics as skm  # pylint: disable=g-import-not-at-top
  plt = _pyplot()
  image_scores = np.asarray(image_scores, np.float64).reshape(-1)
  image_labels = np.asarray(image_labels).reshape(-1).astype(int)
  pixel = maps is not None and masks is not None
  fig, axes = plt.subplots(1, 2 if pixel else 1, figsize=(
      10 if pixel else 5, 5), squeeze=False)
  ax = axes[0, 0]
  if len(np.unique(image_labels)) == 2:
    fpr, tpr, _ = skm.roc_curve(image_labels, image_scores)
    auc = metrics.image_auroc(image_scores, image_labels)
    ax.plot(fpr, tpr, label=f"AUROC = {auc:.4f}")
  else:
    ax.text(0.5, 0.5, "one class only", ha="center")
  _roc_axes(ax, "Image ROC")
  if pixel:
    ax = axes[0, 1]
    fpr, tpr = metrics.pixel_roc_curve(maps, masks)
    if fpr.size:
      auc = metrics.pixel_auroc(maps, masks)
      ax.plot(fpr, tpr, label=f"AUROC = {auc:.4f}")
    else:
      ax.text(0.5, 0.5, "no anomalous pixels", ha="center")
    _roc_axes(ax, "Pixel ROC")
  fig.tight_layout()
  _save(fig, path)


def save_score_histogram(path: str, scores: np.ndarray, *, threshold: float,
                         labels: Optional[np.ndarray] = None,
                         bins: int = 30) -> None:
  """Histogram of image scores with the decision threshold as a line.

  Args:
    path: output PNG.
    scores: (N,) image scores.
    threshold: drawn as a vertical red line.
    labels: optional (N,) 0 normal / 1 anomalous / -1 unknown; when some are
      known, normals and anomalies are stacked in two colours.
    bins: number of bins.
  """
  plt = _pyplot()
  scores = np.asarray(scores, np.float64).reshape(-1)
  fig, ax = plt.subplots(figsize=(6, 3.5))
  edges = np.histogram_bin_edges(np.append(scores, threshold), bins=bins)
  if labels is not None and np.any(np.asarray(labels) >= 0):
    labels = np.asarray(labels).reshape(-1)
    groups = [(scores[labels == 0], "normal", "tab:blue"),
              (scores[labels == 1], "anomalous", "tab:orange"),
              (scores[labels < 0], "unlabelled", "tab:gray")]
    groups = [g for g in groups if g[0].size]
    ax.hist([g[0] for g in groups], bins=edges, stacked=True,
            label=[g[1] for g in groups], color=[g[2] for g in groups])
  else:
    ax.hist(scores, bins=edges, color="tab:gray", label="images")
  ax.axvline(threshold, color="red", linestyle="--",
             label=f"threshold {threshold:.4g}")
  ax.set_xlabel("image anomaly score")
  ax.set_ylabel("images")
  ax.legend(fontsize=8)
  fig.tight_layout()
  _save(fig, path)


def _roc_axes(ax, title: str) -> None:
  ax.plot([0, 1], [0, 1], "--", color="gray", linewidth=0.8)
  ax.set_xlim(0, 1)
  ax.set_ylim(0, 1.01)
  ax.set_xlabel("False positive rate")
  ax.set_ylabel("True positive rate")
  ax.set_title(title)
  if ax.get_legend_handles_labels()[0]:
    ax.legend(loc="lower right")


def _anomaly_maps_figure(images: np.ndarray, masks: Optional[np.ndarray],
                         maps: np.ndarray, *,
                         scores: Optional[np.ndarray] = None,
                         titles: Optional[Sequence[str]] = None,
                         mean: Sequence[float] = IMAGENET_MEAN,
                         std: Sequence[float] = IMAGENET_STD,
                         alpha: float = 0.5):
  """The matplotlib figure: one column per image; rows: image, GT contour,
  map, overlay.

  Args:
    images: (N, H, W, 3) normalised float images (or uint8).
    masks: (N, h, w) ground-truth masks (None entries / all-zero allowed).
    maps: (N, h, w) anomaly maps; one colour scale for the whole figure.
    scores: optional (N,) image scores shown in the titles.
    titles: optional (N,) column titles (e.g. file names).
    mean: normalisation mean of ``images``.
    std: normalisation std of ``images``.
    alpha: overlay opacity of the map.
  """
  plt = _pyplot()
  n = len(maps)
  vmin, vmax = _range([np.asarray(m) for m in maps], None, None)
  fig, axes = plt.subplots(4, n, figsize=(2.4 * n, 9.6), squeeze=False)
  for j in range(n):
    img = _display_image(images[j], mean, std)
    ext = _extent(img)
    mask = None if masks is None else masks[j]
    title = "" if titles is None else str(titles[j])
    if scores is not None:
      title = (title + "\n" if title else "") + f"score {float(scores[j]):.4g}"
    axes[0, j].imshow(img)
    axes[0, j].set_title(title, fontsize=7)
    axes[1, j].imshow(img)
    _contour(axes[1, j], mask, ext, color="red", linewidth=1.5)
    im = axes[2, j].imshow(np.asarray(maps[j], np.float32), cmap="jet",
                           vmin=vmin, vmax=vmax, extent=ext)
    axes[3, j].imshow(img)
    axes[3, j].imshow(np.asarray(maps[j], np.float32), cmap="jet", vmin=vmin,
                      vmax=vmax, alpha=alpha, extent=ext)
    _contour(axes[3, j], mask, ext, color="white")
    for i in range(4):
      _off(axes[i, j])
  for i, name in enumerate(("image", "ground truth", "anomaly map",
                            "overlay")):
    axes[i, 0].set_ylabel(name)
  # Attached to every axis so all columns shrink alike.
  fig.colorbar(im, ax=axes.ravel().tolist(), fraction=0.02)
  return fig


def save_anomaly_maps(path: str, images: np.ndarray, masks: np.ndarray,
                      maps: np.ndarray, **kwargs) -> None:
  """The anomaly-map figure as a PNG: one column per image; rows: image,
  GT contour, map, overlay (keyword arguments: ``anomaly_maps_image``'s)."""
  _save(_anomaly_maps_figure(images, masks, maps, **kwargs), path)


def anomaly_maps_image(images: np.ndarray, masks: Optional[np.ndarray],
                       maps: np.ndarray, *,
                       scores: Optional[np.ndarray] = None,
                       titles: Optional[Sequence[str]] = None,
                       mean: Sequence[float] = IMAGENET_MEAN,
                       std: Sequence[float] = IMAGENET_STD,
                       alpha: float = 0.5, dpi: int = 60) -> np.ndarray:
  """The anomaly-map figure of ``save_anomaly_maps`` as an RGB array.

  Args:
    images: (N, H, W, 3) normalised float images (or uint8).
    masks: (N, h, w) ground-truth masks, or None.
    maps: (N, h, w) anomaly maps; one colour scale for the whole figure.
    scores: optional (N,) image scores shown in the titles.
    titles: optional (N,) column titles.
    mean: normalisation mean of ``images``.
    std: normalisation std of ``images``.
    alpha: overlay opacity of the map.
    dpi: resolution (the figure is 2.4·N × 9.6 inches).

  Returns:
    (height, width, 3) uint8, e.g. for a TensorBoard image summary.
  """
  plt = _pyplot()
  fig = _anomaly_maps_figure(images, masks, maps, scores=scores,
                             titles=titles, mean=mean, std=std, alpha=alpha)
  fig.set_dpi(dpi)
  fig.canvas.draw()
  rgb = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
  plt.close(fig)
  return rgb


def save_overlay(path: str, image_uint8: np.ndarray, amap: np.ndarray, *,
                 alpha: float = 0.5, vmin: Optional[float] = None,
                 vmax: Optional[float] = None) -> None:
  """One image with its anomaly map overlaid, at the image's resolution.

  Args:
    path: output PNG.
    image_uint8: (H, W, 3) uint8 image.
    amap: (h, w) anomaly map, stretched over the image.
    alpha: map opacity.
    vmin: colour scale minimum (default: map minimum). Pass a fixed range
      (e.g. 0 and the decision threshold × 2) to compare images.
    vmax: colour scale maximum (default: map maximum).
  """
  plt = _pyplot()
  img = _display_image(np.asarray(image_uint8, np.uint8), IMAGENET_MEAN,
                       IMAGENET_STD)
  amap = np.asarray(amap, np.float32)
  vmin, vmax = _range([amap], vmin, vmax)
  h, w = img.shape[:2]
  fig = plt.figure(figsize=(w / 100, h / 100))
  ax = fig.add_axes((0, 0, 1, 1))
  ax.imshow(img)
  ax.imshow(amap, cmap="jet", alpha=alpha, vmin=vmin, vmax=vmax,
            extent=_extent(img))
  ax.axis("off")
  _save(fig, path)


def save_best_worst_grid(path: str, images: np.ndarray, masks: np.ndarray,
                         maps: np.ndarray, scores: np.ndarray,
                         labels: np.ndarray, *, k: int = 4,
                         mean: Sequence[float] = IMAGENET_MEAN,
                         std: Sequence[float] = IMAGENET_STD,
                         alpha: float = 0.5) -> None:
  """Best and worst ranked images as overlays with their GT contours.

  Rows: best normals (lowest scores), best anomalies (highest scores), worst
  normals (highest scores) and worst anomalies (lowest scores) — the last two
  are the misrankings that cost AUROC. Each tile's title gives its score and
  true label.

  Args:
    path: output PNG.
    images: (N, H, W, 3) normalised float images (or uint8).
    masks: (N, h, w) masks.
    maps: (N, h, w) anomaly maps; one colour scale for the figure.
    scores: (N,) image scores.
    labels: (N,) 0 normal / 1 anomalous.
    k: tiles per row.
    mean: normalisation mean of ``images``.
    std: normalisation std of ``images``.
    alpha: map opacity.
  """
  plt = _pyplot()
  scores = np.asarray(scores, np.float64).reshape(-1)
  labels = np.asarray(labels).reshape(-1).astype(int)
  normal = np.flatnonzero(labels == 0)
  anomalous = np.flatnonzero(labels == 1)
  by_score_n = normal[np.argsort(scores[normal], kind="stable")]
  by_score_a = anomalous[np.argsort(-scores[anomalous], kind="stable")]
  rows = [("best normal (lowest)", by_score_n[:k]),
          ("best anomalous (highest)", by_score_a[:k]),
          ("worst normal (highest)", by_score_n[::-1][:k]),
          ("worst anomalous (lowest)", by_score_a[::-1][:k])]
  vmin, vmax = _range([np.asarray(m) for m in maps], None, None)
  fig, axes = plt.subplots(4, k, figsize=(2.4 * k, 10), squeeze=False)
  for i, (name, idx) in enumerate(rows):
    for j in range(k):
      ax = axes[i, j]
      _off(ax)
      if j == 0:
        ax.set_ylabel(name, fontsize=8)
      if j >= len(idx):
        ax.set_frame_on(False)
        continue
      t = idx[j]
      img = _display_image(images[t], mean, std)
      ext = _extent(img)
      ax.imshow(img)
      ax.imshow(np.asarray(maps[t], np.float32), cmap="jet", vmin=vmin,
                vmax=vmax, alpha=alpha, extent=ext)
      _contour(ax, None if masks is None else masks[t], ext, color="white")
      kind = "anomalous" if labels[t] == 1 else "normal"
      ax.set_title(f"{scores[t]:.4g} ({kind})", fontsize=8)
  fig.tight_layout()
  _save(fig, path)


def save_heatmap(path: str, matrix: np.ndarray, *,
                 row_labels: Sequence[str], col_labels: Sequence[str],
                 title: str = "", fmt: str = "{:.3f}", xlabel: str = "",
                 ylabel: str = "", cmap: str = "viridis") -> None:
  """An annotated heatmap of a sweep table (rows × columns of a metric).

  Args:
    path: output PNG.
    matrix: (R, C) values; NaN cells are left blank and marked "—".
    row_labels: R row names.
    col_labels: C column names.
    title: figure title.
    fmt: cell text format.
    xlabel: x-axis label (columns).
    ylabel: y-axis label (rows).
    cmap: colour map.
  """
  plt = _pyplot()
  matrix = np.asarray(matrix, np.float64)
  if matrix.ndim != 2:
    raise ValueError(f"matrix must be 2-D, got {matrix.shape}")
  r, c = matrix.shape
  if len(row_labels) != r or len(col_labels) != c:
    raise ValueError("labels do not match the matrix shape")
  fig, ax = plt.subplots(figsize=(1.0 + 0.9 * c, 1.0 + 0.6 * r))
  finite = matrix[np.isfinite(matrix)]
  lo, hi = (finite.min(), finite.max()) if finite.size else (0.0, 1.0)
  im = ax.imshow(np.ma.masked_invalid(matrix), cmap=cmap, aspect="auto",
                 vmin=lo, vmax=hi if hi > lo else lo + 1e-6)
  mid = (lo + hi) / 2
  for i in range(r):
    for j in range(c):
      v = matrix[i, j]
      text = "—" if not np.isfinite(v) else fmt.format(v)
      ax.text(j, i, text, ha="center", va="center", fontsize=8,
              color="black" if not np.isfinite(v) or v > mid else "white")
  ax.set_xticks(range(c))
  ax.set_xticklabels([str(x) for x in col_labels], rotation=45, ha="right")
  ax.set_yticks(range(r))
  ax.set_yticklabels([str(x) for x in row_labels])
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  ax.set_title(title)
  fig.colorbar(im, ax=ax)
  fig.tight_layout()
  _save(fig, path)


# History keys drawn by ``save_learning_curve``, by panel: evaluation
# metrics, training losses and label/gate statistics.
def _curve_panel(key: str) -> Optional[str]:
  if key.endswith(("_auroc", "_aupro")):
    return "evaluation"
  if "loss" in key or key in ("bce", "smoothness", "rec"):
    return "loss"
  if "fraction" in key or key.startswith(("gate", "item_")):
    return "fraction"
  return None


def curve_x(history: Sequence[dict]) -> str:
  """The x axis of a learning curve: ``"step"`` (optimiser steps) when every
  row has one, else ``"epoch"``."""
  return "step" if history and all("step" in r for r in history) else "epoch"


def curve_series(history: Sequence[dict]) -> dict[str, dict[str, tuple]]:
  """The learning-curve series of a training history, by panel.

  Args:
    history: one row per epoch (``training.run_loop``'s history): ``epoch``
      (and ``step``, the optimiser steps, where the method counts them) and
      numeric values; evaluated epochs add ``test_*`` (and FUN-AD's
      ``transductive_image_auroc``).

  Returns:
    ``{panel: {key: (xs, values)}}`` for the panels "evaluation", "loss"
    and "fraction" that have at least one numeric value; x is the row's
    ``curve_x`` (step or epoch) and a key's series holds only the rows where
    it was recorded.
  """
  panels: dict[str, dict[str, tuple]] = {}
  x_key = curve_x(history)
  keys = sorted({k for row in history for k in row})
  for key in keys:
    panel = _curve_panel(key)
    if panel is None:
      continue
    pts = [(row[x_key], float(row[key])) for row in history
           if isinstance(row.get(key), (int, float))
           and not isinstance(row.get(key), bool) and x_key in row]
    if pts:
      epochs, values = zip(*pts)
      panels.setdefault(panel, {})[key] = (tuple(epochs), tuple(values))
  return panels


def save_learning_curve(path: str, history: Sequence[dict], *,
                        title: str = "") -> bool:
  """Learning curves of a training history as one PNG, a panel per kind.

  The x axis is the optimiser step where the history has one (FUN-AD), else
  the epoch. Evaluation metrics per evaluated epoch (test image/pixel AUROC, FUN-AD's
  transductive image AUROC), the training losses per epoch, and label or
  gate statistics per epoch (FUN-AD's pseudo-anomalous fraction, DiCo's gate
  and item usage), each on its own axes (``curve_series``).

  Args:
    path: output PNG.
    history: the run's history rows.
    title: figure title.

  Returns:
    Whether a figure was written (False: nothing to draw).
  """
  panels = curve_series(history)
  if not panels:
    return False
  plt = _pyplot()
  x_key = curve_x(history)
  order = [p for p in ("evaluation", "loss", "fraction") if p in panels]
  fig, axes = plt.subplots(1, len(order), figsize=(5.0 * len(order), 3.6),
                           squeeze=False)
  for ax, panel in zip(axes[0], order):
    for key, (epochs, values) in panels[panel].items():
      ax.plot(epochs, values, marker="o", markersize=3, label=key)
    ax.set_xlabel(x_key)
    ax.set_title({"evaluation": f"evaluation (last {x_key} = result)",
                  "loss": "training loss", "fraction": "labels / gates"}[panel])
    if panel == "fraction" and all(
        v > 0 for _, vals in panels[panel].values() for v in vals):
      ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  _save(fig, path)
  return True
