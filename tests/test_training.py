"""The shared training loop (dicofun.training) on a toy state.

The toy "training" adds ``epoch + 1`` to a counter each epoch, so after
``e`` epochs the counter is e(e+1)/2; the toy evaluation returns hand-chosen
AUROCs per epoch, so the oracle epoch is known in advance.
"""

import json
import os

import numpy as np
import pytest

from dicofun import training

# Epoch → (image AUROC, pixel AUROC). Mean: 0.7, 0.8, 0.75, 0.8 → epoch 2
# (the first maximum; image AUROC alone would pick epoch 4).
_AUROCS = {1: (0.6, 0.8), 2: (0.7, 0.9), 3: (0.9, 0.6), 4: (0.95, 0.65)}


def _state():
  return {"w": np.zeros((2,), np.float32), "opt": (np.int32(0),)}


def _epoch_fn(state, epoch):
  w = state["w"] + (epoch + 1)
  return {"w": w, "opt": (state["opt"][0] + 1,)}, {"loss": 1.0 / (epoch + 1)}


def _evaluate(state, epoch):
  del state
  image, pixel = _AUROCS[epoch]
  return {"image_auroc": image, "pixel_auroc": pixel, "scores": [epoch, 0.5]}


def _loop(workdir=None, epochs=4, eval_every=1, checkpoint_every=1,
          epoch_fn=_epoch_fn):
  return training.run_loop(
      state=_state(), epochs=epochs, epoch_fn=epoch_fn, evaluate_fn=_evaluate,
      workdir=workdir, checkpoint_every=checkpoint_every,
      eval_every=eval_every, desc="toy")


def test_history_rows_and_oracle_by_mean_of_image_and_pixel_auroc():
  out = _loop()
  np.testing.assert_array_equal(out.state["w"], [10.0, 10.0])  # 1+2+3+4.
  assert out.state["opt"][0] == 4
  assert [r["epoch"] for r in out.history] == [1, 2, 3, 4]
  assert out.history[1] == {"epoch": 2, "loss": 0.5, "test_image_auroc": 0.7,
                            "test_pixel_auroc": 0.9, "test_scores": [2, 0.5]}
  assert out.oracle["epoch"] == 2
  assert out.oracle["selection_value"] == pytest.approx(0.8)
  assert out.oracle["image_auroc"] == 0.7
  assert out.oracle["pixel_auroc"] == 0.9
  assert "TEST-SELECTED" in out.oracle["note"]
  # Scalar history (what goes to results.json / TensorBoard) drops lists.
  assert out.scalar_history()[1] == {"epoch": 2, "loss": 0.5,
                                     "test_image_auroc": 0.7,
                                     "test_pixel_auroc": 0.9}


def test_oracle_falls_back_to_image_auroc_without_pixel_auroc():
  history = [{"epoch": 1, "test_image_auroc": 0.6},
             {"epoch": 2, "test_image_auroc": 0.8},
             {"epoch": 3, "loss": 0.1}]
  assert training.select_oracle(history)["epoch"] == 2
  assert training.select_oracle([{"epoch": 1, "loss": 0.3}]) is None


@pytest.mark.parametrize("eval_every,evaluated", [(0, [4]), (3, [3, 4]),
                                                  (2, [2, 4])])
def test_eval_every_schedule(eval_every, evaluated):
  out = _loop(eval_every=eval_every)
  assert [r["epoch"] for r in out.history
          if "test_image_auroc" in r] == evaluated
  assert [r["epoch"] for r in out.history] == [1, 2, 3, 4]


def test_checkpoint_layout_and_resume_equal_uninterrupted(tmp_path):
  wd = str(tmp_path)
  part = _loop(workdir=wd, epochs=2)
  assert part.start_epoch == 0
  ckdir = os.path.join(wd, "checkpoints")
  assert os.path.isdir(os.path.join(ckdir, "train_ckpt", "2"))
  with open(os.path.join(ckdir, "history.json")) as f:
    assert [r["epoch"] for r in json.load(f)] == [1, 2]

  calls = []

  def counting(state, epoch):
    calls.append(epoch)
    return _epoch_fn(state, epoch)

  resumed = _loop(workdir=wd, epochs=4, epoch_fn=counting)
  assert calls == [2, 3]  # Epochs 1-2 came from the checkpoint.
  assert resumed.start_epoch == 2
  full = _loop(epochs=4)
  np.testing.assert_array_equal(resumed.state["w"], full.state["w"])
  assert int(resumed.state["opt"][0]) == 4
  assert resumed.history == full.history
  assert resumed.oracle == full.oracle
