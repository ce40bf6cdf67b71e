"""``report.html``: one page a person opens to see what ``dicofun inspect`` found.

The page is self-contained in the sense that matters on a factory PC: no
script, no style sheet and no font from the network (one small inline
script pages the rows). Pictures are files beside it — small JPEG
thumbnails of each image and of its overlay (``images/``, ``overlays/``,
``THUMB_SIDE`` px, one shared colour scale shown by a colour bar),
``histogram.png``, ``roc.png`` — referenced by relative, percent-encoded URLs
(a file named ``a#1.png`` is ``a%231.png``), so the output folder can be
zipped and opened anywhere. The two thumbnails of a row take about 5 KB
(8 KB with a noisy map; measured on 224-px synthetic textures), the page
itself under 1 KB a row.

Sections, top to bottom: the headline (how many images flagged, the
threshold and its rule, warnings), the labelled metrics and the counts per
defect type when labels exist, the score histogram (and ROC curve), the
images (``PAGE_ROWS`` a page; all or flagged only; sorted by score or by
name; ``report.html#flagged``, ``#name``, ``#page=3`` open those views;
without script every row shows and its pictures load lazily), the
unreadable files, and the settings that matter (collapsed).

``build(run_dir)`` (``dicofun report --run=DIR``) writes the page again from
a finished folder's files alone: a ``dicofun inspect`` or ``dicofun
predict`` output folder (``inspect.json``, ``scores.csv``, ``errors.csv``,
its ``images/`` and ``overlays/``), or a ``dicofun run`` workdir
(``results.json``, ``test_scores.csv``, its figures; thumbnails of the test
images are written to ``report_images/`` beside the page, without maps: a
run keeps no per-image maps).
"""

from __future__ import annotations

import csv
import dataclasses
import functools
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
PREDICT_JSON = "predict.json"
RESULTS_JSON = "results.json"
THUMB_DIR = "report_images"  # Thumbnails of a run workdir's test images.
THUMB_SIDE = 112  # Side of the report's thumbnails (px).
JPEG_QUALITY = 80
PAGE_ROWS = 100  # Rows of a page of the image table.
OVERLAY_ALPHA = 0.5
# matplotlib's "jet" at 0, 1/8, ..., 1: the overlays' colour map, for the
# colour bar (CSS gradient).
_JET = ("#000080", "#0000ff", "#0080ff", "#16ffe1", "#7dff7a", "#e4ff13",
        "#ff9400", "#ff1e00", "#800000")


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
    link: the original image, relative to the report, or None.
    defect: the defect type of an anomalous label (its folder), or None.
  """

  file: str
  score: float
  rank: int
  flagged: bool
  label: Optional[int]
  image: Optional[str]
  overlay: Optional[str]
  link: Optional[str] = None
  defect: Optional[str] = None


_CSS = """
body{font-family:sans-serif;margin:1.5em;color:#222}
h1{font-size:1.4em} h2{font-size:1.15em;margin-top:1.6em}
table{border-collapse:collapse} td,th{padding:3px 8px;border-bottom:1px solid #ddd;
text-align:left;vertical-align:middle;font-size:0.9em}
.flag{background:#fde2e2} img.t{width:112px;height:112px;image-rendering:auto}
.warn{background:#fff4d6;border-left:4px solid #e0a800;padding:6px 10px}
.bar{display:inline-block;width:260px;height:14px;vertical-align:middle;
border:1px solid #999} .scale{font-size:0.85em;color:#555}
#controls{margin:0.6em 0} #controls label{margin-right:1.2em}
details{margin-top:1.6em} summary{font-weight:bold;cursor:pointer}
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
  return (f'<img class="{cls}" src="{_e(_url(src))}" alt="{_e(alt)}" '
          f'loading="lazy" width="{THUMB_SIDE}" height="{THUMB_SIDE}">')


def overlay_rgb(view: np.ndarray, amap: np.ndarray, *, vmin: float,
                vmax: float, alpha: float = OVERLAY_ALPHA) -> np.ndarray:
  """``view`` (H, W, 3) uint8 with the map in jet over it, uint8.

  The map is resized to the view (bilinear) and coloured on the fixed range
  ``[vmin, vmax]`` (values outside are clipped), as ``viz.save_overlay``
  draws it, without a figure per image.
  """
  h, w = view.shape[:2]
  amap = np.asarray(amap, np.float32)
  if amap.shape != (h, w):
    amap = np.asarray(Image.fromarray(amap, mode="F").resize(
        (w, h), Image.BILINEAR), np.float32)
  span = vmax - vmin if vmax > vmin else 1.0
  idx = np.clip((amap - vmin) / span, 0.0, 1.0)
  colours = _jet_lut()[np.round(idx * 255).astype(np.int64)]
  out = (1 - alpha) * view.astype(np.float32) + alpha * colours
  return np.clip(np.round(out), 0, 255).astype(np.uint8)


@functools.lru_cache(maxsize=1)
def _jet_lut() -> np.ndarray:
  import matplotlib  # pylint: disable=g-import-not-at-top
  return (matplotlib.colormaps["jet"](np.linspace(0, 1, 256))[:, :3]
          * 255.0).astype(np.float32)


def _thumb(array: np.ndarray, path: str) -> None:
  img = Image.fromarray(array)
  img.thumbnail((THUMB_SIDE, THUMB_SIDE), Image.BILINEAR)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  img.convert("RGB").save(path, "JPEG", quality=JPEG_QUALITY, optimize=True)


def write_thumbs(out_dir: str, rel: str, view: np.ndarray,
                 amap: Optional[np.ndarray],
                 scale: Optional[dict[str, float]]) -> tuple[str, Optional[str]]:
  """The report's two JPEG thumbnails of one image (``thumb_paths``).

  Args:
    out_dir: the report's folder.
    rel: the image's path relative to the scored folder.
    view: (S, S, 3) uint8, the image as the model saw it.
    amap: its anomaly map, or None (no overlay).
    scale: ``vmin``, ``vmax`` of the shared colour scale (None or empty:
      the map's own range).

  Returns:
    The thumbnail and the overlay (None without a map), relative to
    ``out_dir``.
  """
  thumb, over = thumb_paths(rel)
  _thumb(np.asarray(view, np.uint8), os.path.join(out_dir, thumb))
  if amap is None:
    return thumb, None
  amap = np.asarray(amap, np.float32)
  lo = scale["vmin"] if scale else float(amap.min())
  hi = scale["vmax"] if scale else float(amap.max())
  _thumb(overlay_rgb(np.asarray(view, np.uint8), amap, vmin=lo, vmax=hi),
         os.path.join(out_dir, over))
  return thumb, over


_SCRIPT = """
(function () {
  var tbody = document.getElementById("rows");
  if (!tbody) return;
  var rows = Array.prototype.slice.call(tbody.rows);
  var size = parseInt(tbody.getAttribute("data-page"), 10) || 100, page = 0;
  var flagged = document.getElementById("flagged");
  var sort = document.getElementById("sort");
  var info = document.getElementById("pageinfo");
  var prev = document.getElementById("prev"), next = document.getElementById("next");
  function fromHash() {
    var h = decodeURIComponent(location.hash.slice(1)).split("&");
    flagged.checked = h.indexOf("flagged") >= 0;
    sort.value = h.indexOf("name") >= 0 ? "name"
               : h.indexOf("score_asc") >= 0 ? "score_asc" : "score";
    page = 0;
    h.forEach(function (x) { if (x.indexOf("page=") === 0) page = (parseInt(x.slice(5), 10) || 1) - 1; });
  }
  function toHash() {
    var h = [];
    if (flagged.checked) h.push("flagged");
    if (sort.value !== "score") h.push(sort.value);
    if (page > 0) h.push("page=" + (page + 1));
    history.replaceState(null, "", h.length ? "#" + h.join("&") : location.pathname);
  }
  function apply() {
    var list = rows.filter(function (r) { return !flagged.checked || r.getAttribute("data-flag") === "1"; });
    var key = sort.value;
    list.sort(function (a, b) {
      if (key === "name") return a.getAttribute("data-name") < b.getAttribute("data-name") ? -1 : 1;
      var d = parseFloat(b.getAttribute("data-score")) - parseFloat(a.getAttribute("data-score"));
      if (key === "score_asc") d = -d;
      return d || (parseInt(a.getAttribute("data-rank"), 10) - parseInt(b.getAttribute("data-rank"), 10));
    });
    var pages = Math.max(1, Math.ceil(list.length / size));
    page = Math.min(Math.max(page, 0), pages - 1);
    rows.forEach(function (r) { r.hidden = true; });
    list.forEach(function (r) { tbody.appendChild(r); });
    list.slice(page * size, (page + 1) * size).forEach(function (r) { r.hidden = false; });
    info.textContent = list.length + (flagged.checked ? " flagged" : "") +
        " images; page " + (page + 1) + " of " + pages;
    prev.disabled = page === 0;
    next.disabled = page >= pages - 1;
  }
  function go() { toHash(); apply(); }
  flagged.onchange = function () { page = 0; go(); };
  sort.onchange = function () { page = 0; go(); };
  prev.onclick = function () { page -= 1; go(); };
  next.onclick = function () { page += 1; go(); };
  window.addEventListener("hashchange", function () { fromHash(); apply(); });
  document.getElementById("controls").hidden = false;
  fromHash();
  apply();
})();
"""


def _colour_bar(scale: Optional[dict[str, float]]) -> list[str]:
  """The overlays' colour bar: jet from ``vmin`` to ``vmax``, the threshold
  in the middle."""
  if not scale:
    return []
  lo, hi, t = scale["vmin"], scale["vmax"], scale["threshold"]
  grad = ", ".join(_JET)
  return [f'<p class="scale">Anomaly maps, one colour scale for every image: '
          f'<span>{lo:.4g}</span> <span class="bar" style="background:'
          f'linear-gradient(to right, {grad})" title="jet"></span> '
          f'<span>{hi:.4g}</span>; '
          + (f'the middle (green-yellow) is the threshold {t:.4g}: yellow '
             'to red is above it.' if abs((lo + hi) / 2 - t) <= 1e-6 * max(
                 abs(t), 1e-12) else
             f'the threshold {t:.4g} lies outside this range.')
          + '</p>']


def defect_counts(rows: Sequence[Row]) -> list[tuple[str, int, int]]:
  """``(type, images, flagged)`` per label kind: "normal", each defect type
  (sorted), "unlabelled"; [] when no row is labelled."""
  if all(r.label is None for r in rows):
    return []
  groups: dict[str, list[int]] = {}
  for r in rows:
    key = ("unlabelled" if r.label is None else "normal" if r.label == 0
           else (r.defect or "anomalous"))
    g = groups.setdefault(key, [0, 0])
    g[0] += 1
    g[1] += int(r.flagged)
  order = (["normal"] + sorted(k for k in groups
                               if k not in ("normal", "unlabelled"))
           + ["unlabelled"])
  return [(k, groups[k][0], groups[k][1]) for k in order if k in groups]


def _settings_table(settings: dict[str, Any]) -> list[str]:
  """The settings that matter: scalars only, no nested config dump."""
  items = [(k, v) for k, v in settings.items()
           if v is not None and not isinstance(v, (dict, list, tuple))]
  out = ["<details><summary>Settings</summary><table>"]
  out += [f"<tr><th>{_e(k)}</th><td>{_e(_fmt(v))}</td></tr>" for k, v in items]
  out.append("</table></details>")
  return out


def render(*, title: str, headline: Sequence[str], rows: Sequence[Row],
           figures: Sequence[tuple[str, str]],
           metrics: Optional[dict[str, Any]],
           errors: Sequence[tuple[str, str]],
           settings: dict[str, Any],
           warnings: Sequence[str] = (),
           colour_scale: Optional[dict[str, float]] = None) -> str:
  """The report page as a string (see the module docstring).

  Args:
    title: page title.
    headline: lines of the summary paragraph.
    rows: the scored images, in display order (highest score first).
    figures: ``(caption, relative path)`` of the figures.
    metrics: labelled metrics (name → value), or None without labels.
    errors: ``(file, reason)`` of the unreadable files.
    settings: the run's settings; the scalar ones are shown.
    warnings: lines shown highlighted under the headline.
    colour_scale: ``vmin``, ``vmax``, ``threshold`` of the overlays (None:
      no colour bar).
  """
  out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
         f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>",
         f"<h1>{_e(title)}</h1>"]
  out += [f"<p>{_e(line)}</p>" for line in headline]
  out += [f'<p class="warn">{_e(line)}</p>' for line in warnings]
  if metrics:
    out.append("<h2>Metrics against the labels</h2><table>")
    out += [f"<tr><th>{_e(k)}</th><td>{_e(_fmt(v))}</td></tr>"
            for k, v in metrics.items()]
    out.append("</table>")
  counts = defect_counts(rows)
  if counts:
    out.append('<h2>By label</h2><table id="by-label"><tr><th>label</th>'
               "<th>images</th><th>flagged</th></tr>")
    out += [f"<tr><td>{_e(k)}</td><td>{n}</td><td>{f}</td></tr>"
            for k, n, f in counts]
    out.append("</table>")
  if figures:
    out.append("<h2>Figures</h2><div>")
    out += [f'<figure class="fig"><a href="{_e(_url(src))}"><img '
            f'src="{_e(_url(src))}" '
            f'alt="{_e(cap)}"></a><figcaption>{_e(cap)} (click for full size)'
            f"</figcaption></figure>"
            for cap, src in figures]
    out.append("</div>")
  flagged = sum(r.flagged for r in rows)
  out.append(f"<h2>Images by score ({len(rows)}, {flagged} flagged)</h2>")
  out += _colour_bar(colour_scale)
  out.append(
      '<div id="controls" hidden><label><input type="checkbox" id="flagged">'
      ' flagged only</label><label>sort by <select id="sort">'
      '<option value="score">score, highest first</option>'
      '<option value="score_asc">score, lowest first</option>'
      '<option value="name">name</option></select></label>'
      '<button id="prev">previous</button> <span id="pageinfo"></span> '
      '<button id="next">next</button></div>')
  out.append("<table><thead><tr><th>rank</th><th>image</th><th>anomaly map"
             "</th><th>file</th><th>score</th><th>decision</th><th>label</th>"
             f'</tr></thead><tbody id="rows" data-page="{PAGE_ROWS}">')
  for r in rows:
    label = {None: "", 0: "normal"}.get(
        r.label, f"anomalous ({r.defect})" if r.defect else "anomalous")
    name = (f'<a href="{_e(_url(r.link))}">{_e(r.file)}</a>' if r.link
            else _e(r.file))
    out.append(
        f'<tr class="{"flag" if r.flagged else ""}" data-rank="{r.rank}" '
        f'data-score="{r.score!r}" data-flag="{int(r.flagged)}" '
        f'data-name="{_e(r.file)}"><td>{r.rank}</td>'
        f"<td>{_img(r.image, r.file, missing='no image')}</td>"
        f"<td>{_img(r.overlay, r.file)}</td>"
        f'<td class="file">{name}</td><td>{r.score:.6g}</td>'
        f'<td>{"FLAGGED" if r.flagged else "ok"}</td><td>{_e(label)}</td></tr>')
  out.append("</tbody></table>")
  out.append(f"<h2>Unreadable files ({len(errors)}, skipped)</h2>")
  if errors:
    out.append("<table><tr><th>file</th><th>reason</th></tr>")
    out += [f"<tr><td>{_e(f)}</td><td>{_e(why)}</td></tr>" for f, why in errors]
    out.append("</table>")
  else:
    out.append('<p class="muted">none</p>')
  out += _settings_table(settings)
  out.append(f"<script>{_SCRIPT}</script></body></html>")
  return "\n".join(out) + "\n"


def write(path: str, **kwargs: Any) -> str:
  """Writes ``render(**kwargs)`` to ``path`` atomically; returns ``path``."""
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "w", encoding="utf-8") as f:
    f.write(render(**kwargs))
  os.replace(tmp, path)
  return path


def thumb_paths(rel: str) -> tuple[str, str]:
  """The view and overlay thumbnails of the image ``rel`` (relative to the
  scored folder), relative to the output folder; the extension stays in
  the name so a.png and a.jpg do not collide."""
  return (os.path.join("images", rel + ".jpg"),
          os.path.join("overlays", rel + ".jpg"))


def defect_of(rel: str, label: Optional[int]) -> Optional[str]:
  """The defect type of an anomalous image: its folder's name."""
  if label != 1:
    return None
  parent = os.path.basename(os.path.dirname(rel))
  return parent or None


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


def _folder_page(run_dir: str, page_dir: str, info_name: str,
                 shown_dir: str) -> dict[str, Any]:
  """The page of a dicofun inspect or predict output folder, from its files
  (``info_name``: inspect.json or predict.json; scores.csv; errors.csv;
  the thumbnails)."""
  with open(os.path.join(run_dir, info_name), encoding="utf-8") as f:
    info = json.load(f)
  table = _read_csv(os.path.join(run_dir, "scores.csv"))
  scores = np.array([float(r["score"]) for r in table], np.float64)
  order = np.argsort(-scores, kind="stable")
  rank = np.empty(len(table), np.int64)
  rank[order] = np.arange(1, len(table) + 1)
  folder = info.get("folder") or info.get("images_dir") or ""
  rows = []
  for i, r in enumerate(table):
    thumb, over = thumb_paths(r["file"])
    over = r.get("overlay") or over
    label = _label(r.get("label", ""))
    original = os.path.join(folder, r["file"]) if folder else ""
    rows.append(Row(
        file=r["file"], score=float(r["score"]),
        rank=int(r["rank"]) if r.get("rank") else int(rank[i]),
        flagged=r["decision"] == "1", label=label,
        image=(_rel_to(page_dir, run_dir, thumb)
               if os.path.isfile(os.path.join(run_dir, thumb)) else None),
        overlay=(_rel_to(page_dir, run_dir, over)
                 if os.path.isfile(os.path.join(run_dir, over)) else None),
        link=(os.path.relpath(original, page_dir)
              if original and os.path.isfile(original) else None),
        defect=defect_of(r["file"], label)))
  rows.sort(key=lambda row: row.rank)
  errors_path = os.path.join(run_dir, "errors.csv")
  errors = ([(r["file"], r["reason"]) for r in _read_csv(errors_path)]
            if os.path.exists(errors_path) else [])
  figures = [(cap, _rel_to(page_dir, run_dir, name)) for cap, name in (
      ("score histogram with the threshold", "histogram.png"),
      ("image ROC against the labels", "roc.png"))
             if os.path.isfile(os.path.join(run_dir, name))]
  keys = ("folder", "images_dir", "model", "method", "backbone",
          "image_size", "threshold", "threshold_rule", "contamination_hint",
          "labels_csv", "commit", "seconds")
  scale = info.get("colour_scale") or None
  command = info_name.split(".")[0]
  if command == "predict":
    flagged = int(sum(r.flagged for r in rows))
    headline = [
        f"{flagged} of {len(rows)} images flagged (score >= "
        f"{float(info['threshold']):.6g}; {info.get('threshold_rule')}).",
        f"{len(errors)} unreadable file(s) skipped.",
        f"Model: {info.get('model')} ({info.get('method')})."]
  else:
    headline = inspect_headline(
        flagged=int(info["flagged"]), images=int(info["images"]),
        threshold=float(info["threshold"]), rule=info["threshold_rule"],
        unreadable=int(info["unreadable"]),
        small=[tuple(x) for x in info.get("small_files", [])],
        image_size=int(info["image_size"]), out_dir=shown_dir,
        metrics=info.get("metrics"))
  return dict(
      title=f"dicofun {command}: {folder or shown_dir}", headline=headline,
      rows=rows, figures=figures, metrics=info.get("metrics") or None,
      errors=errors, settings={k: info[k] for k in keys if k in info},
      warnings=list(info.get("warnings") or []), colour_scale=scale)


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
        name = f"{rank:05d}_{os.path.basename(r['image_path'])}.jpg"
        img.convert("RGB").save(os.path.join(thumbs_dir, name), "JPEG",
                                quality=JPEG_QUALITY)
        thumb = os.path.join(THUMB_DIR, name)
    moved = r.get("moved") == "1"
    rows.append(Row(
        file=r["image_path"] + (" (moved into training)" if moved else ""),
        score=float(scores[i]), rank=rank,
        flagged=threshold is not None and float(scores[i]) >= threshold,
        label=_label(r["label"]), image=thumb, overlay=None,
        defect=(r.get("defect") or None) if r["label"] == "1" else None))
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
  settings = {"method": config.get("method"),
              "dataset": dataset.get("name"),
              "category": dataset.get("category"),
              "backbone": (config.get("backbone") or {}).get("name"),
              "image_size": dataset.get("image_size"),
              **{k: results[k] for k in ("seed", "commit", "seconds",
                                         "threshold", "threshold_rule")
                 if k in results}}
  return dict(title=f"dicofun run: {run_dir}", headline=headline, rows=rows,
              figures=figures, metrics=metrics or None, errors=[],
              settings=settings)


def build(run_dir: str, out: Optional[str] = None, *,
          shown_dir: Optional[str] = None) -> str:
  """Writes the report page of a finished folder (module docstring).

  Args:
    run_dir: a dicofun inspect or predict ``--out`` folder or a dicofun run
      workdir.
    out: the HTML file (default ``<run_dir>/report.html``); image paths in
      it are relative to its folder.
    shown_dir: the folder the page names as the output (default
      ``run_dir``; inspect writes into a temporary sibling first).

  Returns:
    The path of the page.

  Raises:
    NotAReportableRunError: ``run_dir`` holds neither ``inspect.json`` (or
      ``predict.json``) + ``scores.csv`` nor ``results.json`` +
      ``test_scores.csv``.
  """
  run_dir = os.path.abspath(os.path.expanduser(run_dir))
  out = os.path.abspath(out or os.path.join(run_dir, REPORT))
  page_dir = os.path.dirname(out)
  os.makedirs(page_dir, exist_ok=True)
  has = lambda name: os.path.isfile(os.path.join(run_dir, name))  # pylint: disable=unnecessary-lambda-assignment
  if has(INSPECT_JSON) and has("scores.csv"):
    page = _folder_page(run_dir, page_dir, INSPECT_JSON, shown_dir or run_dir)
  elif has(PREDICT_JSON) and has("scores.csv"):
    page = _folder_page(run_dir, page_dir, PREDICT_JSON, shown_dir or run_dir)
  elif has(RESULTS_JSON) and has("test_scores.csv"):
    page = _run_page(run_dir, page_dir)
  else:
    raise NotAReportableRunError(
        f"{run_dir} is not a finished run: expected inspect.json and "
        "scores.csv (a dicofun inspect --out folder), predict.json and "
        "scores.csv (a dicofun predict --out folder) or results.json and "
        "test_scores.csv (a dicofun run workdir)")
  return write(out, **page)
