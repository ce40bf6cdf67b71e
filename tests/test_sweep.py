"""Sweeps: cell expansion, strict validation, resume, aggregation."""

import csv
import json
import os
import subprocess
import sys

import ml_collections
import matplotlib
import numpy as np
import pytest
from sklearn import metrics as skm

from dicofun import sweep as sweep_lib
import figure_pixels

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_FAKE_CONFIG = '''
import ml_collections
from dicofun import configlib

def get_config(arg=None):
  a = configlib.parse_arg(arg, alpha=1, beta=0.0, runlocal=False)
  return ml_collections.ConfigDict(dict(method="fake", args=a.to_dict()))
'''


@pytest.fixture
def cfg_file(tmp_path):
  path = tmp_path / "fake_cfg.py"
  path.write_text(_FAKE_CONFIG)
  return str(path)


@pytest.fixture
def heatmaps(monkeypatch):
  """Replaces dicofun.viz.save_heatmap by a recorder of its calls."""
  calls = []

  def save_heatmap(path, matrix, *, row_labels, col_labels, title, fmt,
                   xlabel, ylabel):
    calls.append(dict(path=path, matrix=np.array(matrix),
                      row_labels=row_labels, col_labels=col_labels,
                      title=title, fmt=fmt, xlabel=xlabel, ylabel=ylabel))
    with open(path, "wb") as f:
      f.write(b"png")

  # sweep.py bound dicofun.viz at import: patch the function it calls.
  monkeypatch.setattr(sweep_lib.viz, "save_heatmap", save_heatmap)
  return calls


def _sweep(cfg_file, metric="test.image_auroc", **axes):
  return ml_collections.ConfigDict(dict(
      base=f"{cfg_file}:runlocal,alpha=7",
      axes=axes or dict(beta=[0.1, 0.5], alpha=[1, 2]),
      rows="beta", cols="alpha", metric=metric))


def _metrics(cell):
  """Hand-made metrics of a cell: a known function of its values."""
  beta, alpha = cell.values["beta"], cell.values["alpha"]
  return {"test": {"image_auroc": beta + alpha / 10, "pixel_auroc": 0.5},
          "transductive": {"image_auroc": 0.25},
          "test_overlap": {"error": "only one class present"}}


def _fake_runner(calls, fail=()):
  def runner(cell, workdir):
    calls.append(cell.name)
    if cell.name in fail:
      return 3
    d = sweep_lib.cell_dir(workdir, cell)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "results.json"), "w") as f:
      json.dump({"metrics": _metrics(cell), "seconds": 1.5}, f)
    return 0
  return runner


def test_format_value_writes_parse_arg_syntax():
  assert sweep_lib.format_value(True) == "true"
  assert sweep_lib.format_value(0.1) == "0.1"
  assert sweep_lib.format_value(np.float32(0.5)) == "0.5"
  assert sweep_lib.format_value(1.0) == "1.0"
  assert sweep_lib.format_value(50) == "50"
  assert sweep_lib.format_value((4, 8)) == "4+8"
  with pytest.raises(sweep_lib.SweepError):
    sweep_lib.format_value("a,b")


def test_merge_arg_appends_and_replaces_in_place():
  assert (sweep_lib.merge_arg("category=bottle,runlocal",
                              [("rho", 0.25), ("category", "cable")])
          == "category=cable,runlocal,rho=0.25")
  assert sweep_lib.merge_arg("", [("n", 3)]) == "n=3"
  assert sweep_lib.merge_arg("runlocal", [("runlocal", False)]) == (
      "runlocal=false")


def test_expand_cells_row_major_with_merged_args(cfg_file):
  cells = sweep_lib.expand_cells(_sweep(cfg_file))
  assert [c.name for c in cells] == [
      "beta=0.1,alpha=1", "beta=0.1,alpha=2",
      "beta=0.5,alpha=1", "beta=0.5,alpha=2"]
  assert [c.index for c in cells] == [0, 1, 2, 3]
  assert cells[1].arg == "runlocal,alpha=2,beta=0.1"
  assert cells[1].config_path == cfg_file
  cfg = sweep_lib.load_config(cells[1].config_path, cells[1].arg)
  # The override wins over the base's alpha=7 and keeps its type.
  assert cfg.args.to_dict() == {"alpha": 2, "beta": 0.1, "runlocal": True}


def test_axes_order_follows_rows_then_cols_not_key_sorting(cfg_file):
  sweep = _sweep(cfg_file, zeta=[1.0], alpha=[1], beta=[0.0])
  sweep.rows, sweep.cols = "zeta", "beta"
  assert [n for n, _ in sweep_lib.axes_of(sweep)] == ["zeta", "beta", "alpha"]


def test_config_axis_swaps_the_config_file(cfg_file, tmp_path):
  other = tmp_path / "other_cfg.py"
  other.write_text(_FAKE_CONFIG)
  sweep = ml_collections.ConfigDict(dict(
      base=f"{cfg_file}:alpha=2",
      axes=dict(config=[cfg_file, str(other)], beta=[0.0, 1.0]),
      rows="config", cols="beta", metric="test.image_auroc"))
  cells = sweep_lib.expand_cells(sweep)
  assert [c.name for c in cells] == [
      "config=fake_cfg,beta=0.0", "config=fake_cfg,beta=1.0",
      "config=other_cfg,beta=0.0", "config=other_cfg,beta=1.0"]
  assert cells[2].config_path == str(other)
  assert cells[2].arg == "alpha=2,beta=0.0"
  assert "config" not in cells[2].arg


def test_unknown_key_fails_before_any_cell_runs(cfg_file, tmp_path, heatmaps):
  sweep = _sweep(cfg_file, beta=[0.1], alpha=[1], colour=["red"])
  calls = []
  with pytest.raises(sweep_lib.SweepError, match="unknown config arg 'colour'"):
    sweep_lib.run_sweep(sweep, str(tmp_path / "sw"),
                        runner=_fake_runner(calls))
  assert calls == []
  assert not os.path.exists(tmp_path / "sw")


def test_bad_value_type_in_a_later_cell_fails_before_the_first(
    cfg_file, tmp_path):
  sweep = _sweep(cfg_file, beta=[0.1], alpha=[1, "many"])
  calls = []
  with pytest.raises(sweep_lib.SweepError, match="alpha=many"):
    sweep_lib.run_sweep(sweep, str(tmp_path / "sw"),
                        runner=_fake_runner(calls))
  assert calls == []


@pytest.mark.parametrize("change,match", [
    (dict(rows="gamma"), "gamma"),
    (dict(metric="image_auroc"), "<view>.<metric>"),
    (dict(axes=dict(beta=[])), "no values"),
    (dict(axes=dict(beta=[0.1, 0.1])), "repeats"),
])
def test_check_sweep_names_the_problem(cfg_file, change, match):
  sweep = _sweep(cfg_file)
  for k, v in change.items():
    sweep[k] = v
  with pytest.raises(sweep_lib.SweepError, match=match):
    sweep_lib.check_sweep(sweep)


def test_aggregation_from_fake_results(cfg_file, tmp_path, heatmaps):
  sweep = _sweep(cfg_file)
  workdir = str(tmp_path / "sw")
  cells = sweep_lib.expand_cells(sweep)
  # Three of four cells finished: (0.5, 2) is missing.
  for cell in cells[:3]:
    _fake_runner([])(cell, workdir)
  rows = sweep_lib.collect_results(cells, workdir)
  files = sweep_lib.write_aggregates(sweep, rows, workdir, name="demo")

  with open(os.path.join(workdir, "sweep_results.csv")) as f:
    table = list(csv.DictReader(f))
  assert [r["beta"] + "/" + r["alpha"] for r in table] == [
      "0.1/1", "0.1/2", "0.5/1", "0.5/2"]
  assert [r["status"] for r in table] == ["done", "done", "done", "pending"]
  assert list(table[0])[:4] == ["beta", "alpha", "status", "seconds"]
  assert float(table[1]["test.image_auroc"]) == pytest.approx(0.3)
  assert float(table[2]["transductive.image_auroc"]) == 0.25
  assert table[0]["test_overlap.error"] == "only one class present"
  assert table[3]["test.image_auroc"] == ""

  md = open(os.path.join(workdir, "sweep_results.md")).read()
  assert "| beta \\ alpha | 1 | 2 |" in md
  assert "| 0.1 | 0.2000 | 0.3000 |" in md
  assert "| 0.5 | 0.6000 | — |" in md
  assert "3/4 cells finished" in md

  assert len(heatmaps) == 1
  h = heatmaps[0]
  np.testing.assert_allclose(h["matrix"], [[0.2, 0.3], [0.6, np.nan]])
  assert h["row_labels"] == ["0.1", "0.5"] and h["col_labels"] == ["1", "2"]
  assert h["ylabel"] == "beta" and h["xlabel"] == "alpha"
  assert "test.image_auroc" in h["title"]
  assert os.path.basename(h["path"]) == "heatmap_test_image_auroc.png"
  assert h["path"] in files


def test_aggregation_draws_real_heatmaps(cfg_file, tmp_path):
  pytest.importorskip("matplotlib")
  sweep = _sweep(cfg_file, metric=("test.image_auroc",
                                   "transductive.image_auroc"))
  workdir = str(tmp_path / "sw")
  cells = sweep_lib.expand_cells(sweep)
  for cell in cells[:3]:
    _fake_runner([])(cell, workdir)
  files = sweep_lib.write_aggregates(
      sweep, sweep_lib.collect_results(cells, workdir), workdir)
  pngs = sorted(os.path.basename(f) for f in files if f.endswith(".png"))
  assert pngs == ["heatmap_test_image_auroc.png",
                  "heatmap_transductive_image_auroc.png"]
  for f in files:
    with open(f, "rb") as fh:
      head = fh.read(8)
    if f.endswith(".png"):
      assert head == b"\x89PNG\r\n\x1a\n"


def test_third_axis_gives_one_table_per_fixed_value(cfg_file, tmp_path,
                                                    heatmaps):
  sweep = _sweep(cfg_file, beta=[0.1], alpha=[1], runlocal=[True, False])
  workdir = str(tmp_path / "sw")
  cells = sweep_lib.expand_cells(sweep)
  assert [c.name for c in cells] == ["beta=0.1,alpha=1,runlocal=true",
                                     "beta=0.1,alpha=1,runlocal=false"]
  for cell in cells:
    _fake_runner([])(cell, workdir)
  sweep_lib.write_aggregates(sweep, sweep_lib.collect_results(cells, workdir),
                             workdir)
  md = open(os.path.join(workdir, "sweep_results.md")).read()
  assert "## test.image_auroc (runlocal=true)" in md
  assert "## test.image_auroc (runlocal=false)" in md
  assert len(heatmaps) == 2


def test_only_cells_then_resume_skips_finished(cfg_file, tmp_path, heatmaps,
                                               caplog):
  caplog.set_level("INFO")
  sweep = _sweep(cfg_file)
  workdir = str(tmp_path / "sw")
  calls = []
  first = sweep_lib.run_sweep(sweep, workdir, only_cells=1,
                              runner=_fake_runner(calls))
  assert calls == ["beta=0.1,alpha=1"]
  assert first.ran == calls and len(first.pending) == 3
  assert [r["status"] for r in first.rows] == ["done"] + ["pending"] * 3

  caplog.clear()
  second = sweep_lib.run_sweep(sweep, workdir, runner=_fake_runner(calls))
  # Progress names the cell among all cells and, from the finished cell's
  # 1.5 s, an ETA for the three to run.
  assert "Cell 2/4 (1 of 3 to run, ETA 0m04s): beta=0.1,alpha=2" in (
      caplog.text)
  assert second.skipped == ["beta=0.1,alpha=1"]
  assert second.ran == ["beta=0.1,alpha=2", "beta=0.5,alpha=1",
                        "beta=0.5,alpha=2"]
  assert len(calls) == 4 and second.pending == []
  assert all(r["status"] == "done" for r in second.rows)

  third = sweep_lib.run_sweep(sweep, workdir, runner=_fake_runner(calls))
  assert len(calls) == 4 and len(third.skipped) == 4
  np.testing.assert_allclose(heatmaps[-1]["matrix"], [[0.2, 0.3], [0.6, 0.7]])


def test_run_cell_is_the_default_runner(cfg_file, tmp_path, heatmaps,
                                        monkeypatch):
  calls = []
  monkeypatch.setattr(sweep_lib, "run_cell", _fake_runner(calls))
  out = sweep_lib.run_sweep(_sweep(cfg_file), str(tmp_path / "sw"))
  assert len(calls) == 4 and len(out.ran) == 4


def test_failed_cell_does_not_stop_the_sweep(cfg_file, tmp_path, heatmaps):
  workdir = str(tmp_path / "sw")
  calls = []
  out = sweep_lib.run_sweep(_sweep(cfg_file), workdir,
                            runner=_fake_runner(calls,
                                                fail={"beta=0.1,alpha=2"}))
  assert out.failed == ["beta=0.1,alpha=2"] and len(out.ran) == 3
  assert [r["status"] for r in out.rows] == ["done", "failed", "done", "done"]
  # Run again: only the failed cell is retried.
  calls.clear()
  again = sweep_lib.run_sweep(_sweep(cfg_file), workdir,
                              runner=_fake_runner(calls))
  assert calls == ["beta=0.1,alpha=2"] and again.failed == []


def test_cell_dir_of_another_config_is_refused(cfg_file, tmp_path, heatmaps):
  workdir = str(tmp_path / "sw")
  sweep_lib.run_sweep(_sweep(cfg_file), workdir, only_cells=1,
                      runner=_fake_runner([]))
  changed = _sweep(cfg_file)
  changed.base = f"{cfg_file}:alpha=7"  # runlocal dropped.
  with pytest.raises(sweep_lib.SweepError, match="new --workdir"):
    sweep_lib.run_sweep(changed, workdir, runner=_fake_runner([]))


def test_dry_run_runs_nothing(cfg_file, tmp_path):
  calls = []
  out = sweep_lib.run_sweep(_sweep(cfg_file), str(tmp_path / "sw"),
                            dry_run=True, runner=_fake_runner(calls))
  assert calls == [] and len(out.pending) == 4
  assert not os.path.exists(tmp_path / "sw")


def test_cell_command_runs_main_with_the_merged_config(cfg_file, tmp_path):
  cell = sweep_lib.expand_cells(_sweep(cfg_file))[0]
  cmd = sweep_lib.cell_command(cell, str(tmp_path))
  assert cmd[:4] == [sys.executable, "-m", "dicofun", "run"]
  assert cmd[4] == f"--config={cfg_file}:runlocal,alpha=1,beta=0.1"
  assert cmd[5] == f"--workdir={tmp_path}/beta=0.1,alpha=1"
  assert len(cmd) == 6


@pytest.mark.parametrize("name", [
    "tiny_synthetic", "funad_memory_contamination",
    "dico_memory_contamination", "patchcore_softpatch_contamination"])
def test_shipped_sweep_configs_are_valid(name):
  sweep = sweep_lib.load_sweep(f"configs/sweeps/{name}.py")
  cells = sweep_lib.expand_cells(sweep)
  sizes = {"tiny_synthetic": 4, "funad_memory_contamination": 20,
           "dico_memory_contamination": 16,
           "patchcore_softpatch_contamination": 8}
  assert len(cells) == sizes[name]
  for cell in cells:
    # A shipped sweep naming a missing config is broken: fail, do not skip.
    assert os.path.isfile(sweep_lib.resolve_path(cell.config_path))
  # Every cell parses with the real config files' strict arguments.
  sweep_lib.validate_cells(cells)


def test_sweep_config_args_are_strict():
  with pytest.raises(Exception, match="colour"):
    sweep_lib.load_sweep("configs/sweeps/funad_memory_contamination.py:"
                         "colour=red")


def test_cli_dry_run_lists_cells_and_writes_nothing(tmp_path):
  workdir = tmp_path / "sw"
  proc = subprocess.run(
      [sys.executable, os.path.join(REPO, "experiments", "sweep.py"),
       "--sweep=configs/sweeps/tiny_synthetic.py", f"--workdir={workdir}",
       "--dry_run"], capture_output=True, text=True, timeout=300, cwd=REPO)
  assert proc.returncode == 0, proc.stderr
  assert proc.stderr.count("[pending]") == 4
  assert "coreset=0.5,contamination=0.1" in proc.stderr
  assert not workdir.exists()


_TINY_128 = """
import ml_collections

def get_sweep(arg=None):
  del arg
  return ml_collections.ConfigDict(dict(
      base="configs/patchcore_synthetic.py:runlocal,image_size=128",
      axes=dict(coreset=[0.1, 0.5], contamination=[0.0, 0.1]),
      rows="coreset", cols="contamination", metric="test.image_auroc"))
"""


@pytest.mark.slow
def test_tiny_synthetic_sweep_end_to_end(tmp_path):
  # The shipped tiny sweep's grid at 128 px: at its own 64 px the image
  # AUROC of these 20 test images (0.57-0.66 measured) is within chance.
  tiny = sweep_lib.load_sweep("configs/sweeps/tiny_synthetic.py")
  assert tiny.base == "configs/patchcore_synthetic.py:runlocal,image_size=64"
  spec = tmp_path / "tiny128.py"
  spec.write_text(_TINY_128)
  workdir = tmp_path / "sw"
  cmd = [sys.executable, os.path.join(REPO, "experiments", "sweep.py"),
         f"--sweep={spec}", f"--workdir={workdir}"]
  proc = subprocess.run(cmd + ["--only_cells=1"], capture_output=True,
                        text=True, timeout=900, cwd=REPO)
  assert proc.returncode == 0, proc.stderr[-3000:]
  proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800,
                        cwd=REPO)
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(workdir / "sweep_results.csv") as f:
    table = list(csv.DictReader(f))
  assert len(table) == 4 and all(r["status"] == "done" for r in table)
  for r in table:
    auroc = float(r["test.image_auroc"])
    cell = workdir / f"coreset={r['coreset']},contamination={r['contamination']}"
    with open(cell / "test_scores.csv") as f:
      rows = [row for row in csv.DictReader(f) if row["moved"] == "0"]
    labels = np.array([int(row["label"]) for row in rows])
    # The cell's own no-overlap AUROC, recomputed from its CSV ...
    scores = np.array([float(row["score"]) for row in rows])
    assert auroc == pytest.approx(skm.roc_auc_score(labels, scores), abs=1e-9)
    # ... beats the best of 100 seeded random scorers on the same labels.
    rng = np.random.default_rng(0)
    chance = max(skm.roc_auc_score(labels, rng.random(len(labels)))
                 for _ in range(100))
    assert auroc > chance, (r, chance)
  # The heat map shows the table: rows coreset (0.1, 0.5) down, columns
  # contamination (0.0, 0.1) across; the lowest cell is viridis' dark end,
  # the highest its yellow end, each in its own quadrant.
  values = {(["0.1", "0.5"].index(r["coreset"]),
             ["0.0", "0.1"].index(r["contamination"])):
            float(r["test.image_auroc"]) for r in table}
  if max(values.values()) > min(values.values()):
    rgb = figure_pixels.read_rgb(workdir / "heatmap_test_image_auroc.png")
    h, w = rgb.shape[:2]
    cells = {}
    for end, cell in ((0.0, min(values, key=values.get)),
                      (1.0, max(values, key=values.get))):
      colour = matplotlib.colormaps["viridis"](end)[:3]
      ys, xs = np.nonzero(figure_pixels.colour_mask(rgb, colour, tol=0.02))
      assert len(ys) > 500, (end, len(ys))  # a cell's block, not the bar
      cells[cell] = (np.median(ys), np.median(xs))
    lo, hi = min(values, key=values.get), max(values, key=values.get)
    # Rows go down, columns go right: the two blocks sit as their cells do
    # (same row → same height, within a tenth of the figure).
    for axis, size in ((0, h), (1, w)):
      d_pixels = cells[hi][axis] - cells[lo][axis]
      d_cells = hi[axis] - lo[axis]
      if d_cells:
        assert np.sign(d_pixels) == np.sign(d_cells), (axis, cells)
      else:
        assert abs(d_pixels) < 0.1 * size, (axis, cells)
  assert "| coreset \\ contamination | 0.0 | 0.1 |" in (
      workdir / "sweep_results.md").read_text()


def test_dico_sweep_axes_from_args():
  sweep = sweep_lib.load_sweep(
      "configs/sweeps/dico_memory_contamination.py:dataset=magnetic_tile,cpu,"
      "image_size=128,epochs=8,memory=0+50+200,contamination=0+0.2")
  cells = sweep_lib.expand_cells(sweep)
  assert sorted((int(c.labels["memory"]), float(c.labels["contamination"]))
                for c in cells) == [(0, 0.0), (0, 0.2), (50, 0.0), (50, 0.2),
                                    (200, 0.0), (200, 0.2)]
  assert sweep.base.endswith(":category=magnetic_tile,cpu,image_size=128,"
                             "epochs=8")
  sweep_lib.validate_cells(cells)


def test_last_epoch_values_from_the_history():
  res = {"extra": {"history": [
      {"epoch": 1, "loss": 2.0, "gate_p50": 0.5},
      {"epoch": 2, "loss": 1.5, "gate_p50": 0.25, "items_used": 12,
       "note": "text", "converged": True}]}}
  assert sweep_lib.last_epoch_values(res) == {
      "last.loss": 1.5, "last.gate_p50": 0.25, "last.items_used": 12}
  assert sweep_lib.last_epoch_values({"extra": {}}) == {}
  assert sweep_lib.last_epoch_values({}) == {}
