r"""The README's ``dicofun inspect`` run, timed end to end and recorded.

Generates a contaminated synthetic folder (``--good`` good and ``--defective``
defective images) plus the awkward files of issue #15 (a truncated PNG, an
empty file, a 16-bit PNG, a 10×10 image), runs the installed command
``python -m dicofun inspect`` on it as a subprocess from another directory,
and appends one row to ``benchmarks/results/inspect.json``: the command, its
wall time, the machine, the transductive AUROC against the folder labels, how
many images were flagged and which files ``errors.csv`` names.

  python benchmarks/inspect_quickstart.py [--method=softpatch] [--image_size=224]
"""

import csv
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags
import numpy as np
from PIL import Image

_METHOD = flags.DEFINE_string("method", "", "--method of inspect ('' = its default).")
_SIZE = flags.DEFINE_integer("image_size", 224, "Synthetic image size.")
_GOOD = flags.DEFINE_integer("good", 45, "Good images.")
_DEFECTIVE = flags.DEFINE_integer("defective", 5, "Defective images (10 %).")
_EXTRA = flags.DEFINE_list("extra", [], "More inspect flags, e.g. epochs.")
_OUT = flags.DEFINE_string(
    "results", os.path.join(os.path.dirname(os.path.abspath(__file__)),
                            "results", "inspect.json"), "Rows file.")


def _cpu_model() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or "unknown"


def _commit() -> str:
  here = os.path.dirname(os.path.abspath(__file__))
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
  rng = np.random.default_rng(0)
  Image.fromarray(rng.integers(0, 4096, (64, 64)).astype(np.uint16)).save(
      os.path.join(folder, "good", "camera16.png"))
  Image.fromarray(rng.integers(0, 255, (10, 10, 3)).astype(np.uint8)).save(
      os.path.join(folder, "good", "tiny10.png"))


def main(argv):
  del argv
  tmp = tempfile.mkdtemp(prefix="dicofun_inspect_bench_")
  folder = os.path.join(tmp, "line")
  subprocess.run([sys.executable, "-m", "dicofun.data.synthetic",
                  f"--root={folder}", "--layout=inspect",
                  f"--num_train={_GOOD.value}",
                  f"--num_test_anomalous={_DEFECTIVE.value}",
                  f"--image_size={_SIZE.value}"], check=True)
  _awkward_files(folder)
  out = os.path.join(tmp, "out")
  cmd = [sys.executable, "-m", "dicofun", "inspect", folder, f"--out={out}"]
  if _METHOD.value:
    cmd.append(f"--method={_METHOD.value}")
  cmd += [f"--{e}" for e in _EXTRA.value]
  t0 = time.time()
  proc = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True)
  wall = time.time() - t0
  sys.stdout.write(proc.stdout[-3000:])
  if proc.returncode:
    sys.stderr.write(proc.stderr[-3000:])
    sys.exit(f"inspect failed with exit status {proc.returncode}")
  info = json.load(open(os.path.join(out, "inspect.json")))
  with open(os.path.join(out, "errors.csv")) as f:
    unreadable = sorted(r["file"] for r in csv.DictReader(f))
  with open(os.path.join(out, "scores.csv")) as f:
    scored = sum(1 for _ in csv.DictReader(f))
  row = {
      "benchmark": "inspect_quickstart",
      "command": " ".join(["python -m dicofun inspect", "line"] + cmd[5:]),
      "method": info.get("method", _METHOD.value or "default"),
      "images_scored": scored, "flagged": info["flagged"],
      "unreadable": unreadable, "exit_status": proc.returncode,
      "wall_seconds": round(wall, 1),
      "transductive_image_auroc": info["metrics"].get("image_auroc"),
      "metrics": info["metrics"],
      "machine": f"{_cpu_model()}, {os.cpu_count()} cores",
      "commit": _commit(),
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
  shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
  app.run(main)
