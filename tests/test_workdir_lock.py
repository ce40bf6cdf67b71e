"""One dicofun process per workdir / --out folder (issue 25 #6).

Two ``dicofun run`` into one workdir both exited 0 while only one run's files
survived. Now the second stops before any work, exit 2, with one line naming
the first process (pid, host, command, since); the lock goes with its process,
crash or not.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from dicofun.data import synthetic

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_SYN = dict(num_train=8, num_test_good=2, num_test_anomalous=2, image_size=64)
# A child that takes the lock the way dicofun does, says so and waits.
_HOLDER = """
import sys, time
from dicofun import locking
folder, lock_path = sys.argv[1], sys.argv[2] or None
with locking.folder_lock(folder, lock_path=lock_path):
  print("locked", flush=True)
  time.sleep(600)
"""


def _env(tmp_path):
  return dict(os.environ, DICOFUN_CACHE=str(tmp_path / "cache"),
              DICOFUN_CPU_DEVICES="1")


def _run_command(data, workdir, *extra):
  return [sys.executable, "-m", "dicofun", "run",
          "--config=configs/funad_synthetic.py:runlocal,image_size=56,"
          "epochs=2", f"--config.dataset.root={data}",
          "--config.eval.num_figures=0", "--config.backbone.weights=random",
          f"--workdir={workdir}", *extra] + [
              f"--config.dataset.synthetic.{k}={v}" for k, v in _SYN.items()]


def _hold(folder, lock_path=""):
  proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(folder),
                           str(lock_path)], cwd=_REPO, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  line = proc.stdout.readline()
  assert line.strip() == "locked", proc.communicate()[1][-3000:]
  return proc


def _assert_names(proc, owner_pid, flag, folder):
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert "Traceback" not in proc.stderr
  last = proc.stderr.rstrip().splitlines()[-1]
  assert last.startswith(f"error: {flag}={str(folder)!r} is in use by another "
                         f"dicofun process (pid {owner_pid} on "), last
  assert "running since 20" in last, last


@pytest.mark.slow  # Two child runs.
def test_second_run_into_a_workdir_stops_at_once_naming_the_first(tmp_path):
  data = str(tmp_path / "data")
  synthetic.generate(data, **_SYN)
  workdir = tmp_path / "run"
  first = subprocess.Popen(_run_command(data, workdir), cwd=_REPO,
                           env=_env(tmp_path), stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 600
  # The first one holds the lock (3b2b3b2 had none: it is training).
  while not ((workdir / ".dicofun.lock").exists() or
             (workdir / "checkpoints").is_dir()):
    assert first.poll() is None, first.communicate()[1][-3000:]
    assert time.time() < deadline
    time.sleep(0.05)
  second = subprocess.run(
      _run_command(data, workdir, "--config.funad.lr=0.01"), cwd=_REPO,
      env=_env(tmp_path), capture_output=True, text=True, timeout=600)
  _assert_names(second, first.pid, "--workdir", workdir)
  assert first.poll() is None, "the first run ended before the second tried"
  assert "--config.funad.lr" not in second.stderr.splitlines()[-1]
  assert "dicofun run --config=configs/funad_synthetic.py" in (
      second.stderr.splitlines()[-1])
  assert "FUN-AD" not in second.stderr  # Stopped before any work.
  _, err = first.communicate(timeout=600)
  assert first.returncode == 0, err[-3000:]
  with open(workdir / "results.json") as f:
    assert json.load(f)["config"]["funad"]["lr"] == 0.001  # The first's.
  assert not (workdir / ".dicofun.lock").exists()  # Removed on exit.


def test_inspect_and_predict_out_in_use_stop_at_once(tmp_path):
  from dicofun import locking  # pylint: disable=g-import-not-at-top
  folder = tmp_path / "images"
  folder.mkdir()
  out = tmp_path / "out"
  holder = _hold(out, locking.sibling_lock_path(str(out)))
  try:
    proc = subprocess.run(
        [sys.executable, "-m", "dicofun", "inspect", str(folder),
         f"--out={out}"], cwd=_REPO, capture_output=True, text=True,
        timeout=600)
    _assert_names(proc, holder.pid, "--out", out)
    proc = subprocess.run(
        [sys.executable, "-m", "dicofun", "predict", f"--model={tmp_path}",
         f"--images={folder}", f"--out={out}"], cwd=_REPO,
        capture_output=True, text=True, timeout=600)
    _assert_names(proc, holder.pid, "--out", out)
  finally:
    holder.kill()
    holder.wait()


def test_lock_names_its_owner_and_goes_with_its_process(tmp_path):
  from dicofun import locking  # pylint: disable=g-import-not-at-top
  workdir = tmp_path / "w"
  holder = _hold(workdir)
  with pytest.raises(locking.FolderInUseError) as info:
    with locking.folder_lock(str(workdir)):
      pass
  assert info.value.owner["pid"] == holder.pid
  assert info.value.owner["command"].startswith("-c ")
  # SIGKILL: no clean-up ran, the lock file stays, the kernel drops the lock.
  holder.send_signal(signal.SIGKILL)
  holder.wait()
  assert (workdir / ".dicofun.lock").exists()
  with locking.folder_lock(str(workdir)) as owner:
    assert owner["pid"] == os.getpid()
    with pytest.raises(locking.FolderInUseError, match=f"pid {os.getpid()} "):
      with locking.folder_lock(str(workdir)):
        pass
  assert not (workdir / ".dicofun.lock").exists()
