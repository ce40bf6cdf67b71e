r"""``dicofun inspect`` on a line's day of images: wall time, peak RSS, report size.

Generates a contaminated synthetic folder of ``--num_images`` images
(``--image_size`` px, ``--defective_fraction`` of them defective, the
synthetic generator of ``python -m dicofun.data.synthetic --layout=inspect``)
plus ``--unreadable`` files that are not images (truncated PNGs, empty files,
text named .png), runs ``dicofun inspect`` on it as a child process and
measures:

* its wall time;
* its peak RSS: ``ru_maxrss`` of ``resource.getrusage(RUSAGE_CHILDREN)``,
  the largest resident set of the child and of any process it waited for
  (the images are generated in this process, so nothing else counts);
* the report's assets: report.html, its thumbnails (``images/``,
  ``overlays/``) and figures, in bytes and per image row;
* with Chromium installed, the page in headless Chromium (``--dump-dom``:
  every row present, one page shown).

It checks the outcome (exit 0, errors.csv names exactly the unreadable
files, scores.csv has every other image) and appends one row to
``benchmarks/results/inspect.json`` (``"benchmark": "inspect_scale"``; the
quick-start rows of ``inspect_quickstart.py`` stay as they are), with the
command, the commit, the CPU model and the load average, and whether the
issue-29 goals hold (≤ 20 min, ≤ 6 GB peak RSS, ≤ 60 MB of report assets at
5,000 images).

  # issue 29's size (about 20 min on 2 cores; nothing else running):
  python benchmarks/inspect_scale.py
  # smoke size (tests/test_inspect_scale.py):
  python benchmarks/inspect_scale.py --num_images=60 --image_size=32 \
      --extra=image_size=32 --results=/tmp/inspect_scale.json
"""

import csv
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags

import _speed  # pylint: disable=g-import-not-at-top

_NUM = flags.DEFINE_integer("num_images", 5000, "Readable images.")
_SIZE = flags.DEFINE_integer("image_size", 224, "Synthetic image side (px).")
_FRACTION = flags.DEFINE_float("defective_fraction", 0.05,
                               "Fraction of defective images.")
_UNREADABLE = flags.DEFINE_integer("unreadable", 4,
                                   "Files that are not images.")
_METHOD = flags.DEFINE_string("method", "", "--method of inspect ('' = its "
                              "default).")
_EXTRA = flags.DEFINE_list("extra", [], "More inspect flags, e.g. "
                           "image_size=64.")
_KEEP = flags.DEFINE_string("keep", "", "Copy the inspect output folder "
                            "here ('' = delete it with the rest).")
_TMP = flags.DEFINE_string("tmp", "", "Parent of the working folder ('' = "
                           "the system's temporary folder).")
_OUT = flags.DEFINE_string(
    "results", os.path.join(os.path.dirname(os.path.abspath(__file__)),
                            "results", "inspect.json"), "Rows file.")

GOALS = {"wall_seconds": 20 * 60, "peak_rss_mb": 6 * 1024,
         "report_assets_mb": 60}
GOAL_IMAGES = 5000


def _commit() -> str:
  here = os.path.dirname(os.path.abspath(__file__))
  try:
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, text=True,
                          capture_output=True, check=True).stdout.strip()
  except (OSError, subprocess.SubprocessError):
    return "unknown"


def _generate(folder: str) -> tuple[int, int, list[str]]:
  """The folder: (good, defective, unreadable names)."""
  from dicofun.data import synthetic  # pylint: disable=g-import-not-at-top
  defective = max(1, int(round(_NUM.value * _FRACTION.value)))
  good = _NUM.value - defective
  synthetic.write_inspect_folder(folder, num_good=good,
                                 num_defective=defective,
                                 image_size=_SIZE.value)
  sample = os.path.join(folder, "good", sorted(
      os.listdir(os.path.join(folder, "good")))[0])
  data = open(sample, "rb").read()
  bad = []
  for i in range(_UNREADABLE.value):
    name = f"unreadable_{i}.png"
    kind = i % 3
    with open(os.path.join(folder, name), "wb") as f:
      if kind == 0:
        f.write(data[:len(data) // 2])  # Truncated.
      elif kind == 2:
        f.write(b"not an image\n")
    bad.append(name)
  return good, defective, sorted(bad)


def _assets(out: str) -> tuple[int, int]:
  """(bytes, files) of the report: the page, thumbnails and figures."""
  total, files = 0, 0
  for name in ("report.html", "histogram.png", "roc.png"):
    path = os.path.join(out, name)
    if os.path.isfile(path):
      total += os.path.getsize(path)
      files += 1
  for sub in ("images", "overlays"):
    for d, _, names in os.walk(os.path.join(out, sub)):
      for n in names:
        total += os.path.getsize(os.path.join(d, n))
        files += 1
  return total, files


def _browser(out: str, rows: int) -> dict:
  """The page in headless Chromium, or why not."""
  chromium = shutil.which("chromium") or shutil.which("chromium-browser")
  if not chromium:
    return {"checked": False, "why": "chromium not installed"}
  t0 = time.time()
  proc = subprocess.run(
      [chromium, "--headless", "--no-sandbox", "--disable-gpu",
       "--disable-dev-shm-usage", "--virtual-time-budget=10000",
       "--dump-dom", "file://" + os.path.join(out, "report.html")],
      capture_output=True, text=True, timeout=600)
  dom = proc.stdout
  in_table = dom.split('id="rows"', 1)[-1].split("</tbody>", 1)[0]
  present = in_table.count("<tr ")
  hidden = in_table.count(" hidden")
  return {"checked": True, "exit": proc.returncode, "rows": present,
          "rows_shown": present - hidden, "rows_expected": rows,
          "ok": proc.returncode == 0 and present == rows
                and 0 < present - hidden <= 100,
          "seconds": round(time.time() - t0, 1)}


def main(argv):
  del argv
  tmp = tempfile.mkdtemp(prefix="dicofun_inspect_scale_",
                         dir=_TMP.value or None)
  folder, out = os.path.join(tmp, "line"), os.path.join(tmp, "out")
  t0 = time.time()
  good, defective, bad = _generate(folder)
  generate_s = time.time() - t0
  flags_ = [f"--out={out}"]
  if _METHOD.value:
    flags_.append(f"--method={_METHOD.value}")
  flags_ += [f"--{e}" for e in _EXTRA.value]
  cmd = [sys.executable, "-m", "dicofun", "inspect", folder] + flags_
  load_before = os.getloadavg()
  t0 = time.time()
  proc = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True)
  wall = time.time() - t0
  # Linux: kilobytes; the largest resident set among the waited-for
  # children (the inspect process and its workers).
  peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
  load_after = os.getloadavg()
  sys.stdout.write(proc.stdout[-3000:])
  if proc.returncode:
    sys.stderr.write(proc.stderr[-3000:])
    sys.exit(f"inspect failed with exit status {proc.returncode}")
  info = json.load(open(os.path.join(out, "inspect.json")))
  with open(os.path.join(out, "errors.csv")) as f:
    unreadable = sorted(r["file"] for r in csv.DictReader(f))
  with open(os.path.join(out, "scores.csv")) as f:
    scored = len(list(csv.DictReader(f)))
  asset_bytes, asset_files = _assets(out)
  browser = _browser(out, scored)
  assets_mb = asset_bytes / 2**20
  peak_mb = peak_kb / 1024
  checks = {
      "exit_0": proc.returncode == 0,
      "errors_csv_names_the_unreadable": unreadable == bad,
      "scores_csv_has_every_other_image": scored == good + defective,
      "browser_shows_the_rows": browser.get("ok", None),
  }
  at_goal_size = _NUM.value >= GOAL_IMAGES
  row = {
      "benchmark": "inspect_scale",
      "command": " ".join(["python -m dicofun", "inspect", "line"]
                          + flags_).replace(out, "out"),
      "method": info.get("method"),
      "images": good + defective, "defective": defective,
      "unreadable": len(bad), "image_size": _SIZE.value,
      "images_scored": scored, "flagged": info["flagged"],
      "transductive_image_auroc": (info.get("metrics") or {}).get(
          "image_auroc"),
      "wall_seconds": round(wall, 1),
      "generate_seconds": round(generate_s, 1),
      "peak_rss_mb": round(peak_mb, 1),
      "peak_rss_how": "ru_maxrss of RUSAGE_CHILDREN (the largest single "
                      "process: inspect or a worker it waited for)",
      "report_assets_mb": round(assets_mb, 2),
      "report_asset_files": asset_files,
      "report_bytes_per_row": round(asset_bytes / max(scored, 1)),
      "browser": browser,
      "checks": checks,
      "goals": GOALS,
      "goals_met": ({"wall_seconds": wall <= GOALS["wall_seconds"],
                     "peak_rss_mb": peak_mb <= GOALS["peak_rss_mb"],
                     "report_assets_mb": assets_mb
                                         <= GOALS["report_assets_mb"]}
                    if at_goal_size else
                    f"n/a below {GOAL_IMAGES} images"),
      "machine": f"{_speed.cpu_model()}, {os.cpu_count()} cores",
      "load_average_1min": [round(load_before[0], 1),
                            round(load_after[0], 1)],
      "commit": _commit(),
      "bench_command": " ".join([os.path.relpath(sys.argv[0])]
                                + sys.argv[1:]),
  }
  rows = []
  if os.path.exists(_OUT.value):
    rows = json.load(open(_OUT.value))
  rows.append(row)
  os.makedirs(os.path.dirname(os.path.abspath(_OUT.value)), exist_ok=True)
  tmp_out = _OUT.value + ".tmp"
  with open(tmp_out, "w") as f:
    json.dump(rows, f, indent=1)
  os.replace(tmp_out, _OUT.value)
  print(json.dumps(row, indent=1))
  if _KEEP.value:
    shutil.copytree(out, _KEEP.value, dirs_exist_ok=True)
  shutil.rmtree(tmp, ignore_errors=True)
  failed = {k: v for k, v in checks.items() if v is False}
  if failed:
    sys.exit(f"checks failed: {failed}")


if __name__ == "__main__":
  app.run(main)
