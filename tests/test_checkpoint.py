"""Orbax checkpoints: resume and the self-contained inference checkpoint."""

import ml_collections
import numpy as np
import pytest

from dicofun import checkpoint


def _state(v):
  return {"params": {"w": np.full((3, 2), v, np.float32)},
          "step": np.int32(v), "rng": np.array([1, 2], np.uint32)}


def test_train_checkpointer_resumes_latest_and_keeps_best(tmp_path):
  ckpt = checkpoint.TrainCheckpointer(str(tmp_path), every=2)
  state, start = ckpt.restore_or(_state(0))
  assert start == 0
  scores = {2: 0.9, 4: 0.5, 6: 0.7}
  for epoch in range(1, 7):
    ckpt.maybe_save(epoch, _state(epoch), metrics={"score": scores.get(epoch, 0)})
  ckpt.close()
  again = checkpoint.TrainCheckpointer(str(tmp_path), every=2)
  state, start = again.restore_or(_state(0))
  assert start == 6
  np.testing.assert_array_equal(state["params"]["w"], np.full((3, 2), 6.0))
  # Odd epochs are not saved; the best (epoch 2) and the latest are kept.
  assert sorted(again._manager.all_steps()) == [2, 6]
  again.close()


def test_inference_checkpoint_roundtrip(tmp_path):
  cfg = ml_collections.ConfigDict({"method": "patchcore", "seed": 3,
                                   "dataset": {"image_size": 64}})
  bank = np.random.default_rng(0).normal(size=(10, 4)).astype(np.float32)
  checkpoint.save_inference(str(tmp_path), state={"bank": bank},
                            config=cfg, threshold=1.5, meta={"rule": "p99"})
  state, cfg2, meta = checkpoint.load_inference(str(tmp_path))
  np.testing.assert_array_equal(state["bank"], bank)
  assert cfg2.dataset.image_size == 64 and cfg2.method == "patchcore"
  assert meta["threshold"] == 1.5 and meta["rule"] == "p99"


def test_missing_inference_checkpoint_names_the_path(tmp_path):
  with pytest.raises(FileNotFoundError, match=str(tmp_path)):
    checkpoint.load_inference(str(tmp_path))
