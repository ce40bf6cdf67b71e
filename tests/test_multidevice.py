"""PatchCore, FUN-AD and DiCo on 8 fake CPU devices equal the 1-device run.

Each setting runs in a child process (the device count is fixed when JAX
starts): ``XLA_FLAGS=--xla_force_host_platform_device_count=8`` versus one
device, same configs and seed, on a small synthetic dataset. Tolerances:
PatchCore is exact up to float summation order (1e-5 relative on scores, 1e-4 on metrics); FUN-AD's and
DiCo's data-parallel gradients are summed in a different order, which after a
few optimiser steps moves scores slightly, so their image scores must agree to
2e-2 relative and the metrics to 0.06 (one rank swap among 8 test images moves
an AUROC by 1/16).
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from dicofun.data import synthetic

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_SYN = dict(num_train=16, num_test_good=4, num_test_anomalous=4, image_size=64)
_RUNS = {
    "patchcore": "patchcore_synthetic.py:image_size=64",
    "funad": "funad_synthetic.py:runlocal,image_size=56,epochs=2",
    "dico": "dico_synthetic.py:runlocal,image_size=64,epochs=2",
}

_CHILD = r"""
import json, os, sys
sys.path.insert(0, {repo!r})
import jax
from dicofun import runner
from ml_collections import config_flags
import importlib.util
out = {{}}
for method, spec in {runs!r}.items():
  path, _, arg = spec.partition(":")
  s = importlib.util.spec_from_file_location("c_" + method,
                                             os.path.join({repo!r}, "configs", path))
  m = importlib.util.module_from_spec(s); s.loader.exec_module(m)
  cfg = m.get_config(arg)
  cfg.dataset.root = {data!r}
  for k, v in {syn!r}.items():
    cfg.dataset.synthetic[k] = v
  cfg.eval.num_figures = 0
  wd = os.path.join({work!r}, method)
  metrics = runner.train_and_evaluate(cfg, wd)
  scores = [float(l.split(",")[-1]) for l in open(os.path.join(wd, "test_scores.csv")).read().splitlines()[1:]]
  out[method] = dict(metrics=metrics["test"], scores=scores, devices=jax.device_count())
print("RESULT" + json.dumps(out))
"""


def _run(tmp_path, data, devices: int) -> dict:
  work = str(tmp_path / f"dev{devices}")
  env = dict(os.environ, DICOFUN_CACHE=str(tmp_path / f"cache{devices}"))
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  # FUN-AD keeps its data mesh on these CPU devices (it would train on one).
  env["DICOFUN_FUNAD_CPU_MESH"] = "1"
  code = _CHILD.format(repo=_REPO, runs=_RUNS, data=data, syn=_SYN, work=work)
  out = subprocess.run([sys.executable, "-c", code], env=env,
                       capture_output=True, text=True, timeout=900)
  assert out.returncode == 0, out.stderr[-4000:]
  line = [l for l in out.stdout.splitlines() if l.startswith("RESULT")][-1]
  return json.loads(line[len("RESULT"):])


@pytest.fixture(scope="module")
def results(tmp_path_factory):
  tmp_path = tmp_path_factory.mktemp("multidevice")
  data = str(tmp_path / "data")
  synthetic.generate(data, **_SYN)
  return _run(tmp_path, data, 1), _run(tmp_path, data, 8)


# The trained methods' scores agree to 2 % across device counts (float
# reduction order in training); on this tiny test set (4 normal, 4 anomalous
# images: 16 pairs) a near-tie may swap one pair, 1/16 of image AUROC.
_ONE_PAIR = 1 / 16 + 1e-9


@pytest.mark.parametrize("method,score_rtol,metric_atol", [
    ("patchcore", 1e-5, 1e-4), ("funad", 2e-2, _ONE_PAIR),
    ("dico", 2e-2, _ONE_PAIR)])
def test_eight_devices_match_one(results, method, score_rtol, metric_atol):
  one, eight = results[0][method], results[1][method]
  assert one["devices"] == 1 and eight["devices"] == 8
  np.testing.assert_allclose(eight["scores"], one["scores"], rtol=score_rtol,
                             atol=1e-6)
  # Pooled metrics (one swapped pair among 2-4 per defect type would move
  # by_defect by 1/4; the scores above bound it anyway).
  for k, v in one["metrics"].items():
    if isinstance(v, dict):
      continue
    np.testing.assert_allclose(eight["metrics"][k], v, atol=metric_atol,
                               err_msg=f"{method} {k}")
