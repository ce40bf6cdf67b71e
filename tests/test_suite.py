"""The benchmark suite: the MVTec-layout dataset on the shared categories, and
benchmarks/suite.py (same rows on a copied root, resume, errors first)."""

import importlib.util
import json
import os
import shutil

import pytest

import conftest
from dicofun import configlib
from dicofun import data as data_lib
from dicofun.data import synthetic

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# ../shared/data/README.md: train normals, test normals, test anomalies.
SHARED_COUNTS = {
    "magnetic_tile": (761, 191, 392),
    "mvtec_ad/screw": (320, 41, 119),
    "kolektorsdd/kolektorsdd": (278, 69, 52),
    "bsdata/ball_screw": (516, 172, 167),
}


_MODULE = []


def _suite():
  """benchmarks/suite.py, loaded once (its absl flags are defined once)."""
  if _MODULE:
    return _MODULE[0]
  spec = importlib.util.spec_from_file_location(
      "suite", os.path.join(_ROOT, "benchmarks", "suite.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  _MODULE.append(module)
  return module


def _layout_config(root, category):
  ds = configlib.dataset_config(name="mvtec_layout", root=root,
                                category=category, crop_fraction=1.0)
  return ds


@pytest.mark.parametrize("category", sorted(SHARED_COUNTS))
def test_layout_dataset_reads_each_shared_category(category):
  path = os.path.join(conftest.SHARED_DATA, category)
  if not os.path.isdir(path):
    if os.environ.get("CI"):
      pytest.fail(f"{path} is missing; CI must provide ../shared/data")
    pytest.skip(f"{path} is missing")
  recs = data_lib.read_dataset(_layout_config(conftest.SHARED_DATA, category),
                               workdir="")
  train = [r for r in recs if r.split == "train"]
  test = [r for r in recs if r.split == "test"]
  got = (len(train), sum(r.label == 0 for r in test),
         sum(r.label == 1 for r in test))
  assert got == SHARED_COUNTS[category]
  assert all(r.label == 0 for r in train)
  assert all(r.mask_path for r in test if r.label == 1)
  assert {r.category for r in recs} == {category}


def test_layout_dataset_needs_a_root(tmp_path):
  with pytest.raises(ValueError, match="config.dataset.root must name"):
    data_lib.read_dataset(_layout_config("", "x"), workdir=str(tmp_path))


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
  root = tmp_path_factory.mktemp("suite_data")
  synthetic.generate(str(root / "line"), category="texture", num_train=8,
                     num_test_good=3, num_test_anomalous=4, image_size=48)
  return str(root)


_TINY = dict(methods=["patchcore:image_size=48", "softpatch:image_size=48"],
             backbones=["efficientnet_lite0"], categories=["line/texture"],
             contaminations=[0.25], seeds=None)


@pytest.mark.slow
def test_killed_suite_resumes_and_a_copied_root_gives_the_same_rows(
    tiny_root, tmp_path, monkeypatch):
  suite = _suite()
  monkeypatch.setenv("DICOFUN_CACHE", str(tmp_path / "cache"))
  ran = []

  def killed_after_one(cell, workdir):
    if ran:
      raise KeyboardInterrupt  # the suite dies while the second cell runs
    ran.append(cell.name)
    return suite.sweep.run_cell(cell, workdir)

  work = str(tmp_path / "work")
  out = str(tmp_path / "rows.json")
  with pytest.raises(KeyboardInterrupt):
    suite.run(data_root=tiny_root, workdir=work, out=out, merge=False,
              runner=killed_after_one, command="t", **_TINY)
  first = ran[0]
  first_results = os.path.join(work, first, "results.json")
  mtime = os.stat(first_results).st_mtime_ns

  resumed = []

  def counting(cell, workdir):
    resumed.append(cell.name)
    return suite.sweep.run_cell(cell, workdir)

  rows = suite.run(data_root=tiny_root, workdir=work, out=out, merge=False,
                   runner=counting, command="t", **_TINY)
  assert first not in resumed and len(resumed) == 1  # finished: not re-run
  assert os.stat(first_results).st_mtime_ns == mtime
  assert [r["method"] for r in rows] == ["patchcore", "softpatch"]
  assert json.load(open(out))["rows"] == rows

  # The very same command on a copy of the category under another root.
  other = str(tmp_path / "other_root")
  shutil.copytree(os.path.join(tiny_root, "line"),
                  os.path.join(other, "line"))
  copied = suite.run(data_root=other, workdir=str(tmp_path / "work2"),
                     out=str(tmp_path / "rows2.json"), merge=False,
                     command="t", **_TINY)
  metric_keys = [k for k in rows[0] if k.split(".")[0] in suite.VIEWS]
  assert "test.image_auroc" in metric_keys and "test.aupro" in metric_keys
  for a, b in zip(rows, copied):
    for k in metric_keys + ["method", "category", "contamination", "seed",
                            "backbone", "image_size", "dataset"]:
      assert a[k] == b[k], k
  # The markdown table has each category's row and the mean row.
  md = open(os.path.splitext(out)[0] + ".md").read()
  assert "| line/texture | 1 |" in md and "**mean of 1**" in md


def _never(cell, workdir):
  raise AssertionError(f"no cell may run: {cell.name}")


def test_bad_category_stops_the_suite_before_any_cell(tiny_root, tmp_path):
  suite = _suite()
  with pytest.raises(suite.SuiteError, match="'line/nope'"):
    suite.run(**{**_TINY, "categories": ["line/texture", "line/nope"]},
              data_root=tiny_root, workdir=str(tmp_path), out="x.json",
              merge=False, runner=_never)


def test_unknown_method_stops_the_suite_before_any_cell(tiny_root, tmp_path):
  suite = _suite()
  with pytest.raises(suite.SuiteError, match="unknown method 'patchkore'"):
    suite.run(**{**_TINY, "methods": ["patchcore", "patchkore"]},
              data_root=tiny_root, workdir=str(tmp_path), out="x.json",
              merge=False, runner=_never)


def test_bad_method_arg_stops_the_suite_before_any_cell(tiny_root, tmp_path):
  suite = _suite()
  with pytest.raises(suite.sweep.SweepError, match="colour"):
    suite.run(**{**_TINY, "methods": ["patchcore:colour=red"]},
              data_root=tiny_root, workdir=str(tmp_path), out="x.json",
              merge=False, runner=_never)


def test_cells_fix_the_contamination_draw_and_vary_the_method_seed(tmp_path):
  suite = _suite()
  cells = suite.build_cells([("funad", ""), ("softpatch", "")],
                            ["dinov2_vits14"], ["a/b"], [0.1], None,
                            str(tmp_path))
  seeds = [(c.values["method"], c.values["seed"]) for c in cells]
  assert seeds == [("funad", 0), ("funad", 1), ("funad", 2),
                   ("softpatch", 0)]
  configs = [suite.sweep.load_config(c.config_path, c.arg) for c in cells]
  assert {c.dataset.contamination_seed for c in configs} == {0}
  assert [c.seed for c in configs] == [0, 1, 2, 0]
  assert {c.dataset.crop_fraction for c in configs} == {1.0}
  assert configs[-1].softpatch.coreset_fraction == 0.01


def test_seeds_at_gives_per_contamination_seeds(tiny_root, tmp_path):
  suite = _suite()
  at = suite.parse_seeds_at(["0.1:0", "0.2:0+2"], [0, 0.1, 0.2])
  assert at == {0.1: (0,), 0.2: (0, 2)}
  cells = suite.build_cells([("dico", ""), ("patchcore", "")],
                            ["efficientnet_lite0"], ["a/b"], [0, 0.1, 0.2],
                            None, str(tmp_path), seeds_at=at)
  got = [(c.values["contamination"], c.values["method"], c.values["seed"])
         for c in cells]
  assert got == [(0.0, "dico", 0), (0.0, "dico", 1), (0.0, "dico", 2),
                 (0.0, "patchcore", 0),
                 (0.1, "dico", 0), (0.1, "patchcore", 0),
                 (0.2, "dico", 0), (0.2, "dico", 2), (0.2, "patchcore", 0),
                 (0.2, "patchcore", 2)]
  # DiCo's suite cells are its cpu preset (a step budget).
  assert cells[4].arg.endswith("contamination=0.1,seed=0,cpu")
  assert cells[4].values["args"] == ""
  config = suite.sweep.load_config(cells[4].config_path, cells[4].arg)
  assert (config.dico.steps, config.seed) == (400, 0)
  # A malformed item or a ratio the run does not have stops the suite
  # before any cell, naming it.
  for bad, match in (("0.1", "'0.1'"), ("0.1:x", "'0.1:x'"),
                     ("0.3:0", "contamination 0.3")):
    with pytest.raises(suite.SuiteError, match=match):
      suite.run(**{**_TINY, "seeds_at": [bad]}, data_root=tiny_root,
                workdir=str(tmp_path), out="x.json", merge=False,
                runner=_never)


def test_markdown_mean_row_averages_category_seed_means():
  suite = _suite()
  rows = []
  for cat, vals in (("a", (0.8, 0.9)), ("b", (0.6, 0.7))):
    for seed, v in enumerate(vals):
      rows.append({"method": "funad", "args": "", "backbone": "bb",
                   "contamination": 0.1, "category": cat, "seed": seed,
                   "test.image_auroc": v})
  md = suite.markdown(rows)
  assert "| bb | 0.1 | funad | (default) | a | 2 | 0.850 ± 0.050 |" in md
  # Suite means per seed: (0.8+0.6)/2=0.7, (0.9+0.7)/2=0.8 → 0.75 ± 0.05.
  assert "**0.750 ± 0.050**" in md
