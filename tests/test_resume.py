"""Interrupted training resumes from its last checkpoint to the same result.

For FUN-AD and DiCo: one run is interrupted right after its epoch-1
checkpoint (an exception raised from inside the checkpointer, as a killed job
would stop), then the same command runs again in the same workdir. It must
resume (not restart) and end with the same parameters, scores and metrics as
an uninterrupted run with the same seed.
"""

import csv
import os

import jax
import numpy as np
import pytest

from dicofun import checkpoint
from dicofun import evaluate
from dicofun import runner
from dicofun.data import synthetic
from configs import dico_synthetic
from configs import funad_synthetic

_SYN = dict(num_train=16, num_test_good=4, num_test_anomalous=4, image_size=64)


class _Interrupted(Exception):
  pass


def _config(method, data):
  if method == "funad":
    cfg = funad_synthetic.get_config("runlocal,image_size=56,epochs=3")
    cfg.funad.checkpoint_every = 1
  else:
    cfg = dico_synthetic.get_config("runlocal,image_size=64,epochs=3")
    cfg.dico.checkpoint_every = 1
  cfg.dataset.root = data
  for k, v in _SYN.items():
    cfg.dataset.synthetic[k] = v
  return cfg


def _scores(workdir):
  with open(os.path.join(workdir, "test_scores.csv")) as f:
    return np.array([float(r["score"]) for r in csv.DictReader(f)])


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("resume_data"))
  synthetic.generate(root, **_SYN)
  return root


@pytest.mark.parametrize("method", ["funad", "dico"])
def test_interrupted_run_resumes_to_the_same_result(method, data, tmp_path,
                                                    monkeypatch):
  monkeypatch.setenv("DICOFUN_CACHE", str(tmp_path / "cache"))
  full = str(tmp_path / "full")
  ref_metrics = runner.train_and_evaluate(_config(method, data), full)

  resumed = str(tmp_path / "resumed")
  original = checkpoint.TrainCheckpointer.maybe_save
  saved_epochs = []

  def save_then_die(self, epoch, state, *args, **kwargs):
    out = original(self, epoch, state, *args, **kwargs)
    saved_epochs.append(epoch)
    if epoch == 1:
      raise _Interrupted()
    return out

  with monkeypatch.context() as m:
    m.setattr(checkpoint.TrainCheckpointer, "maybe_save", save_then_die)
    with pytest.raises(_Interrupted):
      runner.train_and_evaluate(_config(method, data), resumed)
  assert saved_epochs == [1]
  assert not os.path.exists(os.path.join(resumed, "results.json"))

  seen = []
  def record(self, epoch, state, *args, **kwargs):
    seen.append(epoch)
    return original(self, epoch, state, *args, **kwargs)
  monkeypatch.setattr(checkpoint.TrainCheckpointer, "maybe_save", record)
  metrics = runner.train_and_evaluate(_config(method, data), resumed)
  assert seen == [2, 3]  # Resumed after epoch 1, did not start over.

  np.testing.assert_allclose(_scores(resumed), _scores(full), rtol=1e-6,
                             atol=1e-7)
  got = evaluate.flat_metrics(metrics["test"])
  for k, v in evaluate.flat_metrics(ref_metrics["test"]).items():
    assert got[k] == pytest.approx(v, abs=1e-9), k
  state_full, _, _ = checkpoint.load_inference(full)
  state_resumed, _, _ = checkpoint.load_inference(resumed)
  flat_full = jax.tree_util.tree_leaves_with_path(state_full)
  flat_resumed = dict(jax.tree_util.tree_leaves_with_path(state_resumed))
  assert flat_full
  for path, leaf in flat_full:
    np.testing.assert_allclose(np.asarray(flat_resumed[path]),
                               np.asarray(leaf), rtol=1e-6, atol=1e-7,
                               err_msg=str(path))
