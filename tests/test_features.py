"""Feature extraction: layouts, the per-image cache, padding of the last batch."""

import dataclasses
import hashlib
import json
import os

import numpy as np
from PIL import Image
import pytest

from dicofun import configlib
from dicofun import features
from dicofun.data import mvtec
from dicofun.data import synthetic
from configs import funad_synthetic
from configs import patchcore_synthetic


@pytest.fixture(scope="module")
def records(tmp_path_factory):
  root = synthetic.generate(str(tmp_path_factory.mktemp("syn")), num_train=6,
                            num_test_good=2, num_test_anomalous=2,
                            image_size=64)
  return mvtec.read_mvtec(root)


def test_cache_serves_subsets_and_equals_fresh_extraction(records, tmp_path,
                                                          monkeypatch):
  monkeypatch.setenv("DICOFUN_CACHE", str(tmp_path))
  cfg = patchcore_synthetic.get_config("image_size=64")
  cfg.backbone.batch_size = 4  # 5 images: the last batch is padded.
  calls = []
  real = features._extract_uncached

  def counting(backbone, recs, *args, **kwargs):
    calls.append(len(recs))
    return real(backbone, recs, *args, **kwargs)

  monkeypatch.setattr(features, "_extract_uncached", counting)
  first = features.load_features(cfg, records[:5], layout="patchcore")
  second = features.load_features(cfg, records[3:8], layout="patchcore")
  assert calls == [5, 3]  # Only the three new images were extracted.
  cfg.features_cache = False
  fresh = features.load_features(cfg, records[:8], layout="patchcore")
  # lite0 at 64 px: stride-8 grid 8×8, 40 + 112 channels.
  assert fresh.shape == (8, 8, 8, 152)
  np.testing.assert_allclose(first, fresh[:5], atol=1e-5)
  np.testing.assert_allclose(second, fresh[3:8], atol=1e-5)


def test_tokens_layout_is_cls_then_patch(records, tmp_path, monkeypatch):
  monkeypatch.setenv("DICOFUN_CACHE", str(tmp_path))
  cfg = funad_synthetic.get_config("image_size=56")
  cfg.features_cache = False
  feats = features.load_features(cfg, records[:2], layout="tokens")
  assert feats.shape == (2, 4, 4, 768)
  # The CLS half is the same at every patch position of an image.
  np.testing.assert_array_equal(feats[:, :1, :1, :384].repeat(4, 1).repeat(4, 2),
                                feats[..., :384])
  assert not np.allclose(feats[:, 0, 0, 384:], feats[:, 1, 1, 384:])


def test_vit_input_size_must_be_a_patch_multiple(records):
  # get_config refuses image_size=60 itself; a flag override can still set it.
  cfg = funad_synthetic.get_config("image_size=56")
  cfg.dataset.image_size = 60
  with pytest.raises(ValueError, match="multiple of the dinov2_vits14 patch"):
    features.load_features(cfg, records[:1], layout="tokens")


def test_cache_key_separates_layernorm_and_local_average():
  kw = dict(backbone_name="dinov2_vits14", weights_sha256="x", layer=8,
            preprocess_key="p")
  # Raw tokens with the 3×3 average keep the version-2 key (old caches).
  v2 = {"backbone": "dinov2_vits14", "weights": "x", "layer": 8,
        "layout": "patchcore", "preprocess": "p", "version": 2}
  old = hashlib.sha256(json.dumps(v2, sort_keys=True).encode()).hexdigest()
  assert features.cache_key(layout="patchcore", norm_intermediate=False,
                            vit_local_average=3, **kw) == old[:32]
  keys = {features.cache_key(layout="patchcore", norm_intermediate=n,
                             vit_local_average=a, **kw)
          for n in (False, True) for a in (1, 3, 5)}
  assert len(keys) == 6
  # The local average does not change the tokens layout (nor a CNN's).
  tokens = {features.cache_key(layout="tokens", norm_intermediate=True,
                               vit_local_average=a, **kw) for a in (1, 3)}
  assert len(tokens) == 1
  assert (features.cache_key(layout="patchcore", norm_intermediate=False,
                             vit_local_average=None, **kw) == old[:32])
  assert (features.cache_key(layout="tokens", norm_intermediate=True,
                             vit_local_average=1, **kw) !=
          features.cache_key(layout="tokens", norm_intermediate=False,
                             vit_local_average=1, **kw))


def test_vit_bank_features_default_to_normed_tokens_without_average(
    records, tmp_path, monkeypatch):
  monkeypatch.setenv("DICOFUN_CACHE", str(tmp_path))
  cfg = patchcore_synthetic.get_config("backbone=dinov2_vits14,image_size=56")
  # METHODS §1: LayerNorm on, no local average for bank methods on ViT tokens.
  assert cfg.backbone.norm_intermediate is True
  assert cfg.backbone.vit_local_average == 1
  tokens = features.load_features(cfg, records[:2], layout="tokens")
  patch = features.load_features(cfg, records[:2], layout="patchcore")
  np.testing.assert_allclose(patch, tokens[..., 384:], atol=1e-5)
  cfg3 = patchcore_synthetic.get_config(
      "backbone=dinov2_vits14,image_size=56,local_average=3")
  avg = features.load_features(cfg3, records[:2], layout="patchcore")
  # Hand-computed 3×3 zero-padded mean at the corner (0, 0): 4 of 9 cells.
  np.testing.assert_allclose(avg[:, 0, 0],
                             patch[:, :2, :2].sum(axis=(1, 2)) / 9, atol=1e-5)
  raw = patchcore_synthetic.get_config(
      "backbone=dinov2_vits14,image_size=56,norm=0")
  assert raw.backbone.norm_intermediate is False
  unnormed = features.load_features(raw, records[:2], layout="patchcore")
  assert not np.allclose(unnormed, patch, atol=1e-2)
  # The three settings are three cache folders.
  assert len(list((tmp_path / "features").iterdir())) == 4  # + tokens.


def test_backbone_settings_are_checked_by_name():
  with pytest.raises(configlib.ConfigArgError,
                     match="backbone.vit_local_average=2: expected an odd"):
    patchcore_synthetic.get_config("local_average=2")


def test_cache_sees_a_same_size_file_replaced_within_the_same_mtime(
    records, tmp_path, monkeypatch):
  # Issue 25 #4: the cache was keyed on path, size and whole-second mtime, so
  # a BMP (fixed size for fixed dimensions) replaced in the same second kept
  # the old image's features.
  monkeypatch.setenv("DICOFUN_CACHE", str(tmp_path / "cache"))
  cfg = patchcore_synthetic.get_config("image_size=64")
  good = [r for r in records if r.label == 0][0]
  bad = [r for r in records if r.label == 1][0]
  path = str(tmp_path / "part.bmp")
  Image.open(good.image_path).convert("RGB").save(path)
  st = os.stat(path)
  rec = dataclasses.replace(good, image_path=path)
  before = features.load_features(cfg, [rec], layout="patchcore")
  Image.open(bad.image_path).convert("RGB").save(path)  # Same size, new pixels.
  os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
  assert os.path.getsize(path) == st.st_size
  cached = features.load_features(cfg, [rec], layout="patchcore")
  cfg.features_cache = False
  fresh = features.load_features(cfg, [rec], layout="patchcore")
  assert not np.allclose(before, fresh, atol=1e-3)  # The images differ.
  np.testing.assert_allclose(cached, fresh, atol=1e-5)
