"""``report.html``: one page a person opens to see what ``dicofun inspect`` found.

The page is self-contained in the sense that matters on a factory PC: no
script, no style sheet and no font from the network. Images are PNG files
beside it (``images/``, ``overlays/``, ``histogram.png``, ``roc.png``),
referenced by relative paths, so the output folder can be zipped and opened
anywhere; a page of a few thousand thumbnails stays a small HTML file.

Sections, top to bottom: the headline (how many images flagged, the
threshold and its rule), the labelled metrics when labels exist, the score
histogram (and ROC curve), the images sorted by score (highest first) as
thumbnail + anomaly-map overlay pairs, the unreadable files, and the run's
settings.
"""

from __future__ import annotations

import dataclasses
import html
import json
import os
from typing import Any, Optional, Sequence


@dataclasses.dataclass(frozen=True)
class Row:
  """One scored image of the report.

  Attributes:
    file: the image path as shown (relative to the inspected folder).
    score: image anomaly score.
    rank: 1 = highest score.
    flagged: score >= the threshold (``metrics.is_anomalous``).
    label: 0 normal, 1 anomalous, None unlabelled.
    image: thumbnail path relative to the report.
    overlay: overlay path relative to the report, or None.
  """

  file: str
  score: float
  rank: int
  flagged: bool
  label: Optional[int]
  image: str
  overlay: Optional[str]


_CSS = """
body{font-family:sans-serif;margin:1.5em;color:#222}
h1{font-size:1.4em} h2{font-size:1.15em;margin-top:1.6em}
table{border-collapse:collapse} td,th{padding:3px 8px;border-bottom:1px solid #ddd;
text-align:left;vertical-align:middle;font-size:0.9em}
.flag{background:#fde2e2} img.t{width:128px;height:128px;image-rendering:auto}
.muted{color:#777} code{background:#f4f4f4;padding:0 3px}
"""


def _e(x: Any) -> str:
  return html.escape(str(x), quote=True)


def _fmt(v: Any) -> str:
  if isinstance(v, (bool, str)) or not isinstance(v, (int, float)):
    return str(v)
  return str(v) if isinstance(v, int) else f"{v:.4f}"


def _img(src: Optional[str], alt: str, cls: str = "t") -> str:
  if not src:
    return '<span class="muted">no map</span>'
  return f'<img class="{cls}" src="{_e(src)}" alt="{_e(alt)}">'


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
    out.append("<h2>Score distribution</h2><p>")
    out += [f'<img src="{_e(src)}" alt="{_e(cap)}" title="{_e(cap)}"> '
            for cap, src in figures]
    out.append("</p>")
  out.append(f"<h2>Images by score ({len(rows)}, highest first)</h2>")
  out.append("<table><tr><th>rank</th><th>image</th><th>anomaly map</th>"
             "<th>file</th><th>score</th><th>decision</th><th>label</th></tr>")
  for r in rows:
    label = {None: "", 0: "normal", 1: "anomalous"}.get(r.label, "")
    out.append(
        f'<tr class="{"flag" if r.flagged else ""}"><td>{r.rank}</td>'
        f"<td>{_img(r.image, r.file)}</td><td>{_img(r.overlay, r.file)}</td>"
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
