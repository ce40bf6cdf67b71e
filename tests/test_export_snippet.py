"""docs/predict.md's copy-paste script runs an exported scorer without
dicofun and prints ``dicofun predict``'s scores (issue 29 #5).

The block between the ``snippet:score_exported`` markers is run as written,
by a Python that cannot import dicofun: ``-S`` (no ``.pth`` files, so no
editable-install hook) with a ``PYTHONPATH`` of the site-packages entries
other than dicofun's.
"""

import csv
import os
import re
import subprocess
import sys
import sysconfig

import numpy as np
import pytest

from dicofun import inspection
from dicofun.data import synthetic

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOC = os.path.join(REPO, "docs", "predict.md")


def snippet() -> str:
  """The python block between the markers of docs/predict.md."""
  with open(DOC) as f:
    text = f.read()
  block = re.search(r"<!-- snippet:score_exported:begin -->\n```python\n"
                    r"(.*?)```\n<!-- snippet:score_exported:end -->", text,
                    flags=re.S)
  assert block, "docs/predict.md lost its score_exported snippet"
  return block.group(1)


def _python_without_dicofun(tmp_path) -> tuple[list[str], dict[str, str]]:
  """A command prefix and environment in which dicofun is not importable."""
  site = tmp_path / "site"
  site.mkdir()
  dirs = {sysconfig.get_paths()[k] for k in ("purelib", "platlib")}
  for d in sorted(dirs):
    for name in os.listdir(d):
      if (name.lower().startswith(("dicofun", "__editable__"))
          or name.endswith(".pth") or (site / name).exists()):
        continue
      os.symlink(os.path.join(d, name), site / name)
  env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
  env["PYTHONPATH"] = str(site)
  return [sys.executable, "-S"], env


def _dicofun(*args):
  proc = subprocess.run([sys.executable, "-m", "dicofun", *args],
                        capture_output=True, text=True, timeout=600, cwd=REPO)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc


@pytest.fixture(scope="module")
def model(tmp_path_factory):
  """A small inspected SoftPatch model (what dicofun inspect writes)."""
  tmp = tmp_path_factory.mktemp("snippet")
  line = synthetic.write_inspect_folder(str(tmp / "line"), num_good=10,
                                        num_defective=2, image_size=64)
  config = inspection.inspect_config("softpatch", image_size=64)
  config.features_cache = False
  out = str(tmp / "inspect")
  inspection.inspect_folder(line, out_dir=out, config=config)
  return out


def test_the_snippet_scores_like_predict_without_dicofun(model, tmp_path):
  # New images of another size (the snippet resizes them), 3 of them with a
  # fixed batch of 2 (the snippet pads the last batch).
  new = synthetic.write_inspect_folder(str(tmp_path / "new"), num_good=2,
                                       num_defective=1, image_size=80,
                                       seed=1)
  path = str(tmp_path / "model.stablehlo")
  _dicofun("export", f"--model={model}", f"--out={path}", "--batch_size=2")
  _dicofun("predict", f"--model={model}", f"--images={new}",
           f"--out={tmp_path / 'pred'}", "--nooverlays")
  with open(tmp_path / "pred" / "scores.csv") as f:
    want = {r["file"]: (float(r["score"]), int(r["decision"]))
            for r in csv.DictReader(f)}
  assert len(want) == 3

  script = tmp_path / "score.py"
  script.write_text(snippet())
  python, env = _python_without_dicofun(tmp_path)
  check = subprocess.run([*python, "-c", "import dicofun"], env=env,
                         cwd=str(tmp_path), capture_output=True, text=True)
  assert check.returncode != 0 and "No module named 'dicofun'" in check.stderr
  files = sorted(want)
  proc = subprocess.run(
      [*python, str(script), path, *files], env=env, cwd=new,
      capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]

  lines = [l.split("\t") for l in proc.stdout.splitlines()]
  assert [l[0] for l in lines] == files
  got = np.array([float(l[1]) for l in lines])
  np.testing.assert_allclose(got, [want[f][0] for f in files], rtol=1e-4)
  assert [l[2] == "DEFECT" for l in lines] == [bool(want[f][1])
                                                for f in files]
