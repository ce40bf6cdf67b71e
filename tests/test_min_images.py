"""Each method's minimum training-image count, checked before any work
(issue 25 #9): ``dicofun inspect`` and ``dicofun run`` stop with one line
naming the method, the count and the minimum."""

import os
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

from dicofun import api
from dicofun import features
from dicofun import inspection
from dicofun import protocol
from dicofun import runner
from dicofun.data import records as records_lib
from configs import softpatch_synthetic

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _folder(root, n):
  root.mkdir()
  rng = np.random.default_rng(0)
  for i in range(n):
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), np.uint8)).save(
        root / f"{i}.png")
  return root


@pytest.fixture
def no_features(monkeypatch):
  """Feature extraction, the first work of the bank methods, must not run."""
  calls = []

  def load_features(config, records, **kw):
    del config, kw
    calls.append(len(records))
    raise AssertionError("features extracted before the image count check")

  monkeypatch.setattr(features, "load_features", load_features)
  return calls


@pytest.mark.parametrize("method,n,minimum", [
    ("softpatch", 2, 7), ("softpatch", 6, 7), ("patchcore", 1, 2),
    ("funad", 2, 3)])
def test_inspect_of_too_few_images_stops_before_any_work(
    method, n, minimum, tmp_path, no_features):
  root = _folder(tmp_path / "few", n)
  config = inspection.inspect_config(method, image_size=16)
  with pytest.raises(ValueError) as e:
    inspection.inspect_folder(str(root), out_dir=str(tmp_path / "out"),
                              config=config)
  assert str(e.value) == (
      f"{method} needs at least {minimum} training images, got {n}")
  assert no_features == []
  assert not os.path.exists(tmp_path / "out" / "scores.csv")


def test_each_method_states_its_minimum():
  from dicofun import methods  # pylint: disable=g-import-not-at-top
  got = {m: methods.min_train_images(inspection.inspect_config(m))
         for m in ("softpatch", "patchcore", "funad", "dico")}
  # SoftPatch: LOF with k = 6 neighbours among the other images; PatchCore:
  # leave-one-out needs another image; FUN-AD: ⌊ρ·|C|⌋ >= 1 needs
  # |C| >= 1/ρ = 2 candidates besides the top-scored image.
  assert got == {"softpatch": 7, "patchcore": 2, "funad": 3, "dico": 1}
  config = inspection.inspect_config("softpatch")
  config.softpatch.lof_k = 2
  assert methods.min_train_images(config) == 3
  config = inspection.inspect_config("patchcore")
  config.patchcore.transductive = False
  assert methods.min_train_images(config) == 1
  config = inspection.inspect_config("funad")
  config.funad.rho = 0.25
  assert methods.min_train_images(config) == 5


def test_run_with_too_few_training_images_stops_before_any_work(
    tmp_path, monkeypatch, no_features):
  config = softpatch_synthetic.get_config("runlocal,image_size=32")
  train = [records_lib.Record(f"/x/good_{i}.png", None, 0, "good", "train")
           for i in range(3)]
  test = [records_lib.Record("/x/t.png", None, 0, "good", "test")]
  monkeypatch.setattr(protocol, "prepare_data", lambda config, workdir:
                      api.RunData(train=train, test=test, category="x"))
  loaded = []
  monkeypatch.setattr(protocol, "load_eval_arrays",
                      lambda *a, **kw: loaded.append(1))
  with pytest.raises(ValueError, match=r"^softpatch needs at least 7 "
                     r"training images, got 3$"):
    runner.train_and_evaluate(config, str(tmp_path / "run"))
  assert no_features == [] and loaded == []


def test_cli_inspect_of_two_images_is_one_line(tmp_path):
  root = _folder(tmp_path / "two", 2)
  env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu")
  proc = subprocess.run(
      [sys.executable, "-m", "dicofun", "inspect", str(root),
       f"--out={tmp_path / 'out'}", "--image_size=32"],
      capture_output=True, text=True, timeout=300, cwd=str(tmp_path), env=env)
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert proc.stderr.strip().splitlines()[-1] == (
      "error: softpatch needs at least 7 training images, got 2")
  assert "Traceback" not in proc.stderr
