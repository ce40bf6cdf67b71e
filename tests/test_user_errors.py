"""User errors are one line ``error: ...`` on stderr and exit 2 (issue 25 #12).

Bad input or configuration (a refused resume, an output path that is an
existing file) is not a bug: the user sees what is wrong and what to do, not
a Python traceback.
"""

import os
import subprocess
import sys

import numpy as np
import pytest

from dicofun import training
from dicofun.data import synthetic

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_SYN = dict(num_train=8, num_test_good=2, num_test_anomalous=2, image_size=64)


def _dicofun(*args, env=None):
  return subprocess.run([sys.executable, "-m", "dicofun", *args],
                        capture_output=True, text=True, timeout=600,
                        cwd=_REPO, env=env)


def _assert_user_error(proc, *needles):
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
  lines = [l for l in proc.stderr.splitlines() if l.startswith("error: ")]
  assert len(lines) == 1, proc.stderr[-3000:]
  assert proc.stderr.rstrip().splitlines()[-1] == lines[0]
  for needle in needles:
    assert needle in lines[0], lines[0]


def test_run_workdir_naming_a_file_is_one_line(tmp_path):
  path = tmp_path / "results.txt"
  path.write_text("mine")
  proc = _dicofun("run", "--config=configs/patchcore_synthetic.py:runlocal",
                  f"--workdir={path}")
  _assert_user_error(proc, "--workdir", str(path), "is a file")
  assert path.read_text() == "mine"


def test_inspect_and_predict_out_naming_a_file_are_one_line(tmp_path):
  path = tmp_path / "out.txt"
  path.write_text("mine")
  folder = tmp_path / "images"
  folder.mkdir()
  proc = _dicofun("inspect", str(folder), f"--out={path}")
  _assert_user_error(proc, "--out", str(path), "is a file")
  proc = _dicofun("predict", f"--model={tmp_path}", f"--images={folder}",
                  f"--out={path}")
  _assert_user_error(proc, "--out", str(path), "is a file")
  assert path.read_text() == "mine"


@pytest.mark.slow  # One child run up to its feature extraction.
def test_refused_resume_is_one_line(tmp_path):
  data = str(tmp_path / "data")
  synthetic.generate(data, **_SYN)
  workdir = tmp_path / "run"
  # A checkpoint of "another config": epoch 1 under a different fingerprint.
  training.run_loop(
      state={"w": np.zeros(2, np.float32)}, epochs=1,
      epoch_fn=lambda s, e: (s, {}), workdir=str(workdir),
      fingerprint={"hash": "other", "values": {"funad.lr": 1.0}})
  env = dict(os.environ, DICOFUN_CACHE=str(tmp_path / "cache"),
             DICOFUN_CPU_DEVICES="1")
  proc = _dicofun(
      "run", "--config=configs/funad_synthetic.py:runlocal,image_size=56,"
      "epochs=2", f"--config.dataset.root={data}",
      "--config.backbone.weights=random", f"--workdir={workdir}",
      *[f"--config.dataset.synthetic.{k}={v}" for k, v in _SYN.items()],
      env=env)
  _assert_user_error(proc, "cannot be resumed", "funad.lr",
                     "--config.restart=True")
