"""The ELPV reader on a fake ``elpv_dataset`` package solved by hand.

The fake package holds 28 tiny 8×8 grey cells, in ELPV's ``labels.csv``
layout:

* cell0001–0020: probability 0 (0001–0012 mono, 0013–0020 poly);
* cell0021 (mono), cell0022 (poly): 1/3 — left out at the default 2/3;
* cell0023, 0024 (mono), 0025 (poly): 2/3;  cell0026, 0027 (poly), 0028
  (mono): 1.

Default split (category all, test fraction 0.2, seed 0): round(0.2 · 20) = 4
test normals, the first four of ``default_rng(0).permutation(20)`` = indices
2, 4, 6, 19 → cell0003, 0005, 0007, 0020; 16 train normals; the 6 anomalies
in test. Contamination 0.1 moves int(0.1 · 16) = 1 anomaly: index 3 of the
sorted anomalies (``default_rng(0).permutation(6)[0]``) = cell0026; 0.2 moves
int(3.2) = 3: indices 3, 2, 5 = cell0026, 0025, 0028.
"""

import importlib.util
import json
import os
import sys
import types

import numpy as np
from PIL import Image
import pytest

from dicofun import api
from dicofun import configlib
from dicofun import data as data_lib
from dicofun import methods
from dicofun import protocol
from dicofun import runner
from dicofun import training
from dicofun.data import contamination
from dicofun.data import elpv
from dicofun.data import errors
from dicofun.data import pipeline

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_THIRD, _TWO_THIRDS = "0.3333333333333333", "0.6666666666666666"
_CELLS = ([(i, "0.0", "mono") for i in range(1, 13)]
          + [(i, "0.0", "poly") for i in range(13, 21)]
          + [(21, _THIRD, "mono"), (22, _THIRD, "poly"),
             (23, _TWO_THIRDS, "mono"), (24, _TWO_THIRDS, "mono"),
             (25, _TWO_THIRDS, "poly"), (26, "1.0", "poly"),
             (27, "1.0", "poly"), (28, "1.0", "mono")])


def _name(i):
  return f"cell{i:04d}.png"


def _write_data(root):
  os.makedirs(os.path.join(root, "images"))
  lines = []
  for i, prob, kind in _CELLS:
    Image.fromarray(np.full((8, 8), 9 * i, np.uint8)).save(
        os.path.join(root, "images", _name(i)))
    lines.append(f"images/{_name(i)}  {prob:<20}{kind}\n")
  with open(os.path.join(root, "labels.csv"), "w") as f:
    f.writelines(lines)


@pytest.fixture(name="fake_package")
def fixture_fake_package(tmp_path, monkeypatch):
  """A fake ``elpv_dataset`` on sys.path; returns its data folder."""
  pkg = tmp_path / "site" / "elpv_dataset"
  pkg.mkdir(parents=True)
  (pkg / "__init__.py").write_text("")
  _write_data(str(pkg / "data"))
  monkeypatch.delitem(sys.modules, "elpv_dataset", raising=False)
  monkeypatch.syspath_prepend(str(tmp_path / "site"))
  yield str(pkg / "data")
  sys.modules.pop("elpv_dataset", None)  # The fake, imported by the test.


def _names(records):
  return [os.path.basename(r.image_path) for r in records]


def _split(records, split, label):
  return [r for r in records if r.split == split and r.label == label]


def _config(method="patchcore", arg="contamination=0.1,image_size=16"):
  path = os.path.join(REPO, "configs", f"{method}_elpv.py")
  spec = importlib.util.spec_from_file_location(f"cfg_{method}_elpv", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def test_package_root_is_the_installed_packages_data_folder(fake_package):
  assert elpv.package_root() == fake_package


def test_default_split_sizes_labels_and_defects(fake_package):
  records = elpv.read_elpv()
  train, test_good = _split(records, "train", 0), _split(records, "test", 0)
  test_bad = _split(records, "test", 1)
  assert len(records) == 26  # The two 1/3 cells are left out.
  assert _names(train) == [_name(i) for i in range(1, 21)
                           if i not in (3, 5, 7, 20)]
  assert _names(test_good) == [_name(i) for i in (3, 5, 7, 20)]
  assert _names(test_bad) == [_name(i) for i in range(23, 29)]
  assert not _split(records, "train", 1)
  assert [r.defect for r in test_bad] == ["p67"] * 3 + ["p100"] * 3
  assert {r.defect for r in train + test_good} == {"good"}
  assert all(r.mask_path is None for r in records)
  assert [r.category for r in test_bad] == ["mono", "mono", "poly", "poly",
                                            "poly", "mono"]
  assert records[0].image_path == os.path.join(fake_package, "images",
                                               _name(1))


def test_min_defect_probability_one_third_counts_the_ambiguous_cells(
    fake_package):
  del fake_package
  records = elpv.read_elpv(min_defect_probability=1 / 3)
  test_bad = _split(records, "test", 1)
  assert _names(test_bad) == [_name(i) for i in range(21, 29)]
  assert [r.defect for r in test_bad[:2]] == ["p33", "p33"]
  # The normals' split does not depend on the threshold.
  assert (_names(_split(records, "test", 0))
          == [_name(i) for i in (3, 5, 7, 20)])
  only_certain = elpv.read_elpv(min_defect_probability=1.0)
  assert (_names(_split(only_certain, "test", 1))
          == [_name(i) for i in (26, 27, 28)])


def test_category_is_the_cell_type(fake_package):
  del fake_package
  mono = elpv.read_elpv(category="mono")
  # 12 mono normals: round(2.4) = 2 test, indices 2 and 9 of
  # default_rng(0).permutation(12)[:2].
  assert _names(_split(mono, "test", 0)) == [_name(3), _name(10)]
  assert len(_split(mono, "train", 0)) == 10
  assert _names(_split(mono, "test", 1)) == [_name(i) for i in (23, 24, 28)]
  poly = elpv.read_elpv(category="poly")
  assert {r.category for r in poly} == {"poly"}
  assert len(poly) == 8 + 3
  with pytest.raises(ValueError, match="mono"):
    elpv.read_elpv(category="amorphous")


def test_split_is_seeded_and_deterministic(fake_package):
  del fake_package
  assert elpv.read_elpv(seed=0) == elpv.read_elpv(seed=0)
  # default_rng(1).permutation(20)[:4] = 1, 10, 16, 18 (0-based).
  assert (_names(_split(elpv.read_elpv(seed=1), "test", 0))
          == [_name(i) for i in (2, 11, 17, 19)])


def test_max_train_normals_subsamples_only_the_training_normals(fake_package):
  del fake_package
  full = elpv.read_elpv()
  capped = elpv.read_elpv(max_train_normals=5)
  # Positions 0, 2, 3, 10, 11 of the 16 training normals
  # (sorted default_rng(0).permutation(16)[:5]).
  train = _names(_split(full, "train", 0))
  assert _names(_split(capped, "train", 0)) == [train[i]
                                                for i in (0, 2, 3, 10, 11)]
  assert ([r for r in capped if r.split == "test"]
          == [r for r in full if r.split == "test"])
  assert elpv.read_elpv(max_train_normals=16) == full


@pytest.mark.parametrize("ratio, moved", [(0.1, (26,)), (0.2, (25, 26, 28))])
def test_contamination_moves_the_magnetic_tile_share(fake_package, ratio,
                                                     moved):
  del fake_package
  result = contamination.contaminate(elpv.read_elpv(), ratio=ratio, seed=0)
  assert sorted(_names(result.moved)) == [_name(i) for i in moved]
  assert len(result.train) == 16 + len(moved)
  assert len(_split(result.test, "test", 1)) == 6 - len(moved)


def test_registered_dataset_reads_the_package_with_config_fields(fake_package):
  del fake_package
  config = _config(arg="contamination=0.2,category=mono")
  assert config.dataset.allow_missing_masks
  assert config.dataset.crop_fraction == 1.0
  assert config.dataset.elpv.max_train_normals == 760
  assert config.dataset.elpv.min_defect_probability == 2 / 3
  records = data_lib.read_dataset(config.dataset, "/unused")
  assert records == elpv.read_elpv(category="mono")
  config.dataset.elpv.max_train_normals = 4
  config.dataset.elpv.min_defect_probability = 1 / 3
  assert len(_split(data_lib.read_dataset(config.dataset, "/unused"),
                    "train", 0)) == 4
  # Datasets with masks keep refusing anomalies without one.
  assert not configlib.dataset_config(
      name="magnetic_tile").allow_missing_masks


def test_root_folder_replaces_the_package(tmp_path):
  _write_data(str(tmp_path / "elpv"))
  records = elpv.read_elpv(str(tmp_path / "elpv"))
  assert len(records) == 26
  with pytest.raises(errors.DatasetNotFoundError, match="labels"):
    elpv.read_elpv(str(tmp_path / "nowhere"))


def test_missing_package_names_the_pip_command(monkeypatch):
  monkeypatch.setitem(sys.modules, "elpv_dataset", None)
  with pytest.raises(errors.DatasetPackageMissingError,
                     match="pip install elpv-dataset"):
    elpv.read_elpv()


def test_grey_cells_become_three_channel_inputs(fake_package):
  del fake_package
  record = elpv.read_elpv()[0]  # cell0001: every pixel 9.
  image = pipeline.read_image(record.image_path)
  assert image.shape == (8, 8, 3) and image.dtype == np.uint8
  assert (image == 9).all()
  pre = pipeline.Preprocess(image_size=4, crop_fraction=1.0, mean=(0, 0, 0),
                            std=(1, 1, 1))
  np.testing.assert_allclose(pre.image(image), np.full((4, 4, 3), 9 / 255),
                             rtol=1e-6)


def test_maskless_evaluation_reports_image_metrics_only(fake_package):
  """prepare_data → load_eval_arrays → evaluate_predictions, as the runner.

  Test view: 4 normals at 0.1, 0.2, 0.3, 0.9 and the 5 anomalies left at
  0.5 … 0.95: the 0.9 normal beats 4 of the 5 anomalies → 16/20 = 0.8. The
  moved anomaly (cell0026) scores 0 in the overlap view: it loses to all 4
  normals → (16 + 0) / 24 = 2/3. Transductive: the 16 training normals score
  0 and the moved anomaly 1 → 1.0.
  """
  del fake_package
  config = _config()
  data = protocol.prepare_data(config, "/unused")
  assert _names(data.moved) == [_name(26)]
  eval_arrays = protocol.load_eval_arrays(config, data.test)
  labels = eval_arrays["label"]
  np.testing.assert_array_equal(labels, [0] * 4 + [1] * 6)
  np.testing.assert_array_equal(eval_arrays["has_mask"],
                                [True] * 4 + [False] * 6)
  np.testing.assert_array_equal(eval_arrays["mask"], 0)
  scores = np.array([0.1, 0.2, 0.3, 0.9, 0.5, 0.6, 0.7, 0.8, 0.95, 0.0])
  maps = np.random.default_rng(0).random((10, 16, 16)).astype(np.float32)
  train_scores = np.array([0.0] * 16 + [1.0])
  preds = api.Predictions(test_scores=scores, test_maps=maps,
                          train_scores=train_scores)
  out = protocol.evaluate_predictions(preds, data, eval_arrays)
  assert out["test"]["image_auroc"] == pytest.approx(0.8)
  assert out["test_overlap"]["image_auroc"] == pytest.approx(2 / 3)
  assert out["transductive"]["image_auroc"] == pytest.approx(1.0)
  for view in ("test", "test_overlap", "transductive"):
    for key in ("pixel_auroc", "aupro", "pixel_ap"):
      assert key not in out[view]
  # The training history of FUN-AD / DiCo: image AUROC, no pixel AUROC.
  keep = ~data.test_is_moved
  history = training.history_metrics(scores[keep], maps[keep], labels[keep],
                                     eval_arrays["mask"][keep])
  assert history == {"image_auroc": pytest.approx(0.8)}


def _fake_method():
  """Scores each image by its label and returns random maps."""

  def run(config, data, workdir):
    del workdir
    size = config.dataset.image_size
    rng = np.random.default_rng(0)
    return api.Predictions(
        test_scores=np.array([float(r.label) for r in data.test]),
        test_maps=rng.random((len(data.test), size, size)).astype(np.float32),
        train_scores=np.array([float(r.label) for r in data.train]))

  mod = types.ModuleType("fake_elpv_method")
  mod.run = run
  return mod


def test_runner_on_elpv_writes_image_metrics_and_no_pixel_metrics(
    fake_package, monkeypatch, tmp_path):
  del fake_package
  monkeypatch.setitem(sys.modules, "fake_elpv_method", _fake_method())
  monkeypatch.setitem(methods.METHODS, "fake", "fake_elpv_method")
  ds = configlib.dataset_config(name="elpv", category="all", image_size=16,
                                crop_fraction=1.0, contamination=0.2)
  config = configlib.base_config(method="fake", dataset=ds,
                                 backbone="efficientnet_lite0")
  config.eval.tensorboard = False
  workdir = str(tmp_path / "run")
  metrics = runner.train_and_evaluate(config, workdir)
  with open(os.path.join(workdir, "results.json")) as f:
    saved = json.load(f)["metrics"]
  for m in (metrics, saved):
    assert m["test"]["image_auroc"] == 1.0
    assert m["test_overlap"]["image_auroc"] == 1.0
    assert m["transductive"]["image_auroc"] == 1.0
    assert not {"pixel_auroc", "aupro", "pixel_ap"} & set(m["test"])


def test_elpv_settings_enter_the_training_fingerprint_only_on_elpv():
  config = _config("funad", "contamination=0.1")
  values = training.training_fingerprint(config, "funad")["values"]
  assert values["dataset.elpv.max_train_normals"] == 760
  changed = _config("funad", "contamination=0.1")
  changed.dataset.elpv.min_defect_probability = 1 / 3
  assert (training.training_fingerprint(changed, "funad")["hash"]
          != training.training_fingerprint(config, "funad")["hash"])
  path = os.path.join(REPO, "configs", "funad_magnetic_tile.py")
  spec = importlib.util.spec_from_file_location("cfg_funad_mt", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  mt_values = training.training_fingerprint(
      module.get_config("contamination=0.1"), "funad")["values"]
  assert not [k for k in mt_values if k.startswith("dataset.elpv")]


_REAL = importlib.util.find_spec("elpv_dataset") is not None


@pytest.mark.skipif(not _REAL, reason="elpv-dataset is not installed "
                    "(pip install elpv-dataset)")
def test_real_package_counts():
  """ELPV 1.0: 1,508 cells at 0, 295 at 1/3, 106 at 2/3, 715 at 1."""
  rows = elpv.read_labels(elpv.package_root())
  assert len(rows) == 2624
  probs = np.array([p for _, p, _ in rows])
  assert [int(np.sum(np.isclose(probs, v))) for v in (0, 1 / 3, 2 / 3, 1)] \
      == [1508, 295, 106, 715]
  records = elpv.read_elpv(max_train_normals=760)
  assert len(_split(records, "train", 0)) == 760
  assert len(_split(records, "test", 0)) == 302  # round(0.2 · 1508).
  assert len(_split(records, "test", 1)) == 821
  assert len(elpv.read_elpv(max_train_normals=0)) == 1206 + 302 + 821
  mono = elpv.read_elpv(category="mono")
  assert len(_split(mono, "test", 1)) == 313 + 56
  assert (len(_split(mono, "train", 0)) + len(_split(mono, "test", 0))
          == 588)
  assert len(_split(elpv.read_elpv(min_defect_probability=1 / 3), "test",
                    1)) == 821 + 295
  assert os.path.isfile(records[0].image_path)
  assert pipeline.read_image(records[0].image_path).shape == (300, 300, 3)
