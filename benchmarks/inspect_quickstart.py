r"""The README's ``dicofun inspect`` run, timed end to end and recorded.

Generates a contaminated synthetic folder (``--good`` good and ``--defective``
defective images) plus the awkward files of issue #15 (a truncated PNG, an
empty file, a 16-bit PNG, a 10×10 image), runs ``dicofun inspect`` on it as a
subprocess from another directory, checks the outcome (exit 0, errors.csv
names exactly the two unreadable files, scores.csv has every other image,
report.html exists) and appends one row to ``benchmarks/results/inspect.json``:
the command, its wall time, the machine and its load, the transductive AUROC
against the folder labels, how many images were flagged and which files
``errors.csv`` names.

With ``--fresh_venv=DIR`` it first does what a new user does (issue #15's
must-show): ``git clone`` this checkout into a temporary folder,
``python3 -m venv DIR`` and ``DIR/bin/pip install <clone>`` (not editable;
only the package index is needed), and runs that venv's ``dicofun`` with an
empty weight cache; the install time is recorded too. Without it, the
current interpreter's ``python -m dicofun`` runs.

  python benchmarks/inspect_quickstart.py [--method=funad] [--image_size=224]
  python benchmarks/inspect_quickstart.py --method=funad --fresh_venv=/tmp/fresh-venv
"""

import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags
import numpy as np
from PIL import Image

import _speed  # pylint: disable=g-import-not-at-top

_METHOD = flags.DEFINE_string("method", "", "--method of inspect ('' = its default).")
_SIZE = flags.DEFINE_integer("image_size", 224, "Synthetic image size.")
_GOOD = flags.DEFINE_integer("good", 45, "Good images.")
_DEFECTIVE = flags.DEFINE_integer("defective", 5, "Defective images (10 %).")
_EXTRA = flags.DEFINE_list("extra", [], "More inspect flags, e.g. epochs.")
_FRESH = flags.DEFINE_string(
    "fresh_venv", "", "Create this venv (must not exist), pip install a "
    "clean clone of this checkout into it (not editable) and run its "
    "dicofun ('' = this interpreter's python -m dicofun).")
_KEEP = flags.DEFINE_string(
    "keep", "", "Copy the inspect output folder (report.html, ...) here "
    "('' = delete it with the rest).")
_OUT = flags.DEFINE_string(
    "results", os.path.join(os.path.dirname(os.path.abspath(__file__)),
                            "results", "inspect.json"), "Rows file.")




def _commit(here: str = "") -> str:
  here = here or os.path.dirname(os.path.abspath(__file__))
  try:
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, text=True,
                          capture_output=True, check=True).stdout.strip()
  except (OSError, subprocess.SubprocessError):
    return "unknown"


def _awkward_files(folder: str) -> None:
  good = sorted(os.listdir(os.path.join(folder, "good")))
  data = open(os.path.join(folder, "good", good[0]), "rb").read()
  with open(os.path.join(folder, "truncated.png"), "wb") as f:
    f.write(data[:len(data) // 2])
  open(os.path.join(folder, "empty.png"), "wb").close()
  # A 12-bit camera frame in a 16-bit PNG, and a 10×10 thumbnail, of two
  # good parts.
  gray = np.asarray(Image.open(os.path.join(folder, "good", good[1]))
                    .convert("L"), np.uint16) * 16
  Image.fromarray(gray).save(os.path.join(folder, "good", "camera16.png"))
  Image.open(os.path.join(folder, "good", good[2])).resize((10, 10)).save(
      os.path.join(folder, "good", "tiny10.png"))


def _fresh_install(venv: str, tmp: str) -> tuple[str, str, float]:
  """Clean clone → new venv → non-editable pip install; (python, dicofun,
  seconds)."""
  if os.path.exists(venv):
    sys.exit(f"--fresh_venv={venv} exists; give a new path")
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  clone = os.path.join(tmp, "clone")
  t0 = time.time()
  subprocess.run(["git", "clone", "-q", repo, clone], check=True)
  subprocess.run(["python3", "-m", "venv", venv], check=True)
  subprocess.run([os.path.join(venv, "bin", "pip"), "install", "-q", clone],
                 check=True)
  return (os.path.join(venv, "bin", "python"),
          os.path.join(venv, "bin", "dicofun"), time.time() - t0)


def main(argv):
  del argv
  tmp = tempfile.mkdtemp(prefix="dicofun_inspect_bench_")
  load_before = os.getloadavg()
  python, dicofun_cmd, install_s = sys.executable, None, None
  env = dict(os.environ)
  if _FRESH.value:
    python, dicofun_cmd, install_s = _fresh_install(_FRESH.value, tmp)
    env["DICOFUN_CACHE"] = os.path.join(tmp, "cache")  # Weights: from zero.
    env.pop("PYTHONPATH", None)
  folder = os.path.join(tmp, "line")
  subprocess.run([python, "-m", "dicofun.data.synthetic",
                  f"--root={folder}", "--layout=inspect",
                  f"--num_train={_GOOD.value}",
                  f"--num_test_anomalous={_DEFECTIVE.value}",
                  f"--image_size={_SIZE.value}"], check=True, cwd=tmp,
                 env=env)
  _awkward_files(folder)
  out = os.path.join(tmp, "out")
  head = [dicofun_cmd] if dicofun_cmd else [python, "-m", "dicofun"]
  flags_ = [f"--out={out}"]
  if _METHOD.value:
    flags_.append(f"--method={_METHOD.value}")
  flags_ += [f"--{e}" for e in _EXTRA.value]
  cmd = head + ["inspect", folder] + flags_
  t0 = time.time()
  proc = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True,
                        env=env)
  wall = time.time() - t0
  load_after = os.getloadavg()
  sys.stdout.write(proc.stdout[-3000:])
  if proc.returncode:
    sys.stderr.write(proc.stderr[-3000:])
    sys.exit(f"inspect failed with exit status {proc.returncode}")
  info = json.load(open(os.path.join(out, "inspect.json")))
  with open(os.path.join(out, "errors.csv")) as f:
    unreadable = sorted(r["file"] for r in csv.DictReader(f))
  with open(os.path.join(out, "scores.csv")) as f:
    scored = sorted(r["file"] for r in csv.DictReader(f))
  # Every image of the folder but the two unreadable files.
  expected = sorted(
      os.path.relpath(os.path.join(d, n), folder)
      for d, _, names in os.walk(folder) for n in names
      if not n.startswith(".")
      and n not in ("truncated.png", "empty.png"))
  checks = {
      "exit_0": proc.returncode == 0,
      "errors_csv_names_the_two_unreadable":
          unreadable == ["empty.png", "truncated.png"],
      "scores_csv_has_every_other_image": scored == expected,
      "report_html_exists": os.path.isfile(os.path.join(out, "report.html")),
  }
  shown = (["dicofun"] if dicofun_cmd else ["python -m dicofun"])
  row = {
      "benchmark": "inspect_quickstart",
      "command": " ".join(shown + ["inspect", "line"] + flags_).replace(
          out, "out"),
      "install": (f"git clone + python3 -m venv + pip install <clone> "
                  f"(not editable), {install_s:.0f} s" if install_s else
                  "the current environment"),
      "method": info.get("method", _METHOD.value or "default"),
      "images_scored": len(scored), "flagged": info["flagged"],
      "unreadable": unreadable, "exit_status": proc.returncode,
      "checks": checks,
      "wall_seconds": round(wall, 1),
      "transductive_image_auroc": info["metrics"].get("image_auroc"),
      "metrics": info["metrics"],
      "machine": f"{_speed.cpu_model()}, {os.cpu_count()} cores",
      "load_average_1min": [round(load_before[0], 1),
                            round(load_after[0], 1)],
      # The installed code: the clone's commit with --fresh_venv.
      "commit": _commit(os.path.join(tmp, "clone") if _FRESH.value else ""),
      "bench_command": " ".join([os.path.relpath(sys.argv[0])] + sys.argv[1:]),
  }
  rows = []
  if os.path.exists(_OUT.value):
    rows = json.load(open(_OUT.value))
  rows.append(row)
  os.makedirs(os.path.dirname(_OUT.value), exist_ok=True)
  tmp_out = _OUT.value + ".tmp"
  with open(tmp_out, "w") as f:
    json.dump(rows, f, indent=1)
  os.replace(tmp_out, _OUT.value)
  print(json.dumps(row, indent=1))
  if _KEEP.value:
    shutil.copytree(out, _KEEP.value, dirs_exist_ok=True)
  shutil.rmtree(tmp, ignore_errors=True)
  if not all(checks.values()):
    sys.exit(f"checks failed: {checks}")


if __name__ == "__main__":
  app.run(main)
