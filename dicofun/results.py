"""What a run writes: results.json, metrics.md, score CSVs, figures, TensorBoard.

Everything here is written by process 0 after the metrics are computed; files
are written to a temporary name and renamed, so a reader never sees half of
one (``results.json`` marks a finished run: sweeps skip such cells).
"""

from __future__ import annotations

import csv
import functools
import os
import subprocess
from typing import Any

import ml_collections
import numpy as np

from dicofun import api
from dicofun import fileio
from dicofun import summary
from dicofun import viz
from dicofun.data import pipeline


def write_json_atomic(path: str, obj: Any) -> None:
  """``obj`` (numpy values made plain) as indented JSON, written atomically."""
  fileio.write_json_atomic(path, _jsonable(obj), indent=1)


def write_metrics_md(path: str, table: str) -> None:
  """The markdown metrics table, written atomically."""
  fileio.write_text_atomic(path, table)


def write_scores_csv(path: str, data: api.RunData,
                     preds: api.Predictions) -> None:
  """Per-image test scores (file, defect, label, moved, score)."""
  moved = (np.zeros(len(data.test), bool) if data.test_is_moved is None
           else np.asarray(data.test_is_moved, bool))
  with fileio.open_atomic(path, newline="") as f:
    w = csv.writer(f)
    w.writerow(["image_path", "defect", "label", "moved", "score"])
    for r, m, s in zip(data.test, moved, np.asarray(preds.test_scores)):
      w.writerow([r.image_path, r.defect, r.label, int(m), repr(float(s))])


def write_summaries(workdir: str, metrics: dict[str, Any],
                    extra: dict[str, Any], *, enabled: bool) -> None:
  """Final metrics as TensorBoard scalars ``<view>/<metric>``, at the x of
  the last history row: the last optimiser step where the method counts
  them (``extra["steps"]``, FUN-AD), else the last epoch (the per-epoch
  ``history/*`` was written live by ``training.run_loop`` into the same
  directory)."""
  writer = summary.SummaryWriter(
      os.path.join(workdir, summary.TENSORBOARD_DIR), enabled=enabled,
      filename_suffix=".final")
  try:
    final_step = int(extra.get("steps") or extra.get("epochs", 0) or 0)
    for view, m in metrics.items():
      for k, v in (m.items() if isinstance(m, dict) else []):
        if isinstance(v, (int, float, np.floating)):
          writer.scalar(f"{view}/{k}", float(v), final_step)
  finally:
    writer.close()


@functools.lru_cache(maxsize=1)
def git_commit() -> str:
  """The commit of the dicofun checkout, or 'unknown' outside git.

  Read once per process, at the first call (the runner makes it before the
  data load): the code a process runs is the code it imported, so commits
  or edits made while a long run trains do not relabel its results.
  """
  here = os.path.dirname(os.path.abspath(__file__))
  try:
    out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here,
                         capture_output=True, text=True, timeout=10, check=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                           cwd=here, capture_output=True, text=True, timeout=10)
    return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
  except (OSError, subprocess.SubprocessError):
    return "unknown"


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
  by_view = {view: m["by_defect"] for view, m in metrics.items()
             if isinstance(m, dict) and m.get("by_defect")}
  if by_view:
    names = sorted({d for by in by_view.values() for d in by})
    lines.append("")
    lines.append("Image AUROC by defect type (its anomalies against every "
                 "normal image of the view; count in brackets):")
    lines.append("")
    lines.append("| view | " + " | ".join(names) + " |")
    lines.append("|---" * (len(names) + 1) + "|")
    for view, by in by_view.items():
      cells = [f"{by[d]['image_auroc']:.4f} ({by[d]['count']})" if d in by
               else "—" for d in names]
      lines.append(f"| {view} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def best_worst_rows(scores: np.ndarray, labels: np.ndarray, *,
                    k: int = 4) -> dict[str, np.ndarray]:
  """The test images of the four rows of ``best_worst.png``, over all images.

  Best = ranked right: normals scored lowest, anomalies scored highest.
  Worst = the misrankings that cost AUROC: normals scored highest,
  anomalies scored lowest. Ties keep the test-set order.

  Returns:
    ``{"best_normal", "best_anomalous", "worst_normal", "worst_anomalous"}``
    → up to ``k`` indices into ``scores`` each, best/worst first.
  """
  scores = np.asarray(scores, np.float64).reshape(-1)
  labels = np.asarray(labels).reshape(-1)
  normal = np.flatnonzero(labels == 0)
  anomalous = np.flatnonzero(labels == 1)
  n_up = normal[np.argsort(scores[normal], kind="stable")]
  a_down = anomalous[np.argsort(-scores[anomalous], kind="stable")]
  return {"best_normal": n_up[:k], "best_anomalous": a_down[:k],
          "worst_normal": n_up[::-1][:k], "worst_anomalous": a_down[::-1][:k]}


def write_figures(workdir: str, config: ml_collections.ConfigDict,
                  data: api.RunData, preds: api.Predictions,
                  eval_arrays: dict[str, np.ndarray]) -> list[str]:
  """Anomaly-map figure, ROC curves and best/worst grid as PNGs."""
  written = []
  history = (preds.extra or {}).get("history")
  if history and viz.save_learning_curve(
      os.path.join(workdir, "learning_curve.png"), history,
      title=f"{config.method} on {data.category}"):
    written.append("learning_curve.png")
  labels = eval_arrays["label"]
  scores = np.asarray(preds.test_scores)
  viz.save_roc_curves(os.path.join(workdir, "roc.png"), image_scores=scores,
                      image_labels=labels, maps=preds.test_maps,
                      masks=eval_arrays["mask"])
  written.append("roc.png")
  if preds.test_maps is None:
    return written
  pre = pipeline.preprocess_for(config)
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
  rows = best_worst_rows(scores, labels, k=4)
  ranked = np.unique(np.concatenate(list(rows.values())))
  sub = [data.test[i] for i in ranked]
  arr = pipeline.load_arrays(sub, pre, num_workers=2, allow_missing_mask=True,
                             desc="figure images")
  viz.save_best_worst_grid(
      os.path.join(workdir, "best_worst.png"), arr["image"], arr["mask"],
      np.asarray(preds.test_maps)[ranked], scores[ranked], labels[ranked],
      k=max(1, max(len(r) for r in rows.values())))
  written.append("best_worst.png")
  return written
