"""experiments/main.py: the thin absl shell."""

import os
import subprocess
import sys

import pytest

from dicofun import methods

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_unknown_method_is_refused_by_name():
  with pytest.raises(methods.UnknownMethodError, match="nope"):
    methods.get_method("nope")


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


def test_main_checks_flag_overrides_before_any_work(tmp_path):
  proc = subprocess.run(
      [sys.executable, os.path.join(REPO, "experiments", "main.py"),
       "--config=" + os.path.join(REPO, "configs", "funad_synthetic.py")
       + ":runlocal", "--config.funad.smoothness=huber",
       f"--workdir={tmp_path / 'run'}"],
      capture_output=True, text=True, timeout=300, cwd=REPO)
  assert proc.returncode != 0
  assert ("error: config.funad.smoothness='huber': expected one of "
          "['mae', 'mse', 'kl']") in proc.stderr
  assert "Traceback" not in proc.stderr
  assert not (tmp_path / "run").exists()


def test_headline_command_says_where_visa_must_be(tmp_path):
  # The mission's headline command on a machine without VisA.
  env = dict(os.environ, DICOFUN_DATA=str(tmp_path / "nothing_here"))
  proc = subprocess.run(
      [sys.executable, os.path.join(REPO, "experiments", "main.py"),
       "--config=" + os.path.join(REPO, "configs", "funad_visa.py"),
       f"--workdir={tmp_path / 'run'}"],
      capture_output=True, text=True, timeout=300, cwd=REPO, env=env)
  assert proc.returncode != 0
  assert str(tmp_path / "nothing_here" / "visa") in proc.stderr
  assert "https://github.com/amazon-science/spot-diff" in proc.stderr
  assert "Traceback" not in proc.stderr
