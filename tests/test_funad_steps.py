"""FUN-AD's budget in optimiser steps (issue 27): the default preset trains
the same number of iterations whatever the training-set size, in rounds that
resume bit-identically; the paper preset still counts epochs."""

import functools
import json
import os
import shutil

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from dicofun import training
from dicofun import viz
from dicofun.methods.funad import config as funad_config
from dicofun.methods.funad import method as funad
from dicofun.methods.funad import model as model_lib
from dicofun.methods.funad import step as step_lib


def _features(n, seed=0, h=4, w=4, d=16):
  """Tiny token features: Gaussian around one centre, 10 % shifted images."""
  rng = np.random.default_rng(seed)
  x = (np.random.default_rng(99).normal(size=(h * w, d))[None] * 0.5
       + 0.3 * rng.normal(size=(n, h * w, d)))
  x[: max(1, n // 10), :3] += 2.5
  return x.reshape(n, h, w, d).astype(np.float32)


def _config(preset="default", **funad_fields):
  cfg = ml_collections.ConfigDict()
  cfg.seed = 0
  cfg.dataset = ml_collections.ConfigDict(dict(image_size=16))
  cfg.funad = funad_config.default_config(preset)
  cfg.funad.update(dict(hidden=(32, 8), score_chunk=8, knn_chunk=256,
                        bank_patches=64, batch_patches=8, warmup_steps=5))
  cfg.funad.update(funad_fields)
  return cfg


def test_budget_counts_steps_with_a_floor_and_whole_rounds():
  f = _config(steps=60, min_epochs=2, eval_every=20, checkpoint_every=20,
              batch_size=32).funad
  small, large = funad.budget(f, 60), funad.budget(f, 900)
  assert (small.iters_per_epoch, large.iters_per_epoch) == (1, 28)
  for plan in (small, large):  # 60 >= 2 passes of either.
    assert (plan.total_steps, plan.round_steps, plan.rounds) == (60, 20, 3)
    assert (plan.eval_every, plan.checkpoint_every, plan.in_steps) == (
        1, 1, True)
  # 3000 images: 93 iterations per pass, the floor of 2 passes (186)
  # rounded up to whole rounds of 20.
  assert funad.budget(f, 3000).total_steps == 200
  # Evaluation every 30, checkpoints every 20: rounds of gcd = 10.
  f.update(eval_every=30, checkpoint_every=20)
  plan = funad.budget(f, 60)
  assert (plan.round_steps, plan.eval_every, plan.checkpoint_every) == (
      10, 3, 2)
  # Only at the end: one round.
  f.update(eval_every=0, checkpoint_every=0)
  assert funad.budget(f, 60).rounds == 1


def test_paper_preset_still_counts_epochs():
  f = _config("paper", epochs=3, batch_size=8, eval_every=2,
              checkpoint_every=2).funad
  assert (f.steps, f.min_epochs) == (0, 0)  # METHODS §1: 1500 epochs.
  plan = funad.budget(f, 20)
  assert (plan.total_steps, plan.round_steps, plan.rounds) == (6, 2, 3)
  assert (plan.eval_every, plan.checkpoint_every, plan.in_steps) == (
      2, 2, False)
  assert funad_config.default_config("paper").epochs == 1500


def test_60_and_900_images_train_the_same_number_of_steps():
  # 2 passes over 900 images are 56 iterations, within the budget of 60.
  cfg = _config(steps=60, min_epochs=2, eval_every=20, checkpoint_every=20,
                batch_size=32)
  test_x = _features(12, seed=1)
  labels = np.array([0] * 6 + [1] * 6)
  for n in (60, 900):
    out = funad.fit(cfg, _features(n), eval_features=test_x,
                    eval_labels=labels)
    # One history row per round of 20 iterations, evaluated every round.
    assert [h["step"] for h in out["history"]] == [20, 40, 60], n
    assert [h["epoch"] for h in out["history"]] == [1, 2, 3], n
    assert all("test_image_auroc" in h for h in out["history"]), n
    assert out["budget"].total_steps == 60
    assert out["oracle"]["step"] in (20, 40, 60)


def test_resume_mid_run_is_bit_identical_and_refuses_another_round(tmp_path):
  # 60 images, batch 8: 7 iterations per epoch, so rounds of 10 cross
  # epoch boundaries mid-round.
  cfg = _config(steps=30, eval_every=10, checkpoint_every=10, batch_size=8)
  cfg.restart = False
  train_x = _features(60)
  whole = funad.fit(cfg, train_x)
  work = str(tmp_path / "run")
  funad.fit(cfg, train_x, workdir=work)
  # A run killed after round 2's checkpoint: round 3's is not there.
  ckpts = os.path.join(work, training.CHECKPOINT_DIR, training.TRAIN_CKPT)
  assert sorted(os.listdir(ckpts)) == ["2", "3"]
  shutil.rmtree(os.path.join(ckpts, "3"))
  resumed = funad.fit(cfg, train_x, workdir=work)
  jax.tree_util.tree_map(
      functools.partial(np.testing.assert_allclose, rtol=0, atol=0),
      resumed["params"], whole["params"])
  assert [h["step"] for h in resumed["history"]] == [10, 20, 30]
  assert [h["loss"] for h in resumed["history"]] == [
      h["loss"] for h in whole["history"]]
  with open(os.path.join(work, training.CHECKPOINT_DIR,
                         training.FINGERPRINT_FILE)) as f:
    assert json.load(f)["values"]["funad.round_steps"] == 10
  # Another round size maps the checkpoint's round count to other steps.
  other = _config(steps=30, eval_every=15, checkpoint_every=15,
                  batch_size=8)
  other.restart = False
  with pytest.raises(training.ResumeMismatchError, match="round_steps"):
    funad.fit(other, train_x, workdir=work)


def test_learning_curve_x_axis_is_the_step():
  history = [{"epoch": 1, "step": 50, "loss": 1.0},
             {"epoch": 2, "step": 100, "loss": 0.5, "test_image_auroc": 0.9}]
  assert viz.curve_x(history) == "step"
  panels = viz.curve_series(history)
  assert panels["loss"]["loss"] == ((50, 100), (1.0, 0.5))
  assert panels["evaluation"]["test_image_auroc"] == ((100,), (0.9,))
  # Histories without steps (DiCo) keep epochs.
  assert viz.curve_x([{"epoch": 1, "loss": 1.0}]) == "epoch"


@pytest.mark.parametrize("num_noised", [0, 3, 40])
def test_noised_logits_equal_a_full_pass_values_and_gradients(num_noised):
  """The lean loss (issue 27): only the noised rows go through the network
  again; few (a gather) or many (a full pass), the logits and their
  gradients are those of a full forward pass of the noised batch."""
  b, p, d = 4, 8, 16  # 32 patches: at most 2 gathered rows.
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(b, p, d)), jnp.float32)
  noised = np.zeros(b * p, bool)
  noised[rng.choice(b * p, min(num_noised, b * p), replace=False)] = True
  noised = jnp.asarray(noised.reshape(b, p))
  x_noised = x + jnp.where(noised[..., None],
                           jnp.asarray(rng.normal(size=(b, p, d)),
                                       jnp.float32), 0.0)
  net = model_lib.LocalNet(d, (32, 8))
  params = model_lib.init_params(jax.random.key(0), d, hidden=(32, 8))
  w = jnp.asarray(rng.normal(size=(b, p)), jnp.float32)

  def lean(prm):
    z_clean, _ = net.apply({"params": prm}, x, return_logits=True)
    return step_lib.noised_logits(net, prm, x_noised, noised, z_clean)

  def full(prm):
    return net.apply({"params": prm}, x_noised, return_logits=True)[0]

  np.testing.assert_allclose(lean(params), full(params), rtol=1e-5,
                             atol=1e-6)
  # Through a loss that also uses the clean logits, as the step's does.
  def loss(fn, prm):
    z_clean, _ = net.apply({"params": prm}, x, return_logits=True)
    return jnp.sum(w * fn(prm)) + 0.5 * jnp.sum(z_clean ** 2)

  g_lean = jax.grad(functools.partial(loss, lean))(params)
  g_full = jax.grad(functools.partial(loss, full))(params)
  jax.tree_util.tree_map(
      functools.partial(np.testing.assert_allclose, rtol=1e-4, atol=1e-5),
      g_lean, g_full)
