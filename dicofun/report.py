"""``report.html``: one page a person opens to see what ``dicofun inspect`` found.

The page is self-contained in the sense that matters on a factory PC: no
script, no style sheet and no font from the network. Images are PNG files
beside it (``images/``, ``overlays/``, ``histogram.png``, ``roc.png``),
referenced by relative, percent-encoded URLs (a file named ``a#1.png`` is
``a%231.png``), so the output folder can be zipped and opened anywhere; a
page of a few thousand thumbnails stays a small HTML file.

Sections, top to bottom: the headline (how many images flagged, the
threshold and its rule), the labelled metrics when labels exist, the score
histogram (and ROC curve), the images sorted by score (highest first) as
thumbnail + anomaly-map overlay pairs, the unreadable files, and the run's
settings.

``build(run_dir)`` (``dicofun report --run=DIR``) writes the page again from
a finished folder's files alone: a ``dicofun inspect`` output folder
(``inspect.json``, ``scores.csv``, ``errors.csv``, its ``images/`` and
``overlays/``), or a ``dicofun run`` workdir (``results.json``,
``test_scores.csv``, its figures; thumbnails of the test images are written
to ``report_images/`` beside the page, without maps: a run keeps no per-image
maps).
"""

from __future__ import annotations

import csv
import dataclasses
import html
import json
import os
import urllib.parse
from typing import Any, Optional, Sequence

import numpy as np
from PIL import Image

from dicofun import user_errors
from dicofun import viz
from dicofun.data import pipeline
from dicofun.data import tfds_source

REPORT = "report.html"
INSPECT_JSON = "inspect.json"
RESULTS_JSON = "results.json"
THUMB_DIR = "report_images"  # Thumbnails of a run workdir's test images.
THUMB_SIDE = 128


class NotAReportableRunError(user_errors.UserError, FileNotFoundError):
  """The folder holds neither a finished run nor a dicofun inspect output."""


@dataclasses.dataclass(frozen=True)
class Row:
  """One scored image of the report.

  Attributes:
    file: the image path as shown (relative to the inspected folder).
    score: image anomaly score.
    rank: 1 = highest score.
    flagged: score >= the threshold (``metrics.is_anomalous``).
    label: 0 normal, 1 anomalous, None unlabelled.
    image: thumbnail path relative to the report, or None.
    overlay: overlay path relative to the report, or None.
  """

  file: str
  score: float
  rank: int
  flagged: bool
  label: Optional[int]
  image: Optional[str]
  overlay: Optional[str]


_CSS = """
body{font-family:sans-serif;margin:1.5em;color:#222}
h1{font-size:1.4em} h2{font-size:1.15em;margin-top:1.6em}
table{border-collapse:collapse} td,th{padding:3px 8px;border-bottom:1px solid #ddd;
text-align:left;vertical-align:middle;font-size:0.9em}
.flag{background:#fde2e2} img.t{width:128px;height:128px;image-rendering:auto}
figure.fig{display:inline-block;vertical-align:top;margin:0 1.5em 1em 0}
figure.fig img{max-height:360px;max-width:100%} figcaption{font-size:0.85em;color:#555}
.muted{color:#777} code{background:#f4f4f4;padding:0 3px}
"""


def _e(x: Any) -> str:
  return html.escape(str(x), quote=True)


def _url(path: str) -> str:
  """A relative file path as a URL: ``#``, ``?``, ``%``, spaces and other
  bytes of a file name are percent-encoded, ``/`` separates folders."""
  return urllib.parse.quote(path.replace(os.sep, "/"))


def _fmt(v: Any) -> str:
  if isinstance(v, (bool, str)) or not isinstance(v, (int, float)):
    return str(v)
  return str(v) if isinstance(v, int) else f"{v:.4f}"


def _img(src: Optional[str], alt: str, cls: str = "t",
         missing: str = "no map") -> str:
  if not src:
    return f'<span class="muted">{_e(missing)}</span>'
  return f'<img class="{cls}" src="{_e(_url(src))}" alt="{_e(alt)}">'


def render(*, title: str, headline: Sequence[str], rows: Sequence[Row],
           figures: Sequence[tuple[str, str]],
           metrics: Optional[dict[str, Any]],
           errors: Sequence[tuple[str, str]],
           settings: dict[str, Any]) -> str:
  """The report page as a string (see the module docstring).

  Args:
    title: page title.
    headline: lines of the summary paragraph.
    rows: the scored images, in display order (highest score first).
    figures: ``(caption, relative path)`` of the figures.
    metrics: labelled metrics (name → value), or None without labels.
    errors: ``(file, reason)`` of the unreadable files.
    settings: the run's settings, shown as JSON.
  """
  out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
         f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>",
         f"<h1>{_e(title)}</h1>"]
  out += [f"<p>{_e(line)}</p>" for line in headline]
  if metrics:
    out.append("<h2>Metrics against the labels</h2><table>")
    out += [f"<tr><th>{_e(k)}</th><td>{_e(_fmt(v))}</td></tr>"
            for k, v in metrics.items()]
    out.append("</table>")
  if figures:
    out.append("<h2>Figures</h2><div>")
    out += [f'<figure class="fig"><a href="{_e(_url(src))}"><img '
            f'src="{_e(_url(src))}" '
            f'alt="{_e(cap)}"></a><figcaption>{_e(cap)} (click for full size)'
            f"</figcaption></figure>"
            for cap, src in figures]
    out.append("</div>")
  out.append(f"<h2>Images by score ({len(rows)}, highest first)</h2>")
  out.append("<table><tr><th>rank</th><th>image</th><th>anomaly map</th>"
             "<th>file</th><th>score</th><th>decision</th><th>label</th></tr>")
  for r in rows:
    label = {None: "", 0: "normal", 1: "anomalous"}.get(r.label, "")
    out.append(
        f'<tr class="{"flag" if r.flagged else ""}"><td>{r.rank}</td>'
        f"<td>{_img(r.image, r.file, missing='no image')}</td>"
        f"<td>{_img(r.overlay, r.file)}</td>"
        f'<td class="file">{_e(r.file)}</td><td>{r.score:.6g}</td>'
        f'<td>{"FLAGGED" if r.flagged else "ok"}</td><td>{_e(label)}</td></tr>')
  out.append("</table>")
  out.append(f"<h2>Unreadable files ({len(errors)}, skipped)</h2>")
  if errors:
    out.append("<table><tr><th>file</th><th>reason</th></tr>")
    out += [f"<tr><td>{_e(f)}</td><td>{_e(why)}</td></tr>" for f, why in errors]
    out.append("</table>")
  else:
    out.append('<p class="muted">none</p>')
  out.append("<h2>Settings</h2><pre>"
             + _e(json.dumps(settings, indent=1, sort_keys=True, default=str))
             + "</pre></body></html>")
  return "\n".join(out) + "\n"


def write(path: str, **kwargs: Any) -> str:
  """Writes ``render(**kwargs)`` to ``path`` atomically; returns ``path``."""
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "w", encoding="utf-8") as f:
    f.write(render(**kwargs))
  os.replace(tmp, path)
  return path


def thumb_paths(rel: str) -> tuple[str, str]:
  """The view and overlay of the image ``rel`` (relative to the inspected
  folder), relative to the output folder; the extension stays in the name
  so a.png and a.jpg do not collide."""
  return (os.path.join("images", rel + ".png"),
          os.path.join("overlays", rel + ".png"))


def inspect_headline(*, flagged: int, images: int, threshold: float,
                     rule: str, unreadable: int,
                     small: Sequence[tuple[str, int, int]], image_size: int,
                     out_dir: str,
                     metrics: Optional[dict[str, Any]] = None) -> list[str]:
  """The headline of a dicofun inspect page.

  Args:
    flagged: images at or above the threshold.
    images: images scored.
    threshold: the label-free threshold.
    rule: how it was chosen.
    unreadable: files skipped.
    small: ``(file, width, height)`` of the images smaller than the input
      (the first five are named).
    image_size: the input side.
    out_dir: the output folder (its ``model/``).
    metrics: the labelled metrics, whose image AUROC it quotes.
  """
  names = ", ".join(f"{f} ({w}x{h})" for f, w, h in small[:5])
  names += f" and {len(small) - 5} more" if len(small) > 5 else ""
  auroc = []
  if metrics and isinstance(metrics.get("image_auroc"), (int, float)):
    auroc = [f"Transductive image AUROC against the "
             f"{metrics.get('labelled_images', '?')} labelled images: "
             f"{metrics['image_auroc']:.4f}."]
  return [
      f"{flagged} of {images} images flagged (score >= {threshold:.6g}; "
      f"threshold: {rule}).", *auroc,
      f"{unreadable} unreadable file(s) skipped; {len(small)} image(s) "
      f"smaller than {image_size}x{image_size} upscaled"
      + (f": {names}." if small else "."),
      f"Model: {os.path.join(out_dir, 'model')} — score new images with: "
      f"dicofun predict --model={out_dir} --images=NEW",
  ]


def _read_csv(path: str) -> list[dict[str, str]]:
  with open(path, newline="", encoding="utf-8") as f:
    return list(csv.DictReader(f))


def _rel_to(page_dir: str, run_dir: str, rel: str) -> str:
  """A path relative to ``run_dir`` as seen from the page's folder."""
  return os.path.relpath(os.path.join(run_dir, rel), page_dir)


def _label(text: str) -> Optional[int]:
  return None if text in ("", None) else int(text)


def _inspect_page(run_dir: str, page_dir: str) -> dict[str, Any]:
  with open(os.path.join(run_dir, INSPECT_JSON), encoding="utf-8") as f:
    info = json.load(f)
  rows = []
  for r in _read_csv(os.path.join(run_dir, "scores.csv")):
    thumb, _ = thumb_paths(r["file"])
    rows.append(Row(
        file=r["file"], score=float(r["score"]), rank=int(r["rank"]),
        flagged=r["decision"] == "1", label=_label(r["label"]),
        image=(_rel_to(page_dir, run_dir, thumb)
               if os.path.isfile(os.path.join(run_dir, thumb)) else None),
        overlay=(_rel_to(page_dir, run_dir, r["overlay"]) if r["overlay"]
                 and os.path.isfile(os.path.join(run_dir, r["overlay"]))
                 else None)))
  rows.sort(key=lambda row: row.rank)
  errors_path = os.path.join(run_dir, "errors.csv")
  errors = ([(r["file"], r["reason"]) for r in _read_csv(errors_path)]
            if os.path.exists(errors_path) else [])
  figures = [(cap, _rel_to(page_dir, run_dir, name)) for cap, name in (
      ("score histogram with the threshold", "histogram.png"),
      ("image ROC against the labels", "roc.png"))
             if os.path.isfile(os.path.join(run_dir, name))]
  keys = ("folder", "method", "backbone", "image_size", "threshold",
          "threshold_rule", "contamination_hint", "labels_csv", "commit",
          "seconds", "config")
  return dict(
      title=f"dicofun inspect: {info.get('folder', run_dir)}",
      headline=inspect_headline(
          flagged=int(info["flagged"]), images=int(info["images"]),
          threshold=float(info["threshold"]), rule=info["threshold_rule"],
          unreadable=int(info["unreadable"]),
          small=[tuple(x) for x in info.get("small_files", [])],
          image_size=int(info["image_size"]), out_dir=run_dir,
          metrics=info.get("metrics")),
      rows=rows, figures=figures, metrics=info.get("metrics") or None,
      errors=errors, settings={k: info[k] for k in keys if k in info})


def _run_image(path: str, run_dir: str) -> Optional[str]:
  """An image path of test_scores.csv as it can be opened now, or None."""
  if tfds_source.is_uri(path) or os.path.isfile(path):
    return path
  candidate = os.path.join(run_dir, path)
  return candidate if os.path.isfile(candidate) else None


def _run_page(run_dir: str, page_dir: str) -> dict[str, Any]:
  with open(os.path.join(run_dir, RESULTS_JSON), encoding="utf-8") as f:
    results = json.load(f)
  table = _read_csv(os.path.join(run_dir, "test_scores.csv"))
  scores = np.array([float(r["score"]) for r in table], np.float64)
  threshold = results.get("threshold")
  order = np.argsort(-scores, kind="stable")
  thumbs_dir = os.path.join(page_dir, THUMB_DIR)
  os.makedirs(thumbs_dir, exist_ok=True)
  rows = []
  for rank, i in enumerate(order, start=1):
    r = table[i]
    src = _run_image(r["image_path"], run_dir)
    thumb = None
    if src is not None:
      try:
        img = Image.fromarray(pipeline.read_image(src))
      except (OSError, ValueError):
        img = None
      if img is not None:
        img.thumbnail((THUMB_SIDE, THUMB_SIDE))
        name = f"{rank:05d}_{os.path.basename(r['image_path'])}.png"
        img.save(os.path.join(thumbs_dir, name))
        thumb = os.path.join(THUMB_DIR, name)
    moved = r.get("moved") == "1"
    rows.append(Row(
        file=r["image_path"] + (" (moved into training)" if moved else ""),
        score=float(scores[i]), rank=rank,
        flagged=threshold is not None and float(scores[i]) >= threshold,
        label=_label(r["label"]), image=thumb, overlay=None))
  labels = np.array([int(r["label"]) for r in table])
  hist = os.path.join(page_dir, "report_histogram.png")
  viz.save_score_histogram(hist, scores, threshold=(
      threshold if threshold is not None else float(np.max(scores))),
                           labels=labels)
  figures = [("test-set score histogram with the stored threshold",
              os.path.relpath(hist, page_dir))]
  for cap, name in (("ROC curves", "roc.png"),
                    ("anomaly maps", "anomaly_maps.png"),
                    ("best and worst ranked test images", "best_worst.png")):
    if os.path.isfile(os.path.join(run_dir, name)):
      figures.append((cap, _rel_to(page_dir, run_dir, name)))
  metrics = {f"{view}.{k}": v
             for view, m in (results.get("metrics") or {}).items()
             if isinstance(m, dict) for k, v in m.items()
             if isinstance(v, (int, float)) and not isinstance(v, bool)}
  config = results.get("config") or {}
  dataset = config.get("dataset", {})
  flagged = sum(r.flagged for r in rows)
  headline = [
      f"{config.get('method', '?')} on {dataset.get('name', '?')}"
      f"/{dataset.get('category', '?')}: {len(rows)} test images, {flagged} "
      f"at or above the stored threshold"
      + (f" {threshold:.6g} ({results.get('threshold_rule')})."
         if threshold is not None else " (none stored)."),
      f"Workdir: {run_dir}; anomaly maps of a few test images are in the "
      "figures below (a run keeps no per-image maps: dicofun predict "
      f"--workdir={run_dir} --images=DIR writes overlays).",
  ]
  settings = {k: results[k] for k in ("seed", "commit", "counts", "seconds",
                                      "threshold", "threshold_rule",
                                      "config") if k in results}
  return dict(title=f"dicofun run: {run_dir}", headline=headline, rows=rows,
              figures=figures, metrics=metrics or None, errors=[],
              settings=settings)


def build(run_dir: str, out: Optional[str] = None) -> str:
  """Writes the report page of a finished folder (module docstring).

  Args:
    run_dir: a dicofun inspect ``--out`` folder or a dicofun run workdir.
    out: the HTML file (default ``<run_dir>/report.html``); image paths in
      it are relative to its folder.

  Returns:
    The path of the page.

  Raises:
    NotAReportableRunError: ``run_dir`` holds neither ``inspect.json`` +
      ``scores.csv`` nor ``results.json`` + ``test_scores.csv``.
  """
  run_dir = os.path.abspath(os.path.expanduser(run_dir))
  out = os.path.abspath(out or os.path.join(run_dir, REPORT))
  page_dir = os.path.dirname(out)
  os.makedirs(page_dir, exist_ok=True)
  has = lambda name: os.path.isfile(os.path.join(run_dir, name))  # pylint: disable=unnecessary-lambda-assignment
  if has(INSPECT_JSON) and has("scores.csv"):
    page = _inspect_page(run_dir, page_dir)
  elif has(RESULTS_JSON) and has("test_scores.csv"):
    page = _run_page(run_dir, page_dir)
  else:
    raise NotAReportableRunError(
        f"{run_dir} is not a finished run: expected inspect.json and "
        "scores.csv (a dicofun inspect --out folder) or results.json and "
        "test_scores.csv (a dicofun run workdir)")
  return write(out, **page)
