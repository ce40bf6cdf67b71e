"""FUN-AD's trusted bank (ours): the training images the trained
discriminator does not flag, kept as a memory bank and blended with it."""

import importlib.util
import os

import jax
import ml_collections
import numpy as np
import pytest

from dicofun import configlib
from dicofun.methods.funad import config as funad_config
from dicofun.methods.funad import method as funad
from dicofun.methods.funad import model as model_lib


def _config(weight, backbone="dinov2_vits14"):
  cfg = ml_collections.ConfigDict()
  cfg.seed = 0
  cfg.backbone = ml_collections.ConfigDict(dict(name=backbone))
  cfg.dataset = ml_collections.ConfigDict(dict(image_size=8))
  cfg.funad = funad_config.default_config("default")
  cfg.funad.update(dict(hidden=(16, 8), score_chunk=4, bank_weight=weight,
                        bank_coreset=1.0, bank_trust=0.5))
  return cfg


def test_standardiser_and_blend_by_hand():
  x = np.array([1.0, 2.0, 4.0, 7.0, 100.0])
  # median 4; |x − 4| = 3, 2, 0, 3, 96 → MAD 3; spread 1.4826 · 3.
  loc, scale = funad.standardiser(x)
  assert loc == 4.0
  assert scale == pytest.approx(4.4478)
  disc = np.array([[[5.0]]])
  knn = np.array([[[3.0]]])
  stats = np.array([1.0, 2.0, 0.5, 0.25])  # loc_d, sd, loc_k, sk
  # z_d = (5 − 1)/2 = 2; z_k = (3 − 0.5)/0.25 = 10.
  assert funad.blend(disc, knn, stats, 0.25)[0, 0, 0] == pytest.approx(
      0.75 * 2 + 0.25 * 10)
  assert funad.blend(disc, knn, stats, 1.0)[0, 0, 0] == pytest.approx(10)
  # Weight 0 (or no bank) is the discriminator's own score, unchanged.
  assert funad.blend(disc, knn, stats, 0.0)[0, 0, 0] == 5.0
  assert funad.blend(disc, None, None, 0.5)[0, 0, 0] == 5.0
  # More than half tied (MAD 0): 1.253314 · mean |x − median|.
  assert funad.standardiser(np.array([0.0, 0.0, 0.0, 2.0, 6.0])) == (
      pytest.approx(0.0), pytest.approx(1.253314 * 8 / 5))
  # All-equal scores: the spread is floored, never 0.
  assert funad.standardiser(np.ones(7))[1] > 0


def test_trusted_images_are_the_rho_lowest_at_least_two():
  scores = np.array([5.0, 1.0, 3.0, 1.0, 9.0, 0.5])
  assert funad.trusted_images(scores, 0.5).tolist() == [
      False, True, False, True, False, True]
  # ⌊0.2 · 6⌋ = 1, raised to 2 (leave-one-out needs another image).
  assert funad.trusted_images(scores, 0.2).tolist() == [
      False, True, False, False, False, True]  # tie 1.0/1.0: lower index
  assert funad.trusted_images(scores, 1.0).all()


def _loo(patch, trusted):
  """Each image's patch distance to the trusted images' patches but its own."""
  n = len(patch)
  flat = patch.reshape(n, -1, patch.shape[-1])
  out = []
  for i in range(n):
    others = np.concatenate([flat[j] for j in range(n) if trusted[j] and j != i])
    out.append(np.sqrt(((flat[i][:, None] - others[None]) ** 2).sum(-1)
                       ).min(1))
  return np.stack(out).reshape(patch.shape[:3])


def test_trusted_bank_is_rho_of_the_images_rebuilt_from_the_blend(
    monkeypatch):
  rng = np.random.default_rng(0)
  n, h, w, c = 8, 2, 2, 3
  patch = rng.normal(size=(n, h, w, c)).astype(np.float32)
  patch[[0, 6]] += 20.0  # two far-off images
  # [CLS ‖ patch] tokens; the CLS half must not reach the ViT bank.
  cls = rng.normal(size=(n, 1, 1, c)).astype(np.float32) * 1000
  tokens = np.concatenate([np.broadcast_to(cls, patch.shape), patch], -1)
  disc = np.zeros((n, h, w), np.float32)
  # The discriminator ranks image 6 among the lowest 4, image 0 highest.
  disc[:, 0, 0] = [9.0, 1.0, 2.0, 4.0, 5.0, 6.0, 0.5, 3.0]
  monkeypatch.setattr(funad, "discriminator_patches",
                      lambda config, params, features: disc.copy())
  out = funad.trusted_bank(_config(0.5), None, tokens)
  first, last = out["rounds"]
  # Round 1: ⌊0.5 · 8⌋ = 4 lowest by the discriminator: 6, 1, 2, 7.
  assert np.flatnonzero(first["trusted"]).tolist() == [1, 2, 6, 7]
  np.testing.assert_allclose(first["train_bank"],
                             _loo(patch, first["trusted"]), rtol=1e-4)
  # Round 2 ranks by the blend (standardised on the training patches):
  # image 6, far from the other trusted images, leaves the bank.
  ld, sd, lk, sk = first["blend"]
  assert (ld, sd) == pytest.approx(funad.standardiser(disc), rel=1e-6)
  assert (lk, sk) == pytest.approx(
      funad.standardiser(first["train_bank"]), rel=1e-6)
  z = 0.5 * (disc - ld) / sd + 0.5 * (first["train_bank"] - lk) / sk
  want = np.zeros(n, bool)
  want[np.argsort(z.reshape(n, -1).max(1), kind="stable")[:4]] = True
  assert not want[6]
  np.testing.assert_array_equal(last["trusted"], want)
  assert out["trusted"] is last["trusted"]
  # coreset 1.0: the bank is every patch of the trusted images, CLS-free.
  np.testing.assert_array_equal(
      np.sort(out["bank"], 0), np.sort(patch[want].reshape(-1, c), 0))
  np.testing.assert_allclose(out["train_bank"], _loo(patch, want), rtol=1e-4)


def test_predict_features_blends_the_bank_and_weight_zero_is_the_paper():
  rng = np.random.default_rng(1)
  tokens = rng.normal(size=(6, 2, 2, 8)).astype(np.float32)
  params = model_lib.init_params(jax.random.key(0), 8, hidden=(16, 8))
  disc = funad.discriminator_patches(_config(0.0), params, tokens)
  bank = rng.normal(size=(5, 4)).astype(np.float32)
  stats = np.array([0.1, 2.0, 1.0, 0.5], np.float32)
  state = {"params": params, "bank": bank, "blend": stats}
  scores, maps = funad.predict_features(_config(0.5), state, tokens)
  knn = np.sqrt(((tokens[..., 4:].reshape(-1, 1, 4) - bank[None]) ** 2)
                .sum(-1).min(1)).reshape(6, 2, 2)
  want = 0.5 * (disc - 0.1) / 2.0 + 0.5 * (knn - 1.0) / 0.5
  np.testing.assert_allclose(scores, want.reshape(6, -1).max(1), rtol=1e-4,
                             atol=1e-5)
  assert maps.shape == (6, 8, 8)
  # Weight 0: the discriminator alone, the bank ignored.
  plain, _ = funad.predict_features(_config(0.0), state, tokens,
                                    with_maps=False)
  np.testing.assert_array_equal(plain, disc.reshape(6, -1).max(1))
  # A CNN's features (no CLS half) go to the bank whole.
  assert funad.bank_features(_config(0.5, "efficientnet_lite0"),
                             tokens).shape == tokens.shape


@pytest.mark.parametrize("arg, field", [("bank_weight=1.5", "bank_weight"),
                                        ("bank_coreset=0", "bank_coreset")])
def test_bank_knobs_are_checked(arg, field):
  spec = importlib.util.spec_from_file_location(
      "funad_mvtec_layout", os.path.join(os.path.dirname(__file__), "..",
                                         "configs", "funad_mvtec_layout.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  module.get_config("category=x,bank_weight=0.5")  # in range
  with pytest.raises(configlib.ConfigArgError, match=f"funad.{field}"):
    module.get_config(f"category=x,{arg}")


def test_bank_denoise_leaves_out_the_lof_outliers_of_the_trusted_images(
    monkeypatch):
  rng = np.random.default_rng(2)
  n, h, w, c = 12, 2, 2, 3
  patch = rng.normal(size=(n, h, w, c)).astype(np.float32)
  patch[5, 1, 0] += 30.0  # one outlying patch of a trusted image
  tokens = np.concatenate([np.zeros_like(patch), patch], -1)
  disc = np.zeros((n, h, w), np.float32)
  disc[:, 0, 0] = np.linspace(0.0, 0.1, n)
  monkeypatch.setattr(funad, "discriminator_patches",
                      lambda config, params, features: disc.copy())
  cfg = _config(0.5)
  cfg.funad.bank_trust = 1.0  # every image trusted
  plain = funad.trusted_bank(cfg, None, tokens)
  assert any(np.allclose(r, patch[5, 1, 0]) for r in plain["bank"])
  # The 0.96 quantile of 48 LOF scores lies between the 46th and 47th:
  # the 2 above it go, the outlier first.
  cfg.funad.bank_denoise = 0.04
  out = funad.trusted_bank(cfg, None, tokens)
  assert len(out["bank"]) == n * h * w - 2
  assert not any(np.allclose(r, patch[5, 1, 0]) for r in out["bank"])
