"""PatchCore's transductive scoring and SoftPatch's LOF drop, against answers
known by hand or from scikit-learn."""

import numpy as np
import pytest
from sklearn.neighbors import LocalOutlierFactor

from dicofun.methods.patchcore import method as patchcore
from dicofun.methods.softpatch import method as softpatch

# Five training images of 1 × 2 patches with 1-d features, on a line.
_TRAIN = np.array([[0, 10], [1, 11], [3, 13], [7, 20], [100, 101]],
                  np.float32).reshape(5, 1, 2, 1)


def _bank():
  return patchcore.fit(_TRAIN, coreset_fraction=1.0)


def test_fit_keeps_every_patch_with_its_source_image():
  bank = _bank()
  np.testing.assert_array_equal(bank["bank"][:, 0], _TRAIN.reshape(-1))
  np.testing.assert_array_equal(bank["source"], [0, 0, 1, 1, 2, 2, 3, 3, 4, 4])


def test_training_images_without_exclusion_find_themselves():
  np.testing.assert_array_equal(patchcore.score(_bank(), _TRAIN), 0.0)


def test_leave_own_image_out_distances_by_hand():
  # Nearest patch of *another* image: 0→1, 10→11, 1→0, 11→10, 3→1, 13→11,
  # 7→10 (3 away; 3 is 4 away), 20→13, 100→20, 101→20.
  got = patchcore.score(_bank(), _TRAIN, exclude_source=np.arange(5))
  np.testing.assert_allclose(got.reshape(5, 2),
                             [[1, 1], [1, 1], [2, 2], [3, 7], [80, 81]])


def test_exclusion_with_too_few_neighbours_searches_the_others_exactly():
  # search_k=2: image 4's two nearest rows are both its own patches (0 and 1
  # away), so it is searched again among the other images' rows (100→20,
  # 101→20); every other patch finds another image among its 2 nearest
  # rows. Same answer as the wide search.
  got = patchcore.score(_bank(), _TRAIN, exclude_source=np.arange(5),
                        search_k=2)
  np.testing.assert_allclose(got.reshape(5, 2),
                             [[1, 1], [1, 1], [2, 2], [3, 7], [80, 81]])


def test_leave_one_out_bank_adds_each_coreset_rows_nearest_other_image():
  # A 2-row coreset of the 1-d line: its rows' twins are the nearest patches
  # of another image, so excluding an image's own rows never empties its
  # neighbourhood.
  bank = {"bank": np.array([[0.0], [100.0]], np.float32),
          "source": np.array([0, 4], np.int32)}
  loo = patchcore.leave_one_out_bank(bank, _TRAIN)
  # 0 (image 0) → 1 (image 1); 100 (image 4) → 20 (image 3).
  np.testing.assert_array_equal(loo["bank"][:, 0], [0, 100, 1, 20])
  np.testing.assert_array_equal(loo["source"], [0, 4, 1, 3])
  got = patchcore.score(loo, _TRAIN, exclude_source=np.arange(5))
  # Image 0 sees rows 100, 1, 20: 0→1, 10→1; image 1 sees 0, 100, 20:
  # 1→0, 11→20; image 2 sees all four: 3→1, 13→20; image 3 sees 0, 100, 1:
  # 7→1, 20→1; image 4 sees 0, 1, 20: 100→20, 101→20.
  np.testing.assert_allclose(got.reshape(5, 2),
                             [[1, 9], [1, 9], [2, 7], [6, 19], [80, 81]])
  # No coreset: the bank already holds every patch and is used as is.
  np.testing.assert_array_equal(
      patchcore.leave_one_out_bank(_bank(), _TRAIN)["bank"], _bank()["bank"])


def test_new_images_score_against_the_whole_bank():
  query = np.array([[2, 16]], np.float32).reshape(1, 1, 2, 1)
  # 2 is 1 from 1 (and 3); 16 is 3 from 13.
  np.testing.assert_allclose(patchcore.score(_bank(), query).reshape(2),
                             [1, 3])


def _lof_case():
  """20 images × 4 positions × 3 channels; 12 far-off patches planted."""
  rng = np.random.default_rng(0)
  feats = rng.normal(size=(20, 2, 2, 3)).astype(np.float32)
  planted = np.zeros((20, 2, 2), bool)
  # Images 3, 8 and 15 are defective at every position, each defect far from
  # everything else (12 of the 80 patches = 15 %).
  for j, i in enumerate((3, 8, 15)):
    planted[i] = True
    for p in range(4):
      direction = rng.normal(size=3)
      feats[i, p // 2, p % 2] = 30.0 * (j + 1) * direction / np.linalg.norm(
          direction)
  return feats, planted


def test_softpatch_lof_matches_sklearn_and_drops_the_planted_patches():
  feats, planted = _lof_case()
  n, h, w, c = feats.shape
  ref = np.stack([
      -LocalOutlierFactor(n_neighbors=6).fit(
          feats[:, p // w, p % w].astype(np.float64)).negative_outlier_factor_
      for p in range(h * w)], axis=1).reshape(n, h, w)
  # Same rule on the reference scores: drop the 15 % most outlying patches.
  ref_keep = ref <= np.quantile(ref, 0.85)
  keep = softpatch.denoise_mask(feats, k=6, drop_fraction=0.15)
  np.testing.assert_array_equal(keep, ref_keep)
  np.testing.assert_array_equal(keep, ~planted)
  assert keep.sum() == 68


def test_softpatch_needs_more_images_than_k():
  with pytest.raises(ValueError, match="more than k=6"):
    softpatch.denoise_mask(np.zeros((6, 1, 1, 2), np.float32), k=6)


def _run_on_features(module, method, feats, monkeypatch):
  """``module.run`` on ``feats`` as the training set, features faked."""
  from dicofun import api  # pylint: disable=g-import-not-at-top
  from dicofun import inspection  # pylint: disable=g-import-not-at-top
  from dicofun.data import folder  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(patchcore.features_lib, "load_features",
                      lambda config, recs, **kw: feats[:len(recs)])
  config = inspection.inspect_config(method, image_size=16)
  recs = folder.unlabelled_records([f"{i}.png" for i in range(len(feats))])
  return module.run(config, api.RunData(train=recs, test=[]), "")


@pytest.mark.parametrize("method", ["patchcore", "softpatch"])
def test_identical_training_images_score_identically(method, monkeypatch):
  """Issue 25 #5: the coreset kept one copy of each patch, so leaving the
  image that copy came from out left it with no near bank row (19.3 and 9.2
  against 0.0625 for the other 18 of 20 identical images)."""
  one = np.random.default_rng(0).normal(size=(1, 6, 6, 8)).astype(np.float32)
  feats = np.repeat(one, 20, axis=0)
  module = patchcore if method == "patchcore" else softpatch
  preds = _run_on_features(module, method, feats, monkeypatch)
  scores = preds.train_scores
  assert scores.shape == (20,)
  # Every patch has an exact copy in every other image: LOO distance 0, up
  # to the rounding of ‖q‖² − 2q·b + ‖b‖² (features of norm ~3).
  np.testing.assert_allclose(scores, scores[0], rtol=0, atol=1e-6)
  assert scores.max() < 1e-2
