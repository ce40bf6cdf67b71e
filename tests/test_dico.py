"""DiCo (METHODS §2): masking, losses, memory, adaptive score, train step."""

import functools
import importlib.util
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import roc_auc_score

from dicofun import training
from dicofun.methods.dico import config as dico_config
from dicofun.methods.dico import method as dico
from dicofun.methods.dico import losses
from dicofun.methods.dico import masking
from dicofun.methods.dico import model as model_lib
from dicofun.methods.dico import scoring
from dicofun.methods.dico import step as step_lib

LEVELS = ("stride4", "stride8", "stride16")


def tiny_encoder(seed=0):
  """A frozen random 4-layer conv encoder with stride 4/8/16 outputs."""
  ks = jax.random.split(jax.random.PRNGKey(seed), 4)
  chans = [3, 8, 8, 12, 16]
  ws = [jax.random.normal(ks[i], (3, 3, chans[i], chans[i + 1]))
        / np.sqrt(9 * chans[i]) for i in range(4)]

  def enc(x):
    out, h = {}, x
    for i, w in enumerate(ws):
      h = jax.lax.conv_general_dilated(h, w, (2, 2), "SAME",
                                       dimension_numbers=("NHWC", "HWIO",
                                                          "NHWC"))
      if i >= 1:
        out[f"stride{2 ** (i + 1)}"] = h
      h = jax.nn.relu(h)
    return out

  return step_lib.encoder_from_fn(enc, {"stride4": 8, "stride8": 12,
                                        "stride16": 16})


def textures(rng, n, size=32):
  yy, xx = np.mgrid[:size, :size] / size
  out = []
  for _ in range(n):
    f = rng.uniform(2, 4, 2)
    ph = rng.uniform(0, 2 * np.pi, 2)
    base = (0.5 * np.sin(2 * np.pi * f[0] * xx + ph[0])
            + 0.5 * np.sin(2 * np.pi * f[1] * yy + ph[1]))
    img = np.stack([base, 0.8 * base, 0.6 * base], -1)
    out.append(img + 0.05 * rng.normal(size=(size, size, 3)))
  return np.asarray(out, np.float32)


def with_bright_squares(rng, imgs, side=8):
  imgs = imgs.copy()
  for i in range(len(imgs)):
    y, x = rng.integers(0, imgs.shape[1] - side, 2)
    imgs[i, y:y + side, x:x + side] = 2.5
  return imgs


def small_config(**kw):
  cfg = dico_config.default_config()
  cfg.bottleneck_channels = 16
  cfg.memory_size = 8
  cfg.mask_patch = 8
  cfg.batch_size = 8
  cfg.blur_sigma = 1.0
  cfg.eval_every = 0
  for k, v in kw.items():
    cfg[k] = v
  return cfg


def magnetic_tile_config():
  """configs/dico_magnetic_tile.py, loaded as a module."""
  path = os.path.join(os.path.dirname(os.path.dirname(
      os.path.abspath(__file__))), "configs", "dico_magnetic_tile.py")
  spec = importlib.util.spec_from_file_location("dico_mt_cfg", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


# --- masking -----------------------------------------------------------------


def test_mask_hits_ratio_and_is_deterministic():
  key = jax.random.PRNGKey(3)
  m = np.asarray(masking.random_square_mask(key, 5, 64, ratio=0.5, patch=16))
  assert m.shape == (5, 64, 64, 1)
  cells = m[:, ::16, ::16, 0]
  # Every cell is constant and exactly 8 of the 16 cells are masked per image.
  np.testing.assert_array_equal(np.repeat(np.repeat(cells, 16, 1), 16, 2),
                                m[..., 0])
  np.testing.assert_array_equal(cells.reshape(5, -1).sum(1), [8] * 5)
  again = masking.random_square_mask(key, 5, 64, ratio=0.5, patch=16)
  np.testing.assert_array_equal(m, again)
  other = masking.random_square_mask(jax.random.PRNGKey(4), 5, 64, ratio=0.5,
                                     patch=16)
  assert not np.array_equal(m, np.asarray(other))
  m25 = masking.random_square_mask(key, 3, (32, 64), ratio=0.25, patch=8)
  np.testing.assert_allclose(np.asarray(m25).mean(axis=(1, 2, 3)), 0.25)


def test_complementary_masks_cover_once_and_fill():
  m = np.asarray(masking.complementary_masks(jax.random.PRNGKey(0), 32, k=3,
                                             patch=8))
  np.testing.assert_array_equal(m.sum(0), 1.0)
  x = jnp.ones((1, 4, 4, 3))
  mask = jnp.zeros((1, 4, 4, 1)).at[:, :2].set(1.0)
  out = np.asarray(masking.apply_mask(x, mask))
  assert (out[:, :2] == 0).all() and (out[:, 2:] == 1).all()


# --- losses ------------------------------------------------------------------


def test_reconstruction_loss_zero_and_hand_values():
  t = {"a": jnp.ones((1, 1, 2, 2)), "b": jnp.ones((1, 1, 1, 3))}
  assert float(losses.reconstruction_loss(t, t, ("a", "b"))) == pytest.approx(
      0.0, abs=1e-6)
  # Level a: positions at cos = 1 and cos = 0 → mean 0.5.
  # Level b: R = −T → 1 − cos = 2.
  r = {"a": jnp.array([[[[2.0, 2.0], [1.0, -1.0]]]]),
       "b": -jnp.ones((1, 1, 1, 3))}
  got = float(losses.reconstruction_loss(t, r, ("a", "b")))
  assert got == pytest.approx(0.5 + 2.0, abs=1e-6)


def test_compactness_and_entropy_hand_values():
  q = jnp.array([[1.0, 0.0], [0.0, 3.0]])
  items = jnp.array([[2.0, 0.0], [1.0, 1.0]])
  # Query 0 → item 0 (distance 0), query 1 → item 1 (2 − 2·cos45°).
  got = float(losses.compactness_loss(q, items, jnp.array([0, 1])))
  assert got == pytest.approx((0 + 2 - np.sqrt(2)) / 2, abs=1e-6)
  w = jnp.array([[0.5, 0.5], [1.0, 0.0]])
  assert float(losses.entropy_loss(w)) == pytest.approx(np.log(2) / 2,
                                                        abs=1e-6)


# --- memory ------------------------------------------------------------------


def _memory(items, z, temperature=0.1):
  mem = model_lib.DynamicMemory(items.shape[0], temperature)
  return mem.apply({"params": {"items": items}}, z)


def test_addressing_sums_to_one_and_gate_in_unit_interval():
  items = jax.random.normal(jax.random.PRNGKey(0), (6, 5))
  z = jax.random.normal(jax.random.PRNGKey(1), (2, 3, 3, 5))
  out, aux = _memory(items, z)
  assert out.shape == z.shape
  np.testing.assert_allclose(np.asarray(aux["weights"]).sum(-1), 1.0,
                             atol=1e-5)
  # g = clip(1 − max_i cos(z, M_i), 0, 1), computed here independently.
  zn = np.asarray(z) / np.linalg.norm(np.asarray(z), axis=-1, keepdims=True)
  mn = np.asarray(items) / np.linalg.norm(np.asarray(items), axis=-1,
                                          keepdims=True)
  want = np.clip(1.0 - (zn @ mn.T).max(-1), 0.0, 1.0)
  np.testing.assert_allclose(np.asarray(aux["gate"]), want, atol=1e-5)
  np.testing.assert_allclose(np.asarray(aux["cos_top1"]),
                             (zn @ mn.T).max(-1), atol=1e-5)
  # The hard shrinkage removed weights below λ = 1/N.
  w = np.asarray(aux["weights"])
  assert ((w == 0) | (w > 1e-3)).all()


def test_gate_larger_far_from_items():
  items = jnp.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
  near = jnp.array([[[[1.0, 0.05, 0.0]]]])
  far = jnp.array([[[[0.0, 0.0, 1.0]]]])
  out_near, aux_near = _memory(items, near)
  out_far, aux_far = _memory(items, far)
  assert float(aux_far["gate"][0, 0, 0]) > float(aux_near["gate"][0, 0, 0])
  assert float(aux_far["gate"][0, 0, 0]) == pytest.approx(1.0)
  assert float(aux_near["gate"][0, 0, 0]) < 0.01
  # A far feature is replaced by memory content: z' = ẑ.
  zhat = np.asarray(aux_far["weights"][0, 0, 0]) @ np.asarray(items)
  np.testing.assert_allclose(np.asarray(out_far[0, 0, 0]), zhat, atol=1e-6)
  np.testing.assert_allclose(np.asarray(out_near), np.asarray(near), atol=0.01)


def _check_shrinkage_read(shrink):
  """The memory read of one query against N = 4 items, by hand.

  Items e_1..e_4 of C = 5 scaled by 2, 4, 1, 1; the query has cosines
  (0.5, 0.45, 0.3, 0.2) with them (its fifth coordinate holds the rest of the
  unit norm). With τ = 0.1 the softmax is ∝ (e^3, e^2.5, e^1, e^0) =
  (0.558, 0.339, 0.076, 0.028); the hard shrinkage at λ = 1/N = 0.25 keeps
  the first two, renormalised to (σ(0.5), 1 − σ(0.5)) = (0.6225, 0.3775).
  Then ẑ = (2·0.6225, 4·0.3775, 0, 0, 0), g = 1 − 0.5 and z' = g·ẑ + (1−g)·z.
  """
  items = jnp.array([[2.0, 0, 0, 0, 0], [0, 4.0, 0, 0, 0],
                     [0, 0, 1.0, 0, 0], [0, 0, 0, 1.0, 0]])
  cos = np.array([0.5, 0.45, 0.3, 0.2])
  z = np.append(cos, np.sqrt(1.0 - np.sum(cos ** 2)))
  mem = model_lib.DynamicMemory(4, temperature=0.1, shrink=shrink)
  out, aux = mem.apply({"params": {"items": items}},
                       jnp.asarray(z, jnp.float32)[None, None, None])
  w0 = 1.0 / (1.0 + np.exp(-0.5))
  np.testing.assert_allclose(np.asarray(aux["weights"])[0, 0, 0],
                             [w0, 1.0 - w0, 0.0, 0.0], atol=1e-6)
  z_hat = np.array([2.0 * w0, 4.0 * (1.0 - w0), 0.0, 0.0, 0.0])
  np.testing.assert_allclose(np.asarray(aux["gate"])[0, 0, 0], 0.5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(out)[0, 0, 0], 0.5 * z_hat + 0.5 * z,
                             atol=1e-6)


def test_hard_shrinkage_read_hand_values_at_one_over_n():
  _check_shrinkage_read(None)  # Default λ = 1/N.
  _check_shrinkage_read(0.25)  # The same, explicit.


def test_hard_shrinkage_hand_values_need_lambda_one_over_n():
  # λ ten times smaller keeps all four weights: the hand values fail.
  with pytest.raises(AssertionError):
    _check_shrinkage_read(0.025)


def test_memory_size_zero_is_identity():
  mem = model_lib.DynamicMemory(0)
  z = jnp.ones((1, 2, 2, 4))
  out, _ = mem.apply({}, z)
  np.testing.assert_array_equal(np.asarray(out), np.asarray(z))


def test_bottleneck_stride_32_halves_the_grid_and_decodes_every_level():
  feats = {"stride4": jnp.ones((2, 16, 16, 8)), "stride8": jnp.ones((2, 8, 8, 12)),
           "stride16": jnp.ones((2, 4, 4, 16))}
  chans = {"stride4": 8, "stride8": 12, "stride16": 16}
  for stride, grid in ((0, 4), (16, 4), (32, 2), (64, 1)):
    net = model_lib.DiCoNet(LEVELS, chans, bottleneck_channels=6,
                            bottleneck_stride=stride, memory_size=4)
    params = net.init(jax.random.PRNGKey(0), feats, train=False)
    z = net.apply(params, feats, train=False, method=model_lib.DiCoNet.encode)
    assert z.shape == (2, grid, grid, 6)
    rec, _ = net.apply(params, feats, train=False)
    assert {k: v.shape for k, v in rec.items()} == {
        k: v.shape for k, v in feats.items()}
  bad = model_lib.DiCoNet(LEVELS, chans, bottleneck_channels=6,
                          bottleneck_stride=8, memory_size=4)
  with pytest.raises(ValueError, match="multiple of the coarsest"):
    bad.init(jax.random.PRNGKey(0), feats, train=False)


def test_bottleneck_stride_config_check_names_the_field():
  module = magnetic_tile_config()
  assert module.get_config("bottleneck_stride=32").dico.bottleneck_stride == 32
  assert module.get_config("").dico.bottleneck_stride == 0
  for bad in (8, 48):
    with pytest.raises(Exception, match="dico.bottleneck_stride"):
      module.get_config(f"bottleneck_stride={bad}")


def test_momentum_update_moves_toward_assigned_queries():
  items = jnp.array([[0.0, 0.0], [5.0, 5.0], [9.0, 9.0]])
  queries = jnp.array([[1.0, 0.0], [3.0, 0.0], [5.0, 7.0]])
  top1 = jnp.array([0, 0, 1])
  new = np.asarray(model_lib.momentum_update(items, queries, top1,
                                             momentum=0.9))
  np.testing.assert_allclose(new[0], 0.9 * 0 + 0.1 * np.array([2.0, 0.0]))
  np.testing.assert_allclose(new[1], 0.9 * 5 + 0.1 * np.array([5.0, 7.0]))
  np.testing.assert_array_equal(new[2], [9.0, 9.0])  # No queries: unchanged.
  assert np.linalg.norm(new[0] - [2, 0]) < np.linalg.norm([2, 0])


# --- scoring -----------------------------------------------------------------


def test_adaptive_score_selects_pixels_above_threshold():
  a = np.zeros((1, 20, 20), np.float32)
  a[0, :2, :2] = 10.0  # 4 of 400 pixels (1%): exactly k = 4 qualify.
  a[0, 5, 5] = 4.0
  flat = a.reshape(-1)
  thr = flat.mean() + 3 * flat.std()
  expected = flat[flat >= thr].mean()
  assert (flat >= thr).sum() >= 4
  got = float(scoring.image_scores(jnp.asarray(a), mode="adaptive")[0])
  assert got == pytest.approx(expected, rel=1e-5)
  assert float(scoring.image_scores(jnp.asarray(a), mode="max")[0]) == 10.0
  assert float(scoring.image_scores(jnp.asarray(a), mode="topk_mean")[0]) == (
      pytest.approx(10.0))


def test_adaptive_score_falls_back_to_top_one_percent():
  # A ramp: nothing reaches μ + 3σ, so the mean of the top 1% (4 px) is used.
  a = np.arange(400, dtype=np.float32).reshape(1, 20, 20)
  flat = a.reshape(-1)
  assert (flat >= flat.mean() + 3 * flat.std()).sum() == 0
  got = float(scoring.image_scores(jnp.asarray(a), mode="adaptive")[0])
  assert got == pytest.approx(np.mean([399, 398, 397, 396]))
  # Fewer than 1% qualify (one spike among 400): fall back too.
  b = np.zeros((1, 20, 20), np.float32)
  b[0, 0, 0] = 8.0
  b[0, 1, 1:4] = [3.0, 2.0, 1.0]
  got = float(scoring.image_scores(jnp.asarray(b), mode="adaptive")[0])
  assert got == pytest.approx((8 + 3 + 2 + 1) / 4)


def test_blur_matches_scipy():
  x = np.random.default_rng(0).normal(size=(2, 12, 9)).astype(np.float32)
  for blur in (scoring.gaussian_blur,):
    got = np.asarray(blur(jnp.asarray(x), 2.0))
    want = np.stack([ndimage.gaussian_filter(m, 2.0, mode="reflect")
                     for m in x])
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_anomaly_map_is_zero_for_perfect_reconstruction():
  t = {"stride4": jnp.ones((1, 2, 2, 3)), "stride8": jnp.ones((1, 1, 1, 3))}
  a = scoring.anomaly_map(t, t, ("stride4", "stride8"), size=(8, 8), sigma=1.0)
  assert a.shape == (1, 8, 8)
  np.testing.assert_allclose(np.asarray(a), 0.0, atol=1e-6)


# --- train step and end to end ----------------------------------------------


@pytest.fixture(scope="module")
def data():
  rng = np.random.default_rng(0)
  train = textures(rng, 32)
  good = textures(rng, 12)
  bad = with_bright_squares(rng, textures(rng, 12))
  test = np.concatenate([good, bad])
  labels = np.r_[np.zeros(12), np.ones(12)]
  return train, test, labels


def test_end_to_end_training_beats_untrained(data):
  """Trains with the one jitted step (compiled once) and beats a fixed bar."""
  train, test, labels = data
  enc = tiny_encoder()
  cfg = small_config(epochs=6)
  bs = 8

  def epoch_batches(epoch, start, stop):
    order = np.random.default_rng(epoch).permutation(len(train))
    for b in range(start, stop):
      yield train[order[b * bs:(b + 1) * bs]]

  net = dico.build_net(cfg, enc.channels)
  score = step_lib.make_score_fn(net, enc, dico.step_config(cfg))
  variables, info = dico.train(cfg, encoder=enc, epoch_batches=epoch_batches,
                               first_batch=train[:bs], seed=0,
                               steps_per_epoch=len(train) // bs)
  assert info["compilations"] == 1
  assert info["losses"][-1]["rec"] < info["losses"][0]["rec"]
  trained_auc = roc_auc_score(labels, np.asarray(score(variables, test)[0]))
  k_init = jax.random.split(jax.random.PRNGKey(0))[0]
  st = step_lib.init_state(net, enc, step_lib.make_optimizer(), k_init,
                           train[:bs])
  untrained = {"params": st["params"], "batch_stats": st["batch_stats"]}
  # Items start as (non-negative) bottleneck queries and then move.
  items0 = np.asarray(st["params"]["memory"]["items"])
  assert items0.shape == (8, 16) and (items0 >= 0).all()
  assert not np.allclose(variables["params"]["memory"]["items"], items0)
  untrained_auc = roc_auc_score(labels,
                                np.asarray(score(untrained, test)[0]))
  bar = 0.8
  assert trained_auc >= bar, trained_auc
  assert untrained_auc < bar, untrained_auc
  # predict() reproduces the scores of the same variables.
  s, maps = dico.predict_images(_predict_config(cfg), variables, test,
                                encoder=enc)
  assert maps.shape == (24, 32, 32)
  np.testing.assert_allclose(s, np.asarray(score(variables, test)[0]),
                             rtol=1e-5, atol=1e-6)


def _predict_config(cfg):
  import ml_collections  # pylint: disable=g-import-not-at-top
  return ml_collections.ConfigDict({"dico": cfg, "backbone": {"name": "x"}})


# --- speed: cached targets and the fused encoder pass ------------------------


def test_cached_targets_equal_fresh_ones():
  rng = np.random.default_rng(3)
  images = textures(rng, 5)
  enc = tiny_encoder()
  # Batches of 2 (the last one padded) against one pass over all five.
  cached = step_lib.compute_targets(step_lib.make_target_fn(enc), images,
                                    batch_size=2)
  fresh = jax.jit(lambda x: enc.apply(enc.variables, x))(images)
  assert set(cached) == set(LEVELS)
  for k in LEVELS:
    assert cached[k].shape == fresh[k].shape and cached[k].dtype == np.float32
    np.testing.assert_allclose(cached[k], np.asarray(fresh[k]), atol=1e-6)
  # Their size, as the memory bound counts it: 5 × (8·8·8 + 4·4·12 + 2·2·16).
  assert step_lib.target_bytes(enc, 32, 5) == 4 * 5 * (512 + 192 + 64)


@pytest.mark.parametrize("masking", [True, False])
def test_training_from_cached_targets_same_losses(data, masking):
  train = data[0][:16]
  enc = tiny_encoder()
  cfg = small_config(epochs=2, masking=masking)
  bs = 8
  targets = step_lib.compute_targets(step_lib.make_target_fn(enc), train,
                                     batch_size=bs)

  def batches(cached):
    def epoch_batches(epoch, start, stop):
      for idx in dico.epoch_batch_indices(len(train), bs, epoch)[start:stop]:
        if cached:
          yield train[idx], {k: v[idx] for k, v in targets.items()}
        else:
          yield train[idx]
    return epoch_batches

  runs = [dico.train(cfg, encoder=enc, epoch_batches=batches(c),
                     first_batch=train[:bs], seed=0,
                     steps_per_epoch=len(train) // bs) for c in (False, True)]
  (v_ref, ref), (v_got, got) = runs
  assert len(ref["losses"]) == 2 and got["compilations"] == 1
  # The epoch rows carry the gate / item-usage diagnostics.
  for k in ("gate_p10", "gate_p50", "gate_p90", "items_used",
            "item_usage_entropy"):
    assert k in ref["losses"][0], k
  assert 1 <= ref["losses"][0]["items_used"] <= cfg.memory_size
  for a, b in zip(ref["losses"], got["losses"]):
    assert a.keys() == b.keys()
    for k in a:
      np.testing.assert_allclose(b[k], a[k], rtol=1e-5, atol=1e-5, err_msg=k)
  np.testing.assert_allclose(v_got["params"]["memory"]["items"],
                             v_ref["params"]["memory"]["items"], atol=1e-5)


def test_epoch_batches_are_sorted_slices_of_one_permutation():
  order = np.random.default_rng(7).permutation(10)
  got = dico.epoch_batch_indices(10, 4, 7)
  assert len(got) == 2  # The remainder (2 images) is dropped.
  np.testing.assert_array_equal(got[0], np.sort(order[:4]))
  np.testing.assert_array_equal(got[1], np.sort(order[4:8]))


def test_gate_histogram_and_memory_diagnostics_hand_values():
  hist = np.asarray(model_lib.gate_histogram(
      jnp.array([0.0, 0.05, 0.5, 0.999, 1.0]), bins=10))
  np.testing.assert_array_equal(hist, [2, 0, 0, 0, 0, 1, 0, 0, 0, 2])
  # Gate: 2 values in [0.1, 0.2) and 2 in [0.4, 0.5); items 0 and 2 used.
  hist = np.array([0, 2, 0, 0, 2, 0, 0, 0, 0, 0], np.float32)
  d = model_lib.memory_diagnostics(hist, np.array([3.0, 0.0, 1.0, 0.0]))
  # p10: 0.4 of 4 values → 0.2 of the way into bin 1: 0.12; p50: the end of
  # bin 1: 0.2; p90: 3.6 → 0.8 into bin 4: 0.48.
  assert d["gate_p10"] == pytest.approx(0.12)
  assert d["gate_p50"] == pytest.approx(0.2)
  assert d["gate_p90"] == pytest.approx(0.48)
  assert d["items_used"] == 2.0
  assert d["item_usage_entropy"] == pytest.approx(
      -(0.75 * np.log(0.75) + 0.25 * np.log(0.25)))
  # One item takes every query: entropy 0; uniform: log N.
  assert model_lib.memory_diagnostics(hist, np.array([0.0, 5.0]))[
      "item_usage_entropy"] == 0.0
  assert model_lib.memory_diagnostics(hist, np.ones(4))[
      "item_usage_entropy"] == pytest.approx(np.log(4))


def test_cosine_lr_schedule_with_warmup_hand_values():
  assert step_lib.make_lr_schedule(0.1) == 0.1  # Constant: the paper's lr.
  sched = step_lib.make_lr_schedule(0.1, schedule="cosine", total_steps=10,
                                    warmup_steps=2)
  # Linear 0 → 0.1 over 2 steps, then 0.1·(1 + cos(π·(t−2)/8))/2.
  for t, want in ((0, 0.0), (1, 0.05), (2, 0.1), (6, 0.05), (10, 0.0)):
    assert float(sched(t)) == pytest.approx(want, abs=1e-7), t
  assert float(sched(4)) == pytest.approx(0.05 * (1 + np.cos(np.pi / 4)))
  with pytest.raises(ValueError, match="schedule"):
    step_lib.make_lr_schedule(0.1, schedule="step")


def test_cpu_preset_counts_steps_and_explicit_args_win():
  module = magnetic_tile_config()
  plain = module.get_config("")  # The faithful path counts epochs.
  assert plain.dico.epochs == 200 and plain.dico.lr_schedule == "constant"
  assert plain.dico.cache_targets and plain.dico.steps == 0
  d = module.get_config("cpu").dico
  assert (d.steps, d.min_epochs, d.batch_size, d.eval_every,
          d.checkpoint_every, d.lr_schedule, d.warmup_steps,
          d.cache_targets) == (400, 2, 8, 100, 50, "cosine", 40, True)
  assert module.get_config("cpu,steps=60").dico.steps == 60
  # epochs= alone counts the budget in epochs again.
  d = module.get_config("cpu,epochs=4").dico
  assert (d.epochs, d.steps) == (4, 0)
  assert module.get_config("cpu,epochs=4,steps=60").dico.steps == 60
  with pytest.raises(Exception, match="dico.warmup_steps"):
    module.get_config("cpu,steps=30")


def test_speed_knobs_stay_out_of_the_resume_fingerprint():
  def fp(**kw):
    config = ml_collections.ConfigDict({"dico": small_config(**kw),
                                        "seed": 0})
    return training.training_fingerprint(config, "dico")["hash"]

  base = fp()
  # Same function, computed differently: a checkpoint may resume across them.
  for kw in (dict(cache_targets=False),):
    assert fp(**kw) == base, kw
  # These change what is trained.
  for kw in (dict(lr_schedule="cosine"), dict(warmup_epochs=1)):
    assert fp(**kw) != base, kw


def test_removed_knobs_are_gone_and_older_checkpoints_at_their_value_resume(
    tmp_path):
  # Issue 28: no preset used them and no table measured them.
  removed = ("mask_fill", "flat_weight", "fuse_encoder", "feature_masking",
             "cpu_preset")
  cfg = dico_config.default_config()
  scfg = dico.step_config(cfg)
  for name in removed:
    assert name not in cfg and not hasattr(scfg, name), name
    assert name not in dico_config.ARGS, name
  module = magnetic_tile_config()
  for bad in ("mask_fill=noise", "fuse_encoder=True", "cpu_preset=True"):
    with pytest.raises(Exception, match="unknown config arg"):
      module.get_config(bad)
  # A checkpoint written before the removal recorded three of them (the
  # others were never in the fingerprint): at the values the code computes
  # it resumes, at any other it is refused.
  config = ml_collections.ConfigDict({"dico": small_config(), "seed": 0})
  now = training.training_fingerprint(config, "dico")
  for old_values, ok in (
      (dict(mask_fill="zero", flat_weight=0.0, feature_masking=False), True),
      (dict(mask_fill="noise"), False), (dict(flat_weight=0.5), False),
      (dict(feature_masking=True), False)):
    values = dict(now["values"])
    values.update({f"dico.{k}": v for k, v in old_values.items()})
    path = tmp_path / "fingerprint.json"
    path.write_text(json.dumps({"hash": "older", "values": values}))
    if ok:
      training._check_fingerprint(str(path), now, epoch=1, ckpt_root="ck")
    else:
      with pytest.raises(training.ResumeMismatchError):
        training._check_fingerprint(str(path), now, epoch=1, ckpt_root="ck")


def test_combine_pass_maps_hand_values():
  # Two passes, complementary masks: left column masked in pass 0.
  masks = jnp.asarray([[[1.0, 0.0]], [[0.0, 1.0]]])[..., None]  # (2,1,2,1)
  maps = jnp.asarray([[[[1.0, 5.0]]], [[[3.0, 7.0]]]])  # (K=2,B=1,1,2)
  mean = scoring.combine_pass_maps(maps, masks, how="mean", sigma=0.0)
  np.testing.assert_allclose(np.asarray(mean), [[[2.0, 6.0]]])
  masked = scoring.combine_pass_maps(maps, masks, how="masked", sigma=0.0)
  # Each pixel from the pass that masked it: left from pass 0, right pass 1.
  np.testing.assert_allclose(np.asarray(masked), [[[1.0, 7.0]]])
  with pytest.raises(ValueError, match="k_masks_combine"):
    scoring.combine_pass_maps(maps, masks, how="max", sigma=0.0)


def test_scoring_knobs_resume_and_masked_passes_score(data):
  def fp(**kw):
    config = ml_collections.ConfigDict({"dico": small_config(**kw),
                                        "seed": 0})
    return training.training_fingerprint(config, "dico")["hash"]
  # A finished model may be re-scored with other inference settings.
  for kw in (dict(k_masks=2), dict(k_masks_combine="masked"),
             dict(score_mode="max"), dict(kappa=2.0)):
    assert fp(**kw) == fp(), kw
  assert fp(mask_ratio=0.25) != fp()
  # The masked combination of the score function, recomputed by hand.
  _, test, _ = data
  enc = tiny_encoder()
  cfg = small_config(k_masks=2, k_masks_combine="masked")
  net = dico.build_net(cfg, enc.channels)
  st = step_lib.init_state(net, enc, step_lib.make_optimizer(),
                           jax.random.PRNGKey(0), test[:8])
  variables = {"params": st["params"], "batch_stats": st["batch_stats"]}
  scfg = dico.step_config(cfg)
  _, got = step_lib.make_score_fn(net, enc, scfg)(variables, test[:4])
  x = jnp.asarray(test[:4], jnp.float32)
  targets = enc.apply(enc.variables, x)
  masks = masking.complementary_masks(jax.random.PRNGKey(0), x.shape[1:3],
                                      k=2, patch=cfg.mask_patch)
  total = 0.0
  for mask in masks:
    recons, _ = net.apply(variables, enc.apply(
        enc.variables, masking.apply_mask(x, mask[None])), train=False)
    total = total + mask[None, ..., 0] * scoring.anomaly_map(
        targets, recons, LEVELS, size=x.shape[1:3], sigma=0.0)
  want = scoring.gaussian_blur(total, cfg.blur_sigma)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4,
                             atol=1e-5)
  # ... and differs from the mean of the passes.
  _, mean_maps = step_lib.make_score_fn(
      net, enc, dico.step_config(small_config(k_masks=2)))(variables, test[:4])
  assert np.abs(np.asarray(mean_maps) - np.asarray(got)).max() > 1e-3


def test_score_levels_sum_only_the_named_levels(data):
  def fp(**kw):
    config = ml_collections.ConfigDict({"dico": small_config(**kw),
                                        "seed": 0})
    return training.training_fingerprint(config, "dico")["hash"]
  assert fp(score_levels="stride16") == fp()  # Re-scoring a trained model.
  _, test, _ = data
  enc = tiny_encoder()
  cfg = small_config(score_levels="stride8+stride16")
  assert dico_config.score_levels(cfg) == ("stride8", "stride16")
  assert dico_config.score_levels(small_config()) == ()
  net = dico.build_net(cfg, enc.channels)
  st = step_lib.init_state(net, enc, step_lib.make_optimizer(),
                           jax.random.PRNGKey(0), test[:8])
  variables = {"params": st["params"], "batch_stats": st["batch_stats"]}
  _, got = step_lib.make_score_fn(net, enc, dico.step_config(cfg))(
      variables, test[:4])
  x = jnp.asarray(test[:4], jnp.float32)
  targets = enc.apply(enc.variables, x)
  recons, _ = net.apply(variables, targets, train=False)
  want = 0.0
  for level in ("stride8", "stride16"):  # By hand: 1 - cos, resized, summed.
    t, r = targets[level], recons[level]
    cos = jnp.sum(t * r, -1) / (jnp.linalg.norm(t, axis=-1)
                                * jnp.linalg.norm(r, axis=-1))
    want = want + jax.image.resize(1 - cos, (4,) + x.shape[1:3], "bilinear")
  want = scoring.gaussian_blur(want, cfg.blur_sigma)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4,
                             atol=1e-5)
  _, every = step_lib.make_score_fn(net, enc, dico.step_config(small_config()))(
      variables, test[:4])
  assert np.abs(np.asarray(every) - np.asarray(got)).max() > 1e-3


def test_score_levels_config_check_names_the_field():
  module = magnetic_tile_config()
  assert module.get_config(
      "score_levels=stride8+stride16").dico.score_levels == "stride8+stride16"
  with pytest.raises(Exception, match="dico.score_levels"):
    module.get_config("score_levels=stride32")


def test_bottleneck_stride_at_its_default_keeps_older_fingerprints():
  def fp(cfg):
    return training.training_fingerprint(
        ml_collections.ConfigDict({"dico": cfg, "seed": 0}), "dico")["hash"]
  older = small_config()
  # A run stored before the fields existed.
  del older["bottleneck_stride"]
  del older["warmup_steps"]
  assert fp(small_config()) == fp(older)
  assert fp(small_config(warmup_steps=5)) != fp(older)
  assert fp(small_config(bottleneck_stride=32)) != fp(older)
