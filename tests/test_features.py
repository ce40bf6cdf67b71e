"""Feature extraction: layouts, the per-image cache, padding of the last batch."""

import numpy as np
import pytest

from dicofun import features
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
