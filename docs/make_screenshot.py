r"""Regenerates ``docs/images/report.png``, README's picture of the report.

Runs README's quick start (``dicofun demo`` + ``dicofun inspect``, the same
folder and output paths, with this interpreter's ``python -m dicofun``)
unless ``--inspect_out`` names a finished ``dicofun inspect --out`` folder,
then opens its ``report.html`` in headless Chromium at 1280×1760 and writes
the first screen as a 256-colour PNG (small enough to commit)::

  python docs/make_screenshot.py [--inspect_out=runs/quickstart/inspect]

Needs Chromium (``apt-get install chromium``), as tests/test_report_browser.py.
"""

import os
import shutil
import subprocess
import sys
import tempfile

from absl import app
from absl import flags
from PIL import Image

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# README's quick start, after the install.
_FOLDER = "runs/quickstart/line"
_INSPECT_OUT = "runs/quickstart/inspect"

_OUT = flags.DEFINE_string(
    "inspect_out", "", "a finished dicofun inspect --out folder ('' = run "
    f"README's quick start into {_INSPECT_OUT}).")
_PNG = flags.DEFINE_string(
    "png", os.path.join(_REPO, "docs", "images", "report.png"),
    "the screenshot.")
_WINDOW = flags.DEFINE_string(
    "window_size", "1280,1760", "width,height: the summary, the figures and "
    "the five flagged rows of the quick start.")


def _dicofun(*args: str) -> None:
  cmd = [sys.executable, "-m", "dicofun", *args]
  print("$ dicofun " + " ".join(args), flush=True)
  subprocess.run(cmd, cwd=_REPO, check=True)


def _chromium() -> str:
  for name in ("chromium", "chromium-browser", "google-chrome"):
    if shutil.which(name):
      return shutil.which(name)
  raise SystemExit("chromium is missing: apt-get install chromium")


def screenshot(page: str, png: str, window_size: str) -> None:
  """Writes the first ``window_size`` screen of ``page`` to ``png``."""
  with tempfile.TemporaryDirectory() as tmp:
    raw = os.path.join(tmp, "raw.png")
    subprocess.run(
        [_chromium(), "--headless", "--no-sandbox", "--disable-gpu",
         "--disable-dev-shm-usage", "--hide-scrollbars",
         "--virtual-time-budget=5000", f"--window-size={window_size}",
         f"--user-data-dir={tmp}/profile", f"--screenshot={raw}",
         "file://" + os.path.abspath(page)],
        check=True, capture_output=True, timeout=180)
    image = Image.open(raw).convert("RGB")
    if image.getextrema() in (((0, 0),) * 3, ((255, 255),) * 3):
      raise SystemExit(f"the screenshot of {page} is blank")
    os.makedirs(os.path.dirname(os.path.abspath(png)), exist_ok=True)
    image.quantize(256, method=Image.Quantize.MEDIANCUT).save(
        png, optimize=True)


def main(argv):
  del argv
  out = _OUT.value
  if not out:
    _dicofun("demo", _FOLDER)
    _dicofun("inspect", _FOLDER, f"--out={_INSPECT_OUT}")
    out = os.path.join(_REPO, _INSPECT_OUT)
  screenshot(os.path.join(out, "report.html"), _PNG.value, _WINDOW.value)
  print(f"{_PNG.value}: {os.path.getsize(_PNG.value) // 1024} KB", flush=True)


if __name__ == "__main__":
  app.run(main)
