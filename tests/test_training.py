"""The shared training loop (dicofun.training) on a toy state.

The toy "training" adds ``epoch + 1`` to a counter each epoch, so after
``e`` epochs the counter is e(e+1)/2; the toy evaluation returns hand-chosen
AUROCs per epoch, so the oracle epoch is known in advance.
"""

import io
import json
import os

import numpy as np
from PIL import Image
import pytest

from dicofun import checkpoint
from dicofun import summary
from dicofun import training
from configs import funad_synthetic

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


# ---------------------------------------------------------------- issue #13


def test_history_metrics_hand_values():
  # Image AUROC: positives {0.3, 0.8} vs negatives {0.1, 0.35}: 3 of 4 pairs.
  labels = np.array([0, 1, 0, 1])
  scores = np.array([0.1, 0.3, 0.35, 0.8])
  # Stride 2 keeps pixels (0,0), (0,2), (2,0), (2,2) of each 4×4 map.
  masks = np.zeros((4, 4, 4))
  masks[1, 0, 0] = 1  # One anomalous kept pixel...
  masks[1, 1, 1] = 1  # ... and one that the stride drops.
  maps = np.zeros((4, 4, 4))
  maps[1, 0, 0] = 0.5  # Anomalous kept pixel: 0.5.
  maps[0, 0, 2] = 0.7  # One normal kept pixel above it.
  maps[1, 1, 1] = -9.0  # Dropped: does not count.
  out = training.history_metrics(scores, maps, labels, masks, stride=2)
  assert out["image_auroc"] == pytest.approx(0.75)
  # 16 kept pixels, 1 anomalous (0.5); normals: one 0.7, fourteen 0.0.
  assert out["pixel_auroc"] == pytest.approx(14 / 15)
  assert "pixel_auroc" not in training.history_metrics(
      scores, maps, labels, np.zeros((4, 4, 4)), stride=2)


def _fp(**changes):
  cfg = funad_synthetic.get_config("runlocal,preset=paper")
  for key, value in changes.items():
    node = cfg
    *path, leaf = key.split(".")
    for p in path:
      node = node[p]
    node[leaf] = value
  return training.training_fingerprint(cfg, "funad")


def test_fingerprint_covers_training_fields_only():
  base = _fp()
  assert base["values"]["dataset.contamination"] == 0.0
  assert base["values"]["funad.lr"] == 2e-5
  assert base["values"]["seed"] == 0
  assert base["values"]["backbone.layer"] == 8
  # Eval / logging / schedule fields and the epoch count do not count.
  for key, value in [("eval.num_figures", 0), ("eval.tensorboard", False),
                     ("funad.eval_every", 7), ("funad.checkpoint_every", 9),
                     ("funad.epochs", 99), ("restart", True),
                     ("dataset.num_workers", 1)]:
    assert _fp(**{key: value})["hash"] == base["hash"], key
  for key, value in [("dataset.contamination", 0.1), ("funad.lr", 1e-3),
                     ("seed", 3), ("backbone.name", "other"),
                     ("dataset.contamination_seed", 1),
                     ("dataset.image_size", 56), ("dataset.category", "x"),
                     ("backbone.norm_intermediate", False),
                     ("funad.d_norm", "rank"), ("funad.bank_patches", 64)]:
    changed = _fp(**{key: value})
    assert changed["hash"] != base["hash"], key
    assert changed["values"][key] == value


def test_resume_under_another_config_is_refused_and_restart_starts_over(
    tmp_path):
  wd = str(tmp_path)
  old = _fp()
  training.run_loop(state=_state(), epochs=2, epoch_fn=_epoch_fn,
                    workdir=wd, fingerprint=old)
  new = _fp(**{"dataset.contamination": 0.1, "funad.lr": 1e-3})
  with pytest.raises(training.ResumeMismatchError) as err:
    training.run_loop(state=_state(), epochs=4, epoch_fn=_epoch_fn,
                      workdir=wd, fingerprint=new)
  msg = str(err.value)
  assert "dataset.contamination: 0.0 (checkpoint) vs 0.1 (now)" in msg
  assert "funad.lr: 2e-05 (checkpoint) vs 0.001 (now)" in msg
  assert "seed" not in msg.split("config, so")[1].split(". Either")[0]
  assert "--workdir" in msg and "--config.restart=True" in msg
  assert os.path.join(wd, "checkpoints") in msg
  # The same config resumes.
  calls = []

  def counting(state, epoch):
    calls.append(epoch)
    return _epoch_fn(state, epoch)

  training.run_loop(state=_state(), epochs=3, epoch_fn=counting, workdir=wd,
                    fingerprint=old)
  assert calls == [2]
  # restart deletes the checkpoints and trains from scratch.
  calls.clear()
  out = training.run_loop(state=_state(), epochs=2, epoch_fn=counting,
                          workdir=wd, fingerprint=new, restart=True)
  assert calls == [0, 1] and out.start_epoch == 0
  np.testing.assert_array_equal(out.state["w"], [3.0, 3.0])
  with open(os.path.join(wd, "checkpoints", "fingerprint.json")) as f:
    assert json.load(f) == new


def test_checkpoint_past_the_configured_epochs_is_refused(tmp_path):
  training.run_loop(state=_state(), epochs=3, epoch_fn=_epoch_fn,
                    workdir=str(tmp_path))
  with pytest.raises(training.ResumeMismatchError, match="epoch 3, past the 2"):
    training.run_loop(state=_state(), epochs=2, epoch_fn=_epoch_fn,
                      workdir=str(tmp_path))


def _corrupt(step_dir):
  for root, _, files in os.walk(step_dir):
    for name in files:
      with open(os.path.join(root, name), "r+b") as f:
        size = os.path.getsize(f.name)
        f.write(b"\xff" * max(size // 2, 1))
        f.truncate(max(size // 2, 1))


def test_corrupted_newest_checkpoint_falls_back_to_the_previous(tmp_path,
                                                               caplog):
  wd = str(tmp_path)
  ckdir = os.path.join(wd, "checkpoints", "train_ckpt")
  _loop(workdir=wd, epochs=3)
  assert sorted(os.listdir(ckdir)) == ["2", "3"]  # The latest 2 are kept.
  _corrupt(os.path.join(ckdir, "3"))
  calls = []

  def counting(state, epoch):
    calls.append(epoch)
    return _epoch_fn(state, epoch)

  with caplog.at_level("ERROR"):
    out = _loop(workdir=wd, epochs=3, epoch_fn=counting)
  assert calls == [2]  # Resumed after epoch 2, re-ran epoch 3.
  assert out.start_epoch == 2
  assert os.path.join(ckdir, "3") in caplog.text
  assert "corrupted" in caplog.text
  full = _loop(epochs=3)
  np.testing.assert_array_equal(out.state["w"], full.state["w"])
  assert out.history == full.history
  assert os.path.isdir(os.path.join(ckdir + ".corrupt", "3"))
  assert sorted(os.listdir(ckdir)) == ["2", "3"]  # Epoch 3 saved again.


def test_no_restorable_checkpoint_is_a_clear_error(tmp_path):
  wd = str(tmp_path)
  ckdir = os.path.join(wd, "checkpoints", "train_ckpt")
  _loop(workdir=wd, epochs=2)
  for step in os.listdir(ckdir):
    _corrupt(os.path.join(ckdir, step))
  with pytest.raises(checkpoint.CheckpointRestoreError) as err:
    _loop(workdir=wd, epochs=3)
  assert ckdir in str(err.value) and "--config.restart=True" in str(err.value)


def test_history_is_written_before_the_checkpoint(tmp_path, monkeypatch):
  wd = str(tmp_path)

  def die(self, epoch, state, **kwargs):
    raise RuntimeError("killed while saving")

  monkeypatch.setattr(checkpoint.TrainCheckpointer, "maybe_save", die)
  with pytest.raises(RuntimeError, match="killed while saving"):
    _loop(workdir=wd, epochs=3)
  with open(os.path.join(wd, "checkpoints", "history.json")) as f:
    assert [r["epoch"] for r in json.load(f)] == [1]


def test_old_layout_checkpoint_is_named_not_silently_ignored(tmp_path,
                                                            caplog):
  os.makedirs(tmp_path / "train_ckpt" / "3")
  with caplog.at_level("WARNING"):
    out = _loop(workdir=str(tmp_path), epochs=1)
  assert out.start_epoch == 0
  assert str(tmp_path / "train_ckpt") in caplog.text
  assert "old layout" in caplog.text


# ---------------------------------------------------------------- issue #15


class _Clock:
  """time.time() that advances 2.5 s per call: every epoch takes 2.5 s."""

  def __init__(self):
    self.now = 0.0

  def time(self):
    self.now += 2.5
    return self.now


def test_tensorboard_events_are_written_during_training(tmp_path,
                                                        monkeypatch):
  monkeypatch.setattr(training, "time", _Clock())
  logdir = str(tmp_path / "tb")
  figure = np.zeros((3, 4, 3), np.uint8)
  figure[0, 0] = (200, 100, 50)
  seen = []

  def epoch_fn(state, epoch):
    # What a user running `tensorboard --logdir` sees while epoch+1 runs.
    seen.append(sorted(s for s, _ in summary.read_scalars(logdir).get(
        "history/loss", [])))
    return _epoch_fn(state, epoch)

  def evaluate(state, epoch):
    out = _evaluate(state, epoch)
    out[training.FIGURE] = figure + epoch
    return out

  out = training.run_loop(
      state=_state(), epochs=4, epoch_fn=epoch_fn, evaluate_fn=evaluate,
      eval_every=2, desc="toy", summary_dir=logdir, images_per_epoch=10)
  assert seen == [[], [1], [1, 2], [1, 2, 3]]
  scalars = summary.read_scalars(logdir)
  assert scalars["history/loss"] == [(1, 1.0), (2, 0.5),
                                     (3, pytest.approx(1 / 3)), (4, 0.25)]
  assert scalars["history/test_image_auroc"] == [
      (2, pytest.approx(0.7)), (4, pytest.approx(0.95))]
  assert scalars["history/test_pixel_auroc"] == [
      (2, pytest.approx(0.9)), (4, pytest.approx(0.65))]
  # 10 images per epoch, each epoch 2.5 s on the fake clock: 4 images/s.
  assert scalars["speed/images_per_second"] == [(e, 4.0) for e in (1, 2, 3, 4)]
  assert scalars["speed/epoch_seconds"] == [(e, 2.5) for e in (1, 2, 3, 4)]
  assert "history/test_scores" not in scalars  # Lists are not scalars.
  images = summary.read_images(logdir)[training.FIGURE_TAG]
  assert [s for s, _ in images] == [2, 4]
  for step, png in images:
    np.testing.assert_array_equal(
        np.asarray(Image.open(io.BytesIO(png))), figure + step)
  # The figure stays out of the history.
  assert all(training.EVAL_PREFIX + training.FIGURE not in r
             for r in out.history)
  assert out.history[1]["test_image_auroc"] == 0.7


def test_no_summary_dir_writes_no_events(tmp_path):
  _loop(workdir=str(tmp_path), epochs=1)
  assert not os.path.exists(tmp_path / "tensorboard")


def test_figure_indices_are_the_first_anomalies_and_normals():
  labels = np.array([0, 1, 0, 0, 1, 1])
  np.testing.assert_array_equal(training.figure_indices(labels), [1, 4, 0, 2])
  np.testing.assert_array_equal(training.figure_indices(labels, k=1), [1, 0])
  assert training.figure_indices(np.zeros(0)).shape == (0,)


def test_checkpoint_fields_that_no_longer_count_do_not_block_resume(tmp_path):
  wd = str(tmp_path)
  now = _fp()
  training.run_loop(state=_state(), epochs=2, epoch_fn=_epoch_fn, workdir=wd,
                    fingerprint=now)
  path = os.path.join(wd, "checkpoints", "fingerprint.json")
  # As written by an older dicofun that still counted funad.kappa (a
  # scoring field, now in _NOT_TRAINING) and a field that still counts.
  for extra, resumes in (({"funad.kappa": 3.0}, True),
                         ({"funad.other_knob": 1.0}, False)):
    stored = {"hash": "older", "values": {**now["values"], **extra}}
    with open(path, "w") as f:
      json.dump(stored, f)
    calls = []

    def counting(state, epoch, calls=calls):
      calls.append(epoch)
      return _epoch_fn(state, epoch)

    if resumes:
      training.run_loop(state=_state(), epochs=3, epoch_fn=counting,
                        workdir=wd, fingerprint=now)
      assert calls == [2]
    else:
      with pytest.raises(training.ResumeMismatchError, match="other_knob"):
        training.run_loop(state=_state(), epochs=4, epoch_fn=counting,
                          workdir=wd, fingerprint=now)
