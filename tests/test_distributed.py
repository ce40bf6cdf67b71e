"""Multi-process: two CPU processes on 127.0.0.1 with ``jax.distributed``.

A short FUN-AD training through ``experiments/main.py`` runs once as a single
process and once as two processes (one CPU device each, gloo collectives).
Both processes must agree, the results must equal the single-process run's,
and only process 0 may write results.
"""

import csv
import json
import os
import socket
import subprocess
import sys

import numpy as np

from dicofun import evaluate
from dicofun.data import synthetic

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_SYN = dict(num_train=16, num_test_good=4, num_test_anomalous=4, image_size=64)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _command(data_root: str, workdir: str) -> list[str]:
  return [sys.executable, os.path.join(_REPO, "experiments", "main.py"),
          "--config=" + os.path.join(_REPO, "configs", "funad_synthetic.py")
          + ":runlocal,image_size=56,epochs=2",
          f"--config.dataset.root={data_root}",
          f"--workdir={workdir}"] + [
              f"--config.dataset.synthetic.{k}={v}" for k, v in _SYN.items()]


def _env(cache: str, **extra) -> dict[str, str]:
  # One CPU device per process (dicofun's entry points would otherwise give
  # each process a device per core).
  env = dict(os.environ, DICOFUN_CACHE=cache, DICOFUN_CPU_DEVICES="1", **extra)
  env.pop("XLA_FLAGS", None)
  return env


def _scores(workdir: str) -> np.ndarray:
  with open(os.path.join(workdir, "test_scores.csv")) as f:
    return np.array([float(r["score"]) for r in csv.DictReader(f)])


def _table(log: str) -> list[str]:
  return [line for line in log.splitlines() if line.startswith("| test ")]


def test_two_processes_match_single_process(tmp_path):
  data = str(tmp_path / "data")
  # Generated once up front, so no process writes data during the runs.
  synthetic.generate(data, **_SYN)
  single = str(tmp_path / "single")
  out = subprocess.run(_command(data, single), env=_env(str(tmp_path / "c1")),
                       capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]

  multi = str(tmp_path / "multi")
  port = _free_port()
  procs = [subprocess.Popen(
      _command(data, multi),
      env=_env(str(tmp_path / "c2"), DICOFUN_COORDINATOR=f"127.0.0.1:{port}",
               DICOFUN_NUM_PROCESSES="2", DICOFUN_PROCESS_ID=str(i)),
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for i in range(2)]
  logs = []
  for p in procs:
    stdout, stderr = p.communicate(timeout=600)
    assert p.returncode == 0, stderr[-3000:]
    logs.append(stdout + stderr)

  assert "Process 1 of 2" in logs[1]
  # Both processes computed the same metrics table ...
  assert _table(logs[0]) and _table(logs[0]) == _table(logs[1])
  # ... equal to the single-process run's.
  with open(os.path.join(single, "results.json")) as f:
    ref = json.load(f)["metrics"]
  with open(os.path.join(multi, "results.json")) as f:
    got = json.load(f)["metrics"]
  flat = evaluate.flat_metrics(got["test"])
  for k, v in evaluate.flat_metrics(ref["test"]).items():
    np.testing.assert_allclose(flat[k], v, atol=1e-6, err_msg=k)
  np.testing.assert_allclose(_scores(multi), _scores(single), rtol=1e-4,
                             atol=1e-6)
  # Only process 0 wrote results and figures.
  assert "Process 0 wrote results" in logs[0]
  assert "wrote results" not in logs[1]
