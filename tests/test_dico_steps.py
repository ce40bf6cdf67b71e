"""DiCo's budget in optimiser steps (issue 28): ``training.budget`` rounds."""

import numpy as np

from dicofun import training
from dicofun.methods.dico import method as dico
from tests import test_dico as td


def _batches(train, bs):
  def epoch_batches(epoch, start, stop):
    for idx in dico.epoch_batch_indices(len(train), bs, epoch)[start:stop]:
      yield train[idx]
  return epoch_batches


def _train(train, cfg, *, bs=8, workdir=None, epoch_batches=None):
  enc = td.tiny_encoder()
  return dico.train(cfg, encoder=enc,
                    epoch_batches=epoch_batches or _batches(train, bs),
                    first_batch=train[:bs], seed=0, workdir=workdir,
                    steps_per_epoch=len(train) // bs)


def test_budget_rounds_and_floor():
  b = training.budget(iters_per_epoch=40, epochs=30, steps=400, min_epochs=2,
                      eval_every=100, checkpoint_every=50)
  assert (b.total_steps, b.round_steps, b.rounds, b.eval_every,
          b.checkpoint_every, b.in_steps) == (400, 50, 8, 2, 1, True)
  # A large category: the floor of 2 passes wins, rounded up to whole rounds.
  b = training.budget(iters_per_epoch=230, epochs=30, steps=400, min_epochs=2,
                      eval_every=100, checkpoint_every=50)
  assert (b.total_steps, b.rounds) == (500, 10)
  # Epochs (the faithful path): a round per epoch.
  b = training.budget(iters_per_epoch=40, epochs=3, eval_every=1,
                      checkpoint_every=1)
  assert (b.total_steps, b.round_steps, b.rounds, b.in_steps) == (
      120, 40, 3, False)


def test_small_and_large_category_train_the_same_steps():
  rng = np.random.default_rng(0)
  small, large = td.textures(rng, 16), td.textures(rng, 48)
  cfg = td.small_config(steps=9, min_epochs=0, eval_every=0,
                        checkpoint_every=3, lr_schedule="cosine",
                        warmup_steps=2)
  out = [_train(x, cfg)[1] for x in (small, large)]
  for info in out:
    assert info["steps"] == 9 and info["budget"].rounds == 3
    assert [r["step"] for r in info["history"]] == [3, 6, 9]
    assert info["compilations"] == 1
  # 9 steps are 4.5 passes over 16 images and 1.5 over 48.
  assert out[0]["epochs"] == 4.5 and out[1]["epochs"] == 1.5
  # The floor: at least 2 passes over the large one (12 steps).
  cfg.min_epochs = 2
  assert _train(large, cfg)[1]["steps"] == 12


def test_resume_mid_run_gives_identical_results(tmp_path):
  rng = np.random.default_rng(1)
  train = td.textures(rng, 16)  # 2 batches per epoch.
  # Rounds of 3 steps cross the epoch boundaries; a cosine schedule.
  cfg = td.small_config(steps=12, min_epochs=0, eval_every=0,
                        checkpoint_every=3, lr_schedule="cosine",
                        warmup_steps=2)
  ref_vars, ref = _train(train, cfg, workdir=str(tmp_path / "ref"))

  class Killed(Exception):
    pass

  seen = []
  plain = _batches(train, 8)

  def dying(epoch, start, stop):
    for pos, batch in enumerate(plain(epoch, start, stop), start):
      if (epoch, pos) == (3, 1):  # Step 8: after the checkpoint at step 6.
        raise Killed
      seen.append((epoch, pos))
      yield batch

  work = str(tmp_path / "resumed")
  try:
    _train(train, cfg, workdir=work, epoch_batches=dying)
  except Killed:
    pass
  assert seen == [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 1), (3, 0)]
  got_vars, got = _train(train, cfg, workdir=work)
  assert got["resumed_from_round"] == 2
  assert [r["step"] for r in got["history"]] == [3, 6, 9, 12]
  for a, b in zip(ref["history"], got["history"]):
    assert a.keys() == b.keys()
    for k in a:
      assert a[k] == b[k], k
  for a, b in zip(*(training.flatten(v).values()
                    for v in (ref_vars, got_vars))):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
