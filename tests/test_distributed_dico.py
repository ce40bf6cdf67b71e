"""Multi-process DiCo: two CPU processes on 127.0.0.1 with ``jax.distributed``.

A tiny DiCo run through ``experiments/main.py`` (``dico_synthetic.py:runlocal``
shrunk to 64 px, one epoch, random encoder weights so nothing is converted)
runs once as a single process with two CPU devices, holding the training set
in memory, and once as two processes with one CPU device each (gloo
collectives) that stream the training set (``max_in_memory_gb=0``: every
process loads only its rows of each global batch and all initialise the
memory from the same batch). Scoring in both goes through
``score_in_batches`` with host batches. Both processes must agree, and the
scores and metrics must equal the single-process run's to 1e-5.
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
_SYN = dict(num_train=8, num_test_good=4, num_test_anomalous=4, image_size=64)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _command(data_root: str, workdir: str, stream: bool = False
             ) -> list[str]:
  cmd = [sys.executable, os.path.join(_REPO, "experiments", "main.py"),
         "--config=" + os.path.join(_REPO, "configs", "dico_synthetic.py")
         + ":runlocal,image_size=64,epochs=1,batch_size=4,memory=4"
         ",contamination=0.2",
         f"--config.dataset.root={data_root}",
         "--config.dico.bottleneck_channels=16",
         "--config.dico.eval_batch_size=4",
         "--config.backbone.weights=random",
         f"--workdir={workdir}"] + [
             f"--config.dataset.synthetic.{k}={v}" for k, v in _SYN.items()]
  if stream:
    cmd.append("--config.dico.max_in_memory_gb=0")
  return cmd


def _env(cache: str, **extra) -> dict[str, str]:
  env = dict(os.environ, DICOFUN_CACHE=cache, DICOFUN_CPU_DEVICES="1")
  env.update(extra)
  env.pop("XLA_FLAGS", None)
  return env


def _scores(workdir: str) -> np.ndarray:
  with open(os.path.join(workdir, "test_scores.csv")) as f:
    return np.array([float(r["score"]) for r in csv.DictReader(f)])


def _table(log: str) -> list[str]:
  return [line for line in log.splitlines() if line.startswith("| test ")]


def _metrics(workdir: str) -> dict:
  with open(os.path.join(workdir, "results.json")) as f:
    return json.load(f)["metrics"]


def test_two_streaming_processes_match_single_process(tmp_path):
  data = str(tmp_path / "data")
  synthetic.generate(data, **_SYN)
  single = str(tmp_path / "single")
  port = _free_port()
  multi = str(tmp_path / "multi")
  # The single run and the two processes run at the same time (3 CPU
  # processes) to keep the test short. The single run has two devices, so
  # both split every batch the same way.
  procs = [subprocess.Popen(
      _command(data, single), env=_env(str(tmp_path / "c1"),
                                       DICOFUN_CPU_DEVICES="2"),
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)]
  procs += [subprocess.Popen(
      _command(data, multi, stream=True),
      env=_env(str(tmp_path / "c2"), DICOFUN_COORDINATOR=f"127.0.0.1:{port}",
               DICOFUN_NUM_PROCESSES="2", DICOFUN_PROCESS_ID=str(i)),
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for i in range(2)]
  logs = []
  for p in procs:
    stdout, stderr = p.communicate(timeout=600)
    assert p.returncode == 0, stderr[-3000:]
    logs.append(stdout + stderr)

  assert "Process 1 of 2" in logs[2]
  # Both processes computed the same metrics table ...
  assert _table(logs[1]) and _table(logs[1]) == _table(logs[2])
  # ... equal to the single-process run's.
  ref, got = _metrics(single), _metrics(multi)
  # Contamination 0.2: the transductive view scores the training set too.
  assert set(ref) == set(got) == {"test", "test_overlap", "transductive"}
  for view in ref:
    flat = evaluate.flat_metrics(got[view])
    for k, v in evaluate.flat_metrics(ref[view]).items():
      np.testing.assert_allclose(flat[k], v, atol=1e-5,
                                 err_msg=f"{view}.{k}")
  np.testing.assert_allclose(_scores(multi), _scores(single), rtol=1e-5,
                             atol=1e-5)
  assert "Process 0 wrote results" in logs[1]
  assert "wrote results" not in logs[2]
