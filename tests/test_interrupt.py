"""Ctrl-C stops a run with exit 130 and it resumes cleanly (issue 25 #8).

Once in four tries a SIGINT was swallowed (``Exception ignored in:
_xla_gc_callback ... KeyboardInterrupt``) and training finished with exit 0.
The training loop now handles the first Ctrl-C itself: it stops at the next
safe point with ``interrupt.Interrupted``; a second one stops at once. Tested
in-process on ``training.run_loop`` and, as ``tests/test_crash.py`` tests
SIGKILL, on a FUN-AD run in a child process.
"""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from dicofun import checkpoint
from dicofun import evaluate
from dicofun import interrupt
from dicofun import training
from dicofun.data import synthetic

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_SYN = dict(num_train=16, num_test_good=4, num_test_anomalous=4, image_size=64)
_STEPS = 4


def _loop(workdir, *, every=1, ctrl_c_at=(), epochs=4):
  """A run_loop whose epochs are ``_STEPS`` steps; SIGINT at (epoch, step)s."""

  def epoch_fn(state, epoch):
    for step in range(_STEPS):
      interrupt.between_steps()
      if (epoch, step) in ctrl_c_at:
        os.kill(os.getpid(), signal.SIGINT)
      state = {"w": state["w"] * 1.5 + epoch + step}
    return state, {"loss": float(state["w"].sum())}

  return training.run_loop(state={"w": np.ones(3, np.float32)},
                           epochs=epochs, epoch_fn=epoch_fn,
                           workdir=str(workdir), checkpoint_every=every)


def _latest(workdir):
  ckpt = checkpoint.TrainCheckpointer(
      os.path.join(workdir, training.CHECKPOINT_DIR), keep_best=False,
      subdir=training.TRAIN_CKPT)
  try:
    return ckpt.latest_epoch()
  finally:
    ckpt.close()


@pytest.fixture(autouse=True)
def _forget_ctrl_c():
  interrupt.reset()
  yield
  interrupt.reset()


@pytest.mark.parametrize("every,ctrl_c,saved", [
    (1, (2, 1), 2),  # Epoch 2 is saved: stop between two steps of epoch 3.
    (3, (1, 1), 2),  # Epoch 1 is not: finish epoch 2 and save it first.
])
def test_first_ctrl_c_stops_at_a_safe_point_and_resumes_identically(
    tmp_path, every, ctrl_c, saved):
  ref = _loop(tmp_path / "ref", every=every)
  with pytest.raises(interrupt.Interrupted, match="resume with the same"):
    _loop(tmp_path / "run", every=every, ctrl_c_at={ctrl_c})
  assert _latest(str(tmp_path / "run")) == saved
  interrupt.reset()
  got = _loop(tmp_path / "run", every=every)
  assert got.start_epoch == saved
  np.testing.assert_array_equal(got.state["w"], ref.state["w"])
  assert got.history == ref.history


def test_second_ctrl_c_stops_at_once(tmp_path):
  # Epoch 3 (0-based) must finish before a first Ctrl-C stops the run (epoch
  # 2 is saved, 3 is not): a second one does not wait for that.
  with pytest.raises(KeyboardInterrupt) as info:
    _loop(tmp_path / "run", every=2, ctrl_c_at={(3, 0), (3, 1)})
  assert not isinstance(info.value, interrupt.Interrupted)
  assert info.traceback[-1].name == "_handler"  # Raised at the second one.
  assert _latest(str(tmp_path / "run")) == 2


def _command(data, workdir):
  return [sys.executable, os.path.join(_REPO, "experiments", "main.py"),
          "--config=" + os.path.join(
              _REPO, "configs", "funad_synthetic.py:runlocal,image_size=56,"
              "epochs=3"),
          f"--config.dataset.root={data}", "--config.eval.num_figures=0",
          "--config.backbone.weights=random", f"--workdir={workdir}"] + [
              f"--config.dataset.synthetic.{k}={v}" for k, v in _SYN.items()]


def _env(cache):
  env = dict(os.environ, DICOFUN_CACHE=cache, DICOFUN_CPU_DEVICES="1")
  env.pop("XLA_FLAGS", None)
  return env


def _scores(workdir):
  with open(os.path.join(workdir, "test_scores.csv")) as f:
    return np.array([float(r["score"]) for r in csv.DictReader(f)])


@pytest.mark.slow  # Three short child runs, two at a time.
def test_sigint_exits_130_and_resumes_to_the_same_result(tmp_path):
  data = str(tmp_path / "data")
  synthetic.generate(data, **_SYN)
  full = str(tmp_path / "full")
  ref_proc = subprocess.Popen(
      _command(data, full), env=_env(str(tmp_path / "cache_full")),
      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  run = str(tmp_path / "run")
  cache = str(tmp_path / "cache")
  ckdir = os.path.join(run, "checkpoints", "train_ckpt")
  proc = subprocess.Popen(_command(data, run), env=_env(cache),
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True)
  deadline = time.time() + 600
  while not os.path.isdir(os.path.join(ckdir, "1")):
    assert proc.poll() is None, "the run ended before its first checkpoint"
    assert time.time() < deadline
    time.sleep(0.02)
  proc.send_signal(signal.SIGINT)
  _, err = proc.communicate(timeout=600)
  assert proc.returncode == 130, err[-3000:]
  assert "Traceback" not in err, err[-3000:]
  assert "resume with the same command" in err.rstrip().splitlines()[-1]
  assert not os.path.exists(os.path.join(run, "results.json"))

  out = subprocess.run(_command(data, run), env=_env(cache),
                       capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "resumed after epoch" in out.stderr  # Not started over.
  _, ref_err = ref_proc.communicate(timeout=600)
  assert ref_proc.returncode == 0, ref_err[-3000:]
  with open(os.path.join(full, "results.json")) as f:
    ref = json.load(f)
  with open(os.path.join(run, "results.json")) as f:
    got = json.load(f)
  for view, values in ref["metrics"].items():
    flat = evaluate.flat_metrics(got["metrics"][view])
    for k, v in evaluate.flat_metrics(values).items():
      assert flat[k] == pytest.approx(v, abs=1e-6), (view, k)
  np.testing.assert_allclose(_scores(run), _scores(full), rtol=1e-6,
                             atol=1e-7)
  assert len(got["extra"]["history"]) == len(ref["extra"]["history"]) == 3
  for g, r in zip(got["extra"]["history"], ref["extra"]["history"]):
    assert g == pytest.approx(r)
