"""A run killed with SIGKILL resumes to the same result (issue #13 item 5).

For FUN-AD and DiCo, ``experiments/main.py`` runs a tiny synthetic config
three times in child processes: once uninterrupted; once killed with SIGKILL
as soon as its first training checkpoint is complete (so it dies mid-epoch 2
or mid-save), after which a half-written save is left behind as a killed
save leaves it; and once more in that workdir, which must resume (not start
over) and end with the uninterrupted run's metrics and scores. The
uninterrupted run's TensorBoard files must hold its per-epoch history,
written live by the training loop.
"""

import csv
import glob
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from dicofun import evaluate
from dicofun import summary
from dicofun.data import synthetic

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_SYN = dict(num_train=16, num_test_good=4, num_test_anomalous=4, image_size=64)
_CONFIGS = {
    "funad": "funad_synthetic.py:runlocal,image_size=56,epochs=2",
    "dico": "dico_synthetic.py:runlocal,image_size=64,epochs=2",
}


def _command(method, data, workdir):
  return [sys.executable, os.path.join(_REPO, "experiments", "main.py"),
          "--config=" + os.path.join(_REPO, "configs", _CONFIGS[method]),
          f"--config.dataset.root={data}", "--config.eval.num_figures=0",
          # Random backbone weights: no weight conversion in each child.
          "--config.backbone.weights=random",
          f"--workdir={workdir}"] + [
              f"--config.dataset.synthetic.{k}={v}" for k, v in _SYN.items()]


def _env(cache):
  env = dict(os.environ, DICOFUN_CACHE=cache, DICOFUN_CPU_DEVICES="1")
  env.pop("XLA_FLAGS", None)
  return env


def _scores(workdir):
  with open(os.path.join(workdir, "test_scores.csv")) as f:
    return np.array([float(r["score"]) for r in csv.DictReader(f)])


def _metrics(workdir):
  with open(os.path.join(workdir, "results.json")) as f:
    return json.load(f)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("crash_data"))
  synthetic.generate(root, **_SYN)
  return root


@pytest.mark.slow  # Six short child runs, two at a time.
@pytest.mark.parametrize("method", ["funad", "dico"])
def test_sigkilled_run_resumes_to_the_same_result(method, data, tmp_path):
  # The uninterrupted run and the one to kill run side by side (own caches).
  full = str(tmp_path / "full")
  ref_proc = subprocess.Popen(
      _command(method, data, full), env=_env(str(tmp_path / "cache_full")),
      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  killed = str(tmp_path / "killed")
  cache = str(tmp_path / "cache")
  ckdir = os.path.join(killed, "checkpoints", "train_ckpt")
  proc = subprocess.Popen(_command(method, data, killed), env=_env(cache),
                          stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  deadline = time.time() + 600
  # Orbax renames "1.orbax-checkpoint-tmp" to "1" when the save is complete.
  while not os.path.isdir(os.path.join(ckdir, "1")):
    assert proc.poll() is None, "the run ended before its first checkpoint"
    assert time.time() < deadline
    time.sleep(0.02)
  proc.send_signal(signal.SIGKILL)
  proc.wait(timeout=60)
  assert not os.path.exists(os.path.join(killed, "results.json"))
  # What a save killed half-way leaves: a temporary step directory.
  partial = os.path.join(ckdir, "2.orbax-checkpoint-tmp")
  if not os.path.isdir(os.path.join(ckdir, "2")):
    os.makedirs(os.path.join(partial, "default"), exist_ok=True)
    with open(os.path.join(partial, "default", "manifest.ocdbt"), "wb") as f:
      f.write(b"\x00\x01half")

  out = subprocess.run(_command(method, data, killed), env=_env(cache),
                       capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "resumed after epoch" in out.stderr  # Not started over.
  _, ref_err = ref_proc.communicate(timeout=600)
  assert ref_proc.returncode == 0, ref_err[-3000:]
  ref, got = _metrics(full), _metrics(killed)
  for view, values in ref["metrics"].items():
    flat = evaluate.flat_metrics(got["metrics"][view])
    for k, v in evaluate.flat_metrics(values).items():
      assert flat[k] == pytest.approx(v, abs=1e-6), (view, k)
  np.testing.assert_allclose(_scores(killed), _scores(full), rtol=1e-6,
                             atol=1e-7)
  # The history survived the kill: the same rows as the uninterrupted run.
  assert len(got["extra"]["history"]) == len(ref["extra"]["history"])
  for g, r in zip(got["extra"]["history"], ref["extra"]["history"]):
    assert g == pytest.approx(r)

  # Per-epoch history rows reach TensorBoard, written live by the training
  # loop (one file) beside the final metrics (another file).
  tb = os.path.join(full, "tensorboard")
  events = glob.glob(os.path.join(tb, "events.out.*"))
  assert sorted(e.rsplit(".", 1)[-1] for e in events) == ["final", "train"]
  scalars = summary.read_scalars(tb)
  rows = ref["extra"]["history"]
  assert [r["epoch"] for r in rows] == [1, 2]
  # TensorBoard's x: FUN-AD's optimiser step (issue 27), DiCo's epoch.
  xs = [r.get("step", r["epoch"]) for r in rows]
  assert scalars["history/loss"] == [
      (x, pytest.approx(r["loss"], rel=1e-6)) for x, r in zip(xs, rows)]
  assert scalars["history/test_image_auroc"] == [
      (x, pytest.approx(r["test_image_auroc"], rel=1e-6))
      for x, r in zip(xs, rows)]
  assert [s for s, _ in scalars["test/image_auroc"]] == [xs[-1]]
  assert [s for s, _ in summary.read_images(tb)["history/anomaly_maps"]] == [
      x for x, r in zip(xs, rows) if "test_image_auroc" in r]
  # The killed run's epochs and the resumed run's together cover both.
  killed_steps = summary.read_scalars(
      os.path.join(killed, "tensorboard"))["history/loss"]
  assert {s for s, _ in killed_steps} == set(xs)
