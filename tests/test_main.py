"""experiments/main.py: the thin absl shell."""

import os
import subprocess
import sys

import pytest

from dicofun import train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_unknown_method_is_refused_by_name():
  with pytest.raises(train.UnknownMethodError, match="nope"):
    train.get_method("nope")


def test_main_refuses_unknown_method(tmp_path):
  proc = subprocess.run(
      [sys.executable, os.path.join(REPO, "experiments", "main.py"),
       "--config=" + os.path.join(REPO, "configs", "patchcore_synthetic.py"),
       "--config.method=nope", f"--workdir={tmp_path}"],
      capture_output=True, text=True, timeout=300, cwd=REPO)
  assert proc.returncode != 0
  assert "'nope' is not a dicofun method" in proc.stderr


def test_main_refuses_unknown_config_arg(tmp_path):
  proc = subprocess.run(
      [sys.executable, os.path.join(REPO, "experiments", "main.py"),
       "--config=" + os.path.join(REPO, "configs", "patchcore_synthetic.py")
       + ":colour=red", f"--workdir={tmp_path}"],
      capture_output=True, text=True, timeout=300, cwd=REPO)
  assert proc.returncode != 0
  assert "unknown config arg 'colour'" in proc.stderr
