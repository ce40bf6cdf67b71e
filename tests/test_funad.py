"""Tests of FUN-AD (dicofun.methods.funad): model, IRMB, losses, optimiser,
the jitted train step and a short end-to-end fit on synthetic features."""

import functools
import io

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from PIL import Image
import pytest
from scipy import ndimage
from sklearn import metrics

from dicofun import summary
from dicofun import training
from dicofun.methods.funad import config as funad_config
from dicofun.methods.funad import method as funad
from dicofun.methods.funad import irmb
from dicofun.methods.funad import losses
from dicofun.methods.funad import model as model_lib
from dicofun.methods.funad import step as step_lib
from dicofun.ops import knn


def _gaussian_patches(seed, n=200, p=16, d=32, frac=0.1):
  """Normals N(0, I), anomalies N(1.5, 2I); whole images anomalous."""
  rng = np.random.default_rng(seed)
  labels = np.zeros(n, int)
  labels[rng.choice(n, int(frac * n), replace=False)] = 1
  x = rng.normal(size=(n, p, d)).astype(np.float32)
  an = labels == 1
  x[an] = 1.5 + np.sqrt(2.0) * x[an]
  return x, labels


# ------------------------------------------------------------------ model


def test_localnet_shapes_and_torch_init():
  params = model_lib.init_params(jax.random.key(0), 64, hidden=(32, 8))
  s, f = model_lib.LocalNet(64, (32, 8)).apply({"params": params},
                                               jnp.ones((3, 5, 64)))
  assert s.shape == (3, 5) and f.shape == (3, 5, 64)
  assert float(s.min()) >= 0 and float(s.max()) <= 1
  # The forward pass equals a numpy transcription (LeakyReLU 0.2 adaptor,
  # LeakyReLU hidden layers, sigmoid of the last) on inputs of both signs.
  x = np.random.default_rng(0).normal(size=(3, 5, 64)).astype(np.float32)
  s, f = model_lib.LocalNet(64, (32, 8)).apply({"params": params},
                                               jnp.asarray(x))
  s_np, f_np = _np_localnet(params, x)
  assert (f_np < 0).any()  # the negative slope is exercised
  np.testing.assert_allclose(np.asarray(f), f_np, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(np.asarray(s), s_np, rtol=1e-4, atol=1e-6)
  z, _ = model_lib.LocalNet(64, (32, 8)).apply(
      {"params": params}, jnp.asarray(x), return_logits=True)
  np.testing.assert_allclose(np.asarray(z), _np_localnet(params, x,
                                                         logits=True)[0],
                             rtol=1e-4, atol=1e-5)
  for name, fan_in in [("adaptor", 64), ("disc_0", 64), ("disc_1", 32),
                       ("disc_2", 8)]:
    bound = 1 / np.sqrt(fan_in)
    for leaf in ("kernel", "bias"):
      w = np.asarray(params[name][leaf])
      assert np.abs(w).max() <= bound + 1e-7
    # Uniform over the full interval, not a narrower one.
    assert np.abs(np.asarray(params[name]["kernel"])).max() > 0.8 * bound


# ------------------------------------------------------------------- IRMB


def test_irmb_pseudo_labels_beat_chance_on_gaussians():
  """Observation (i): bank distances separate anomalies (identity adaptor)."""
  x, labels = _gaussian_patches(0)
  n, p, d = x.shape
  key = jax.random.key(1)
  # Untrained model: image scores are uninformative → random candidates.
  scores = jax.random.uniform(jax.random.key(2), (n,))
  cand = irmb.candidate_normals(scores, jnp.ones(n, bool), tau_n=0.5)
  idx, valid = irmb.draw_bank_images(key, cand, rho=0.5, max_images=n // 2)
  m = int(valid.sum())
  assert m == int(np.floor(0.5 * int(cand.sum())))
  chosen = np.asarray(idx)[:m]
  assert len(set(chosen)) == m and np.asarray(cand)[chosen].all()
  bank = jnp.asarray(x)[idx].reshape(-1, d)
  bank_valid = jnp.repeat(valid, p)
  aurocs, baccs = [], []
  for b0 in range(0, n, 40):  # Batches of 40 images (some in the bank).
    q = jnp.asarray(x[b0:b0 + 40]).reshape(-1, d)
    yt = np.repeat(labels[b0:b0 + 40], p)
    d_norm, y = irmb.batch_pseudo_labels(q, bank, bank_valid, tau_n=0.5,
                                         chunk=256)
    aurocs.append(metrics.roc_auc_score(yt, np.asarray(d_norm)))
    baccs.append(metrics.balanced_accuracy_score(yt, np.asarray(y)))
  assert np.mean(aurocs) > 0.95, aurocs
  assert np.mean(baccs) > 0.85, baccs


def test_mutual_pairs_are_homogeneous_on_gaussians():
  """Observation (ii): mutually nearest pairs mostly share a class."""
  x, labels = _gaussian_patches(3)
  n, p, d = x.shape
  rates = []
  for b0 in range(0, n, 40):
    f = jnp.asarray(x[b0:b0 + 40]).reshape(-1, d)
    yt = np.repeat(labels[b0:b0 + 40], p)
    # As in train.py: all queries in one block.
    partner, valid = knn.mutual_nn_pairs(f, query_chunk=None, bank_chunk=128)
    partner, valid = np.asarray(partner), np.asarray(valid)
    i = np.flatnonzero(valid)
    assert len(i) > 50
    rates.append(np.mean(yt[i] == yt[partner[i]]))
  assert np.mean(rates) > 0.9, rates


def test_bank_distances_self_rule_and_chunking():
  bank = jnp.array([[0., 0.], [3., 0.], [0., 4.], [10., 10.]])
  valid = jnp.array([True, True, True, False])
  q = jnp.array([[0., 0.], [1., 0.], [10., 10.]])
  d = irmb.bank_distances(q, bank, valid, chunk=3)
  # q0 is in the bank → 2nd neighbour (3,0): 9; q1: nearest (0,0): 1;
  # q2: the identical row is invalid → nearest valid (0,4): 100 + 36.
  np.testing.assert_allclose(np.asarray(d), [9.0, 1.0, 136.0], rtol=1e-6)


def test_minmax_noise_sigma_and_synthesis():
  np.testing.assert_allclose(np.asarray(irmb.minmax(jnp.array([2., 4., 3.]))),
                             [0., 1., 0.5])
  np.testing.assert_array_equal(np.asarray(irmb.minmax(jnp.ones(3))), 0.0)
  rng = np.random.default_rng(0)
  x = rng.normal(size=(5, 3, 4)).astype(np.float32)
  want = x.std(axis=0, ddof=1).max(axis=0)
  np.testing.assert_allclose(np.asarray(irmb.noise_sigma(jnp.asarray(x))),
                             want, rtol=1e-5)
  d_norm = jnp.array([[0.1, 0.6, 0.95]] * 5)
  xn, noised = irmb.gaussian_synthesis(jax.random.key(0), jnp.asarray(x),
                                       d_norm, tau_n=0.5, tau_c=0.9)
  diff = np.asarray(xn) - x
  assert np.asarray(noised)[:, 1].all() and not np.asarray(noised)[:, [0, 2]].any()
  assert np.all(diff[:, [0, 2]] == 0) and np.all(diff[:, 1] != 0)
  assert np.asarray(irmb.bank_size(jnp.array(7), rho=0.5)) == 3
  assert np.asarray(irmb.bank_size(jnp.array(10), rho=0.3)) == 3
  assert np.asarray(irmb.bank_size(jnp.array(1), rho=0.5)) == 1  # (ours)


# ----------------------------------------------------------------- losses


def test_balanced_bce_hand_values():
  s = np.array([0.9, 0.2, 0.6, 0.3])
  z = jnp.asarray(np.log(s / (1 - s)), jnp.float32)
  y = jnp.array([1., 0., 1., 0.])
  want = -(np.log(0.9) + np.log(0.6)) / 2 - (np.log(0.8) + np.log(0.7)) / 2
  np.testing.assert_allclose(float(losses.balanced_bce(z, y)), want, rtol=1e-5)
  # An empty class contributes 0.
  want0 = -(np.log(0.8) + np.log(0.7) + np.log(0.1) + np.log(0.4)) / 4
  np.testing.assert_allclose(float(losses.balanced_bce(z, jnp.zeros(4))),
                             want0, rtol=1e-5)
  # log clamped at -100 (s = σ(-200) ≈ 0 with label 1).
  np.testing.assert_allclose(
      float(losses.balanced_bce(jnp.array([-200.]), jnp.array([1.]))), 100.0)


def test_mutual_smoothness_hand_values():
  s = np.array([0.9, 0.2, 0.6, 0.3])
  z = jnp.asarray(np.log(s / (1 - s)), jnp.float32)
  partner = jnp.array([2, 3, 0, 1])
  valid = jnp.array([True, True, False, False])
  np.testing.assert_allclose(
      float(losses.mutual_smoothness(z, partner, valid, kind="mae")),
      0.5 * (0.3 + 0.1) / 2, rtol=1e-5)
  np.testing.assert_allclose(
      float(losses.mutual_smoothness(z, partner, valid, kind="mse")),
      0.5 * (0.09 + 0.01) / 2, rtol=1e-5)
  kl = lambda p, q: p * np.log(p / q) + (1 - p) * np.log((1 - p) / (1 - q))
  want = 0.5 * (kl(0.9, 0.6) + kl(0.6, 0.9) + kl(0.2, 0.3) + kl(0.3, 0.2)) / 2
  np.testing.assert_allclose(
      float(losses.mutual_smoothness(z, partner, valid, kind="kl")), want,
      rtol=1e-5)
  assert float(losses.mutual_smoothness(z, partner, jnp.zeros(4, bool))) == 0
  assert float(losses.total_loss(1.0, 0.2, lam=2.5)) == pytest.approx(1.5)


# -------------------------------------------------------------- optimiser


def _step_config(*, dim, num_images, **overrides):
  """A StepConfig from the FUN-AD defaults with some fields replaced."""
  cfg = funad_config.default_config("paper")
  for k, v in overrides.items():
    cfg[k] = v
  return funad.step_config(cfg, dim=dim, num_images=num_images)


def test_rmsprop_matches_torch_semantics():
  """5 steps against a numpy transcription of torch.optim.RMSprop."""
  cfg = _step_config(dim=2, num_images=1, lr=0.01, decay=0.99, eps=1e-8,
                     momentum=0.2)
  opt = step_lib.make_optimizer(cfg)
  rng = np.random.default_rng(0)
  p = rng.normal(size=6).astype(np.float32)
  grads = rng.normal(size=(5, 6)).astype(np.float32)
  # PyTorch: v = α v + (1−α) g²; buf = μ buf + g / (√v + ε); p -= lr·buf.
  p_ref, v, buf = p.astype(np.float64), np.zeros(6), np.zeros(6)
  params = jnp.asarray(p)
  state = opt.init(params)
  for g in grads:
    v = 0.99 * v + 0.01 * g.astype(np.float64) ** 2
    buf = 0.2 * buf + g / (np.sqrt(v) + 1e-8)
    p_ref = p_ref - 0.01 * buf
    upd, state = opt.update(jnp.asarray(g), state, params)
    params = params + upd
  np.testing.assert_allclose(np.asarray(params), p_ref, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------- train step


def _small_setup(n=24, p=9, d=8, **kw):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(n, p, d)).astype(np.float32)
  x[:3, :2] += 4.0
  cfg = _step_config(dim=d, num_images=n, hidden=(16, 8), score_chunk=5,
                     knn_chunk=32, lr=1e-3, **kw)
  rows, chunk = step_lib.padded_size(n, cfg.score_chunk)
  cfg = step_lib.StepConfig(**{**cfg.__dict__, "score_chunk": chunk})
  feats = jnp.asarray(step_lib.pad_images(x, rows))
  valid = jnp.arange(rows) < n
  return cfg, feats, valid, rows


def _np_leaky(x, slope=0.2):
  return np.where(x >= 0, x, slope * x)


def _np_localnet(params, x, *, logits=False):
  """numpy float64 LocalNet: f = LeakyReLU(x W + b), then the MLP → σ(z)."""
  prm = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), params)
  x = np.asarray(x, np.float64)
  f = _np_leaky(x @ prm["adaptor"]["kernel"] + prm["adaptor"]["bias"])
  h, i = f, 0
  while f"disc_{i + 1}" in prm:
    h = _np_leaky(h @ prm[f"disc_{i}"]["kernel"] + prm[f"disc_{i}"]["bias"])
    i += 1
  z = (h @ prm[f"disc_{i}"]["kernel"] + prm[f"disc_{i}"]["bias"])[..., 0]
  return (z if logits else 1 / (1 + np.exp(-z))), f


def _np_step_metrics(cfg, params, x, n, batch_idx, rng):
  """A plain numpy (float64) transcription of one FUN-AD iteration's losses
  and counts (METHODS §1 steps 1–7), independent of irmb/losses/knn. The
  random draws reuse the step's keys and jax.random primitives only."""
  rows, p, d = x.shape
  x = np.asarray(x, np.float64)
  k_bank, k_noise = jax.random.split(rng)
  # 1. Image scores = max patch score; padding rows are not images.
  s_all, _ = _np_localnet(params, x[:n], logits=cfg.score_logits)
  scores = s_all.max(1)
  # 2. Candidates: min-max normalised score < τ_n.
  lo, hi = scores.min(), scores.max()
  norm = (scores - lo) / (hi - lo) if hi > lo else np.zeros(n)
  cand = np.zeros(rows, bool)
  cand[:n] = norm < cfg.tau_n
  # 3. ⌊ρ|C|⌋ candidates, ranked by a uniform key.
  m = max(int(np.floor(cand.sum() * cfg.rho + 1e-4)), 1)
  max_images = max(1, int(np.floor(cfg.rho * cfg.num_images + 1e-9)))
  u = np.asarray(jax.random.uniform(k_bank, (rows,)))
  order = np.argsort(np.where(cand, u, 2.0 + u), kind="stable")[:max_images]
  img_valid = np.arange(max_images) < m
  if cfg.bank_patches > 0:
    k_bank, k_sub = jax.random.split(k_bank)
    total = max_images * p
    flat_valid = np.repeat(img_valid, p)
    u = np.asarray(jax.random.uniform(k_sub, (total,)))
    flat = np.argsort(np.where(flat_valid, u, 2.0 + u),
                      kind="stable")[:min(cfg.bank_patches, total)]
    src, pos_b, bank_valid = order[flat // p], flat % p, flat_valid[flat]
    bank_in = x[src, pos_b]
  else:
    src = np.repeat(order, p)
    bank_in = x[order].reshape(-1, d)
    bank_valid = np.repeat(img_valid, p)
  bank = bank_in if cfg.distance_on_input else _np_localnet(params, bank_in)[1]
  batch_idx = np.asarray(batch_idx)
  if cfg.bank_exclude_batch:
    bank_valid = bank_valid & ~np.isin(src, batch_idx)
  xb = x[batch_idx]
  if 0 < cfg.batch_patches < p:
    k_bank, k_pos = jax.random.split(k_bank)
    xb = xb[:, np.asarray(jax.random.permutation(k_pos, p))[:cfg.batch_patches]]
  b, pb = xb.shape[:2]
  f = _np_localnet(params, xb)[1].reshape(b * pb, d)
  q = xb.reshape(b * pb, d) if cfg.distance_on_input else f
  # 4. Squared L2 to the bank; a 1st distance < 1e-2 is the query itself.
  dist = ((q[:, None] - bank[None, bank_valid]) ** 2).sum(-1)
  dist.sort(axis=1)
  dd = np.where(dist[:, 0] < 1e-2, dist[:, min(1, dist.shape[1] - 1)],
                dist[:, 0])
  if cfg.d_norm == "minmax":
    dn = (dd - dd.min()) / (dd.max() - dd.min())
  elif cfg.d_norm == "rank":
    dn = np.argsort(np.argsort(dd, kind="stable"), kind="stable") / (len(dd) - 1)
  else:
    q_lo, q_hi = np.percentile(dd, [cfg.d_norm_lo, cfg.d_norm_hi])
    dn = np.clip((dd - q_lo) / (q_hi - q_lo), 0, 1)
  y = dn > cfg.tau_n
  # 6. N(0, σ_c²) on the input features of τ_n < d̃ < τ_c.
  noised = (dn > cfg.tau_n) & (dn < cfg.tau_c) & cfg.noise
  sigma = xb.std(axis=0, ddof=cfg.noise_ddof).max(axis=0)
  eps = np.asarray(jax.random.normal(k_noise, xb.shape, jnp.float32)) * sigma
  xn = xb + np.where(noised.reshape(b, pb)[..., None], eps, 0.0)
  # 7. Mutual nearest neighbours among the adapted batch features.
  fd = ((f[:, None] - f[None]) ** 2).sum(-1)
  np.fill_diagonal(fd, np.inf)
  nn = fd.argmin(1)
  pairs = [(i, j) for i, j in enumerate(nn) if i < j and nn[j] == i]
  # Loss.
  z = _np_localnet(params, xn, logits=True)[0].reshape(-1)
  if cfg.bce == "logit":
    t = dn if cfg.soft_labels else y.astype(float)
    per = np.maximum(z, 0) - z * t + np.log1p(np.exp(-np.abs(z)))
    bce = sum(per[k].mean() for k in (y, ~y) if k.any())
  else:
    log_sig = lambda v: -np.logaddexp(0, -v)
    bce = (-(np.maximum(log_sig(z[y]), -100).mean() if y.any() else 0.0)
           - (np.maximum(log_sig(-z[~y]), -100).mean() if (~y).any() else 0.0))
  s = 1 / (1 + np.exp(-_np_localnet(params, xb, logits=True)[0].reshape(-1)))
  ms = 0.5 * np.mean([abs(s[i] - s[j]) for i, j in pairs]) if pairs else 0.0
  return {"loss": bce + cfg.lam * ms, "bce": bce, "smoothness": ms,
          "num_candidates": int(cand.sum()), "bank_images": m,
          "pseudo_anomalous_fraction": y.mean(),
          "noised_fraction": noised.mean(), "num_pairs": len(pairs),
          "scores": scores}


def _assert_step_metrics(got, want):
  for k in ("num_candidates", "bank_images", "num_pairs"):
    assert int(got[k]) == want[k], k
  for k in ("pseudo_anomalous_fraction", "noised_fraction"):
    assert float(got[k]) == pytest.approx(want[k], abs=1e-6), k
  for k in ("loss", "bce", "smoothness"):
    assert float(got[k]) == pytest.approx(want[k], rel=1e-4, abs=1e-6), k


def test_train_step_compiles_once_and_learns_shapes():
  cfg, feats, valid, rows = _small_setup()
  assert rows == 25  # padded to a multiple of the score chunk
  traces = []

  def counted(*a):
    traces.append(1)
    return step_lib.train_step_fn(cfg, *a)

  step = jax.jit(counted)
  state = step_lib.init_state(cfg, jax.random.key(0), rows)
  for i in range(3):
    idx = jnp.asarray(np.arange(6) + 3 * i, jnp.int32)
    # Each iteration's losses and counts equal a numpy transcription of
    # METHODS §1 on the parameters it starts from.
    want = _np_step_metrics(cfg, state["params"], feats, 24, idx,
                            jax.random.key(i))
    state, m = step(state, idx, jax.random.key(i), feats, valid)
    _assert_step_metrics(m, want)
    np.testing.assert_allclose(np.asarray(state["scores"])[:24],
                               want["scores"], rtol=1e-5, atol=1e-7)
  assert len(traces) == 1 and step._cache_size() == 1
  assert int(state["step"]) == 3
  # The images of the loss's two BCE terms and pairs are all present.
  assert 0 < float(m["pseudo_anomalous_fraction"]) < 1
  assert int(m["num_pairs"]) > 0 and float(m["smoothness"]) > 0
  assert int(m["bank_images"]) == int(np.floor(0.5 * int(m["num_candidates"])))
  # The padding row is never a candidate, the real ones are scored.
  assert float(state["scores"][-1]) == 0.0 and float(state["scores"][0]) > 0
  jitted = step_lib.make_train_step(cfg)
  state2 = step_lib.init_state(cfg, jax.random.key(0), rows)
  for i in range(2):
    state2, _ = jitted(state2, jnp.arange(6, dtype=jnp.int32),
                       jax.random.key(i), feats, valid)
  assert jitted._cache_size() == 1


def test_refresh_every_reuses_scores():
  cfg, feats, valid, rows = _small_setup(refresh_every=3)
  step = step_lib.make_train_step(cfg, donate=False)
  state = step_lib.init_state(cfg, jax.random.key(0), rows)
  seen = []
  for i in range(4):
    state, _ = step(state, jnp.arange(6, dtype=jnp.int32), jax.random.key(i),
                    feats, valid)
    seen.append(np.asarray(state["scores"]))
  np.testing.assert_array_equal(seen[0], seen[1])
  np.testing.assert_array_equal(seen[0], seen[2])
  assert not np.array_equal(seen[2], seen[3])  # step 3 rescored


# --------------------------------------------------------------- end to end


def _blob_features(seed, n_normal, n_anom, h=4, w=4, d=16):
  """Gaussian-blob token features; anomalous images get 2–3 shifted patches."""
  rng = np.random.default_rng(seed)
  centre = np.random.default_rng(99).normal(size=(h * w, d)) * 0.5
  n = n_normal + n_anom
  x = centre[None] + 0.3 * rng.normal(size=(n, h * w, d))
  labels = np.array([0] * n_normal + [1] * n_anom)
  direction = np.random.default_rng(7).normal(size=d)
  direction /= np.linalg.norm(direction)
  for i in range(n_normal, n):
    pos = rng.choice(h * w, rng.integers(2, 4), replace=False)
    x[i, pos] += 2.5 * direction + 0.5 * rng.normal(size=(len(pos), d))
  perm = rng.permutation(n)
  return x[perm].reshape(n, h, w, d).astype(np.float32), labels[perm]


def _e2e_config(epochs):
  cfg = ml_collections.ConfigDict()
  cfg.seed = 0
  cfg.dataset = ml_collections.ConfigDict(dict(image_size=16))
  cfg.funad = funad_config.default_config("paper")
  cfg.funad.update(dict(epochs=epochs, batch_size=8, eval_every=2,
                        checkpoint_every=2, hidden=(64, 16), lr=2e-3,
                        score_chunk=8, knn_chunk=256))
  return cfg


@pytest.mark.slow  # ~40 s on a contended 2-core CPU: three short fits.
def test_end_to_end_training_beats_untrained(tmp_path):
  train_x, _ = _blob_features(0, 36, 4)  # 10% contamination
  test_x, test_y = _blob_features(1, 20, 20)
  cfg = _e2e_config(epochs=6)
  params0 = model_lib.init_params(
      jax.random.fold_in(jax.random.key(0), 0), 16, hidden=(64, 16))
  s0, _ = funad.predict_features(cfg, {"params": params0}, test_x,
                                 with_maps=False)
  auroc0 = metrics.roc_auc_score(test_y, s0)
  out = funad.fit(cfg, train_x, eval_features=test_x, eval_labels=test_y)
  scores, maps = funad.predict_features(cfg, {"params": out["params"]}, test_x)
  auroc = metrics.roc_auc_score(test_y, scores)
  assert maps.shape == (40, 16, 16)
  assert auroc > 0.9, (auroc0, auroc)
  assert auroc0 < 0.8, (auroc0, auroc)
  # One history row per epoch; the test set is evaluated every 2nd.
  assert [h["epoch"] for h in out["history"]] == [1, 2, 3, 4, 5, 6]
  assert [h["epoch"] for h in out["history"]
          if "test_image_auroc" in h] == [2, 4, 6]
  assert "TEST-SELECTED" in out["oracle"]["note"]

  # Resume: 4 epochs, then continue to 6 from the checkpoint → identical.
  cfg4 = _e2e_config(epochs=4)
  funad.fit(cfg4, train_x, workdir=str(tmp_path / "b"))
  resumed = funad.fit(cfg, train_x, workdir=str(tmp_path / "b"))
  jax.tree_util.tree_map(
      functools.partial(np.testing.assert_allclose, rtol=0, atol=0),
      resumed["params"], out["params"])


def test_eval_every_zero_and_oracle_by_image_and_pixel_auroc(tmp_path):
  """eval_every=0: test set scored after the last epoch only (no division by
  zero); the history has the pixel AUROC of the maps and the oracle the mean
  of image and pixel AUROC (METHODS §1)."""
  train_x, train_y = _blob_features(0, 18, 2)
  test_x, test_y = _blob_features(1, 6, 6)
  masks = np.zeros((12, 16, 16), np.float32)
  masks[test_y == 1, :4, :12] = 1.0  # not symmetric: the maps' axes count
  cfg = _e2e_config(epochs=2)
  cfg.funad.eval_every = 0
  cfg.funad.checkpoint_every = 1
  out = funad.fit(cfg, train_x, eval_features=test_x, eval_labels=test_y,
                  eval_masks=masks, workdir=str(tmp_path),
                  train_labels=train_y)
  assert [h["epoch"] for h in out["history"]] == [1, 2]
  assert "test_image_auroc" not in out["history"][0]
  assert "transductive_image_auroc" not in out["history"][0]
  last = out["history"][1]
  # Expected values computed independently of dicofun: the numpy LocalNet
  # on the final parameters, image score = max patch probability, map =
  # half-pixel bilinear 4 → 16 then scipy's Gaussian blur (σ = blur_sigma),
  # the history's pixel AUROC on every 4th pixel per axis (sklearn).
  def np_scores(feats):
    s, _ = _np_localnet(out["params"], feats.reshape(len(feats), 16, 16))
    return s.max(1), s.reshape(-1, 4, 4)

  # The transductive learning curve: the training set scored with the final
  # (inference) parameters on the evaluated epoch, against its true labels.
  train_scores, _ = np_scores(train_x)
  assert last["transductive_image_auroc"] == pytest.approx(
      metrics.roc_auc_score(train_y, train_scores))
  scores, patch = np_scores(test_x)
  src = np.clip((np.arange(16) + 0.5) / 4 - 0.5, 0, 3)
  i0 = np.floor(src).astype(int)
  i1, wt = np.minimum(i0 + 1, 3), src - i0
  resize = np.zeros((16, 4))
  np.add.at(resize, (np.arange(16), i0), 1 - wt)
  np.add.at(resize, (np.arange(16), i1), wt)
  up = np.einsum("ij,njk,lk->nil", resize, patch, resize)
  maps = np.stack([ndimage.gaussian_filter(m, cfg.funad.blur_sigma,
                                           mode="reflect", truncate=4.0)
                   for m in up])
  want = {"image_auroc": metrics.roc_auc_score(test_y, scores),
          "pixel_auroc": metrics.roc_auc_score(
              masks[:, ::4, ::4].reshape(-1) > 0.5,
              maps[:, ::4, ::4].reshape(-1))}
  assert last["test_image_auroc"] == pytest.approx(want["image_auroc"])
  assert last["test_pixel_auroc"] == pytest.approx(want["pixel_auroc"])
  assert out["oracle"]["epoch"] == 2
  assert out["oracle"]["selection_value"] == pytest.approx(
      (want["image_auroc"] + want["pixel_auroc"]) / 2)
  assert out["oracle"]["pixel_auroc"] == pytest.approx(want["pixel_auroc"])


def test_training_writes_tensorboard_scalars_and_figure_per_epoch(tmp_path):
  """A tiny real fit: every epoch's losses, the evaluations and images/s are
  in the event file, and the anomaly-map figure at each evaluation."""
  train_x, _ = _blob_features(0, 18, 2)
  test_x, test_y = _blob_features(1, 6, 6)
  cfg = _e2e_config(epochs=3)
  cfg.funad.eval_every = 2
  cfg.dataset.crop_fraction = 1.0
  pick = training.figure_indices(test_y)
  images = np.zeros((len(pick), 16, 16, 3), np.float32)
  logdir = str(tmp_path / "tb")
  out = funad.fit(cfg, train_x, eval_features=test_x, eval_labels=test_y,
                  eval_figure=(pick, images, None), summary_dir=logdir)
  scalars = summary.read_scalars(logdir)
  # 18 images, batch 8: 2 iterations of 8 images per epoch; TensorBoard's
  # x axis is the optimiser step (issue 27), the paper preset's history
  # still counts epochs.
  assert [(h["epoch"], h["step"]) for h in out["history"]] == [
      (1, 2), (2, 4), (3, 6)]
  for key in ("loss", "bce", "smoothness"):
    assert scalars[f"history/{key}"] == [
        (h["step"], pytest.approx(h[key], rel=1e-6)) for h in out["history"]]
  assert scalars["history/test_image_auroc"] == [
      (h["step"], pytest.approx(h["test_image_auroc"], rel=1e-6))
      for h in out["history"] if "test_image_auroc" in h]
  assert [s for s, _ in scalars["history/test_image_auroc"]] == [4, 6]
  assert [s for s, _ in scalars["speed/images_per_second"]] == [2, 4, 6]
  figures = summary.read_images(logdir)[training.FIGURE_TAG]
  assert [s for s, _ in figures] == [4, 6]
  shape = np.asarray(Image.open(io.BytesIO(figures[0][1]))).shape
  assert shape[2] == 3 and shape[1] > shape[0] / 2  # 4 image columns.


def test_resume_under_another_lr_is_refused_unless_restart(tmp_path):
  train_x, _ = _blob_features(0, 14, 2)
  cfg = _e2e_config(epochs=1)
  cfg.restart = False
  funad.fit(cfg, train_x, workdir=str(tmp_path))
  cfg2 = _e2e_config(epochs=2)
  cfg2.funad.lr = 1e-2
  cfg2.restart = False
  with pytest.raises(training.ResumeMismatchError,
                     match=r"funad.lr: 0.002 \(checkpoint\) vs 0.01 \(now\)"):
    funad.fit(cfg2, train_x, workdir=str(tmp_path))
  cfg2.restart = True  # --config.restart=True
  restarted = funad.fit(cfg2, train_x, workdir=str(tmp_path))
  fresh = funad.fit(cfg2, train_x)
  jax.tree_util.tree_map(
      functools.partial(np.testing.assert_allclose, rtol=0, atol=0),
      restarted["params"], fresh["params"])


# --------------------------------------------- (ours) knobs and presets


def test_draw_bank_patches_without_replacement_from_valid_images():
  idx = jnp.asarray([4, 1, 3, 0], jnp.int32)
  valid = jnp.asarray([True, True, False, False])
  img, patch, ok = irmb.draw_bank_patches(
      jax.random.key(0), idx, valid, patches_per_image=5, num_patches=8)
  img, patch, ok = map(np.asarray, (img, patch, ok))
  assert ok.all() and set(img.tolist()) <= {4, 1}
  assert len({(i, q) for i, q in zip(img, patch)}) == 8  # no repeats
  # More rows asked than the 10 valid positions: the rest are invalid.
  img, patch, ok = irmb.draw_bank_patches(
      jax.random.key(1), idx, valid, patches_per_image=5, num_patches=14)
  img, patch, ok = map(np.asarray, (img, patch, ok))
  assert int(np.sum(ok)) == 10
  assert sorted(zip(img[ok].tolist(), patch[ok].tolist())) == sorted(
      (i, q) for i in (1, 4) for q in range(5))


def test_percentile_and_rank_normalisation_hand_values():
  d = jnp.asarray([0.0, 1.0, 2.0, 3.0, 4.0, 100.0], jnp.float32)
  # numpy-style linear percentiles: q20 = 1.0, q60 = 3.0.
  np.testing.assert_allclose(
      np.asarray(irmb.percentile_norm(d, lo=20, hi=60)),
      [0.0, 0.0, 0.5, 1.0, 1.0, 1.0], atol=1e-6)
  # One extreme patch squeezes min-max: only it is above 0.5.
  np.testing.assert_allclose(np.asarray(irmb.minmax(d)),
                             [0, .01, .02, .03, .04, 1.0], atol=1e-6)
  np.testing.assert_allclose(
      np.asarray(irmb.rank_norm(jnp.asarray([3.0, 1.0, 2.0, 0.0]))),
      [1.0, 1 / 3, 2 / 3, 0.0], atol=1e-6)
  # A zero span is 0 everywhere, not NaN.
  np.testing.assert_array_equal(
      np.asarray(irmb.percentile_norm(jnp.ones(4), lo=50, hi=99)), 0.0)
  with pytest.raises(ValueError, match="d_norm 'nope'"):
    irmb.normalise_distances(d, kind="nope", lo=50, hi=99)


def test_logit_bce_has_no_dead_clamp():
  z = jnp.asarray([-300.0, 5.0])
  y = jnp.asarray([1.0, 0.0])
  g_clamped = jax.grad(lambda q: losses.balanced_bce(q, y))(z)
  g_logit = jax.grad(lambda q: losses.balanced_bce_logit(q, y))(z)
  # 100 (clamped −log σ(−300)) + softplus(5) = 100 + 5.006715.
  assert float(losses.balanced_bce(z, y)) == pytest.approx(105.006715,
                                                           abs=1e-4)
  assert float(losses.balanced_bce_logit(z, y)) == pytest.approx(
      300.0 + 5.006715, abs=1e-3)
  assert float(g_clamped[0]) == 0.0  # saturated: no gradient at all
  assert float(g_logit[0]) == pytest.approx(-1.0)
  # Same values where the clamp is inactive.
  z2 = jnp.asarray([0.3, -1.2])
  assert float(losses.balanced_bce_logit(z2, y)) == pytest.approx(
      float(losses.balanced_bce(z2, y)), rel=1e-6)
  # Soft targets: −[t log σ(z) + (1−t) log σ(−z)] at z = 0 is log 2 whatever
  # t; the labels still split the two terms.
  zero = jnp.zeros(2)
  assert float(losses.balanced_bce_logit(zero, y, jnp.asarray([.7, .2]))
               ) == pytest.approx(2 * np.log(2), rel=1e-6)


def test_lr_schedule_warmup_then_cosine_to_one_percent():
  cfg = _step_config(dim=2, num_images=1, lr=1e-3, schedule="cosine",
                     warmup_steps=2)
  cfg = step_lib.StepConfig(**{**cfg.__dict__, "total_steps": 6})
  lr = step_lib.learning_rate(cfg)
  assert float(lr(0)) == 0.0 and float(lr(1)) == pytest.approx(5e-4)
  assert float(lr(2)) == pytest.approx(1e-3)
  # Halfway through the 4 decay steps: 1e-5 + (1e-3 − 1e-5)·(1 + cos π/2)/2.
  assert float(lr(4)) == pytest.approx(1e-5 + 0.99e-3 / 2, rel=1e-5)
  assert float(lr(6)) == pytest.approx(1e-5)
  paper = _step_config(dim=2, num_images=1)
  assert step_lib.learning_rate(paper) == 2e-5  # constant, a float


def test_ema_state_is_a_copy_and_tracks_the_parameters():
  cfg, feats, valid, rows = _small_setup(
      bank_patches=40, d_norm="percentile", bce="logit", ema=0.9)
  step = step_lib.make_train_step(cfg)  # donated: EMA must be a copy
  state = step_lib.init_state(cfg, jax.random.key(0), rows)
  leaf = lambda t: np.asarray(jax.tree_util.tree_leaves(t)[0])
  p0 = leaf(state["params"])
  np.testing.assert_array_equal(leaf(state["ema"]), p0)
  state, m = step(state, jnp.arange(6, dtype=jnp.int32), jax.random.key(0),
                  feats, valid)
  assert np.isfinite(float(m["loss"]))
  # One step: ema = 0.9·p0 + 0.1·p1.
  np.testing.assert_allclose(leaf(state["ema"]),
                             0.9 * p0 + 0.1 * leaf(state["params"]),
                             rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("kw", [
    dict(bank_exclude_batch=True),
    dict(distance_on_input=True, batch_patches=4),
    dict(bank_exclude_batch=True, bank_patches=30, distance_on_input=True),
    dict(soft_labels=True, d_norm="rank", score_logits=True),
    dict(bank_patches=30, soft_labels=True, d_norm="percentile")])
def test_ours_bank_variants_step(kw):
  """Each (ours) variant's losses, counts and cached scores equal the numpy
  transcription of the iteration with that variant (_np_step_metrics)."""
  cfg, feats, valid, rows = _small_setup(bce="logit", **kw)
  step = step_lib.make_train_step(cfg, donate=False)
  state = step_lib.init_state(cfg, jax.random.key(0), rows)
  for i in range(2):
    want = _np_step_metrics(cfg, state["params"], feats, 24,
                            np.arange(6), jax.random.key(i))
    state, m = step(state, jnp.arange(6, dtype=jnp.int32), jax.random.key(i),
                    feats, valid)
    _assert_step_metrics(m, want)
    np.testing.assert_allclose(np.asarray(state["scores"])[:24],
                               want["scores"], rtol=1e-5, atol=1e-6)
  if kw.get("batch_patches"):  # pairs among 6·4 patches at most
    assert int(m["num_pairs"]) <= 12


@pytest.mark.parametrize("on_input,exclude,want", [
    (True, True, 2 / 8), (True, False, 1 / 8), (False, True, 0.0)])
def test_distance_on_input_and_exclusion_pseudo_labels_by_hand(
    on_input, exclude, want):
  """A zero adaptor kernel makes every adapted feature equal (all adapted
  distances 0, all scores tied: every image a candidate, bank = all 8).
  On the input features, image 0's two shifted patches are 0.2 apart
  (d = 0.12, not a self-match) and ~10 from every other image; image 1's
  patch 3 is shifted by 0.5 (d ≈ 0.66). Without exclusion image 0's patches
  find each other (d̃ = 0.12/0.66 < τ_n: only image 1's patch is labelled);
  with it they are the farthest (2 of the batch's 8 patches)."""
  n, p, d = 8, 4, 3
  x = np.zeros((n, p, d), np.float32)
  x += np.arange(p, dtype=np.float32)[None, :, None] * 0.01
  x[0, 0] += 10.0
  x[0, 1] += 10.2 - 0.01
  x[1, 3] += 0.5
  cfg = _step_config(dim=d, num_images=n, hidden=(4, 2), score_chunk=8,
                     knn_chunk=32, rho=1.0, tau_n=0.5, noise=False,
                     distance_on_input=on_input, bank_exclude_batch=exclude)
  state = step_lib.init_state(cfg, jax.random.key(0), n)
  adaptor = state["params"]["adaptor"]
  adaptor["kernel"] = jnp.zeros_like(adaptor["kernel"])
  _, m = step_lib.train_step_fn(cfg, state, jnp.asarray([0, 1], jnp.int32),
                                jax.random.key(0), jnp.asarray(x),
                                jnp.ones(n, bool))
  assert int(m["num_candidates"]) == 8 and int(m["bank_images"]) == 8
  assert float(m["pseudo_anomalous_fraction"]) == pytest.approx(want)


@pytest.mark.parametrize("kernel,want", [
    (np.diag([1.0, 1.0, 0.5]), 2 / 8),  # The paper's path, below.
    (np.zeros((3, 3)), 0.0),  # No adaptor: every adapted distance 0.
    (np.eye(3), 3 / 8)])  # Distances as on the input features.
def test_default_pseudo_labels_on_adapted_features_by_hand(kernel, want):
  """The paper's path (METHODS §1 steps 1–5): distances on the *adapted*
  features f = LeakyReLU(W x), the batch's own images in the bank (a
  self-match, d < 1e-2, takes the 2nd neighbour), d̃ min-max normalised over
  the batch, y = 1[d̃ > τ_n = 0.5].

  Eight images of 4 patches x_p = (1 + p, 1, 1); every patch has exact
  copies in the other images (d = 0) except three shifted ones of the batch
  (images 0 and 1). With W = diag(1, 1, 0.5), b = 0 (inputs positive, so
  LeakyReLU is the identity), the adapted shifts and their squared
  distances to the nearest copy of x_p are: image 0 patch 0 by (0, 3, 0):
  d = 9; image 1 patch 3 by (0, 2.5, 0): d = 6.25; image 1 patch 2 by
  (0, 0, 2.5 · 0.5): d = 1.5625. Min-max over the batch's 8 patches (min 0):
  d̃ = 1, 0.694, 0.174 → 2 of 8 labelled. With W = I the third is
  6.25 / 9 → 3 of 8; with W = 0 nothing (d̃ all 0)."""
  n, p, d = 8, 4, 3
  x = np.ones((n, p, d), np.float32)
  x[:, :, 0] += np.arange(p, dtype=np.float32)
  x[0, 0, 1] += 3.0
  x[1, 3, 1] += 2.5
  x[1, 2, 2] += 2.5
  cfg = _step_config(dim=d, num_images=n, hidden=(4, 2), score_chunk=8,
                     knn_chunk=32, rho=1.0, tau_n=0.5, noise=False)
  assert (cfg.distance_on_input, cfg.bank_exclude_batch, cfg.d_norm) == (
      False, False, "minmax")
  state = step_lib.init_state(cfg, jax.random.key(0), n)
  params = state["params"]
  params["adaptor"]["kernel"] = jnp.asarray(kernel, jnp.float32)
  params["adaptor"]["bias"] = jnp.zeros(d, jnp.float32)
  # A constant discriminator: tied scores, Ŝ = 0, every image a candidate
  # and (ρ = 1) in the bank.
  params["disc_2"]["kernel"] = jnp.zeros_like(params["disc_2"]["kernel"])
  _, m = step_lib.train_step_fn(cfg, state, jnp.asarray([0, 1], jnp.int32),
                                jax.random.key(0), jnp.asarray(x),
                                jnp.ones(n, bool))
  assert int(m["num_candidates"]) == 8 and int(m["bank_images"]) == 8
  assert float(m["pseudo_anomalous_fraction"]) == pytest.approx(want)


def test_presets_paper_is_todays_recipe_and_default_is_the_measured_best():
  paper = funad_config.default_config("paper")
  assert paper.preset == "paper"
  assert (paper.refresh_every, paper.lr, paper.epochs, paper.eval_every,
          paper.bank_patches, paper.batch_patches, paper.d_norm, paper.bce,
          paper.schedule, paper.warmup_steps, paper.ema, paper.score_logits,
          paper.soft_labels, paper.distance_on_input,
          paper.bank_exclude_batch, paper.bank_weight) == (
              1, 2e-5, 1500, 50, 0, 0, "minmax", "clamped", "constant", 0,
              0.0, False, False, False, False, 0.0)
  default = funad_config.default_config()
  assert funad_config.DEFAULT_PRESET == "default" == default.preset
  assert (default.refresh_every, default.bank_patches, default.batch_patches,
          default.d_norm, default.d_norm_lo, default.d_norm_hi,
          default.distance_on_input, default.bce, default.lr,
          default.schedule, default.warmup_steps, default.ema,
          default.score_logits, default.steps, default.min_epochs,
          default.eval_every, default.checkpoint_every, default.bank_weight,
          default.bank_trust) == (
              25, 8192, 64, "percentile", 99.0, 99.9, True, "logit", 1e-3,
              "cosine", 25, 0.99, True, 100, 2, 25, 25, 0.75, 0.9)
  # The two differ only in (ours) knobs, lr, the budget (steps, issue 27)
  # and its cadence.
  diff = {k for k in paper if paper[k] != default[k]}
  assert diff == set(funad_config.PRESETS["default"]) | {"preset"}
  with pytest.raises(ValueError, match="funad.preset='nope'"):
    funad_config.default_config("nope")


def test_score_logits_ranks_like_probabilities_and_old_models_load():
  x, _ = _blob_features(1, 6, 6)
  cfg = _e2e_config(epochs=1)
  params = model_lib.init_params(jax.random.key(0), 16, hidden=(64, 16))
  probs, _ = funad.predict_features(cfg, {"params": params}, x,
                                    with_maps=False)
  cfg.funad.score_logits = True
  logits, _ = funad.predict_features(cfg, {"params": params}, x,
                                     with_maps=False)
  # max of σ(z) = σ(max z): the logit scores are the probabilities' logits.
  np.testing.assert_allclose(1 / (1 + np.exp(-logits)), probs, rtol=1e-5)
  # A config saved before the knob existed scores probabilities.
  old = ml_collections.ConfigDict(cfg.to_dict())
  del old.funad["score_logits"]
  again, _ = funad.predict_features(old, {"params": params}, x,
                                    with_maps=False)
  np.testing.assert_array_equal(again, probs)


def test_cosine_run_length_is_part_of_the_resume_fingerprint(tmp_path):
  """Extending a constant-lr run resumes (above); a cosine run's schedule
  depends on its length, so a checkpoint of another length is refused."""
  train_x, _ = _blob_features(0, 14, 2)
  cfg = _e2e_config(epochs=1)
  cfg.restart = False
  cfg.funad.schedule = "cosine"
  funad.fit(cfg, train_x, workdir=str(tmp_path))
  cfg2 = _e2e_config(epochs=2)
  cfg2.restart = False
  cfg2.funad.schedule = "cosine"
  with pytest.raises(training.ResumeMismatchError,
                     match=r"funad.total_steps: 2 \(checkpoint\) vs 4 "
                     r"\(now\)"):
    funad.fit(cfg2, train_x, workdir=str(tmp_path))
