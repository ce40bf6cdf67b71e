"""Atomic writes: a failure mid-write leaves the old file as it was."""

import csv
import errno
import json
import os

import numpy as np
import pytest

from dicofun import api
from dicofun import fileio
from dicofun import results
from dicofun import sweep
from dicofun.data import records as records_lib


class _Boom(RuntimeError):
  pass


def _disk_full(monkeypatch, only=""):
  """fsync fails as on a full disk, after the content was written.

  Args:
    monkeypatch: the pytest fixture.
    only: fail only for files whose name contains this (others sync).
  """
  real = os.fsync

  def fsync(fd):
    if only not in os.readlink(f"/proc/self/fd/{fd}"):
      return real(fd)
    raise OSError(errno.ENOSPC, "No space left on device")
  monkeypatch.setattr(os, "fsync", fsync)


def _leftovers(directory):
  return [f for f in os.listdir(directory) if ".tmp-" in f]


def test_open_atomic_replaces_only_when_the_block_ends(tmp_path):
  path = tmp_path / "a.txt"
  path.write_text("old")
  with fileio.open_atomic(str(path)) as f:
    f.write("new")
    assert path.read_text() == "old"  # Not visible while writing.
  assert path.read_text() == "new"
  assert _leftovers(tmp_path) == []


def test_exception_mid_write_keeps_the_old_file(tmp_path):
  path = tmp_path / "a.csv"
  path.write_text("old,content\n")
  with pytest.raises(_Boom):
    with fileio.open_atomic(str(path), newline="") as f:
      f.write("half,")
      raise _Boom()
  assert path.read_text() == "old,content\n"
  assert _leftovers(tmp_path) == []


def test_disk_full_keeps_the_old_file(tmp_path, monkeypatch):
  path = tmp_path / "r.json"
  fileio.write_json_atomic(str(path), {"v": 1})
  _disk_full(monkeypatch)
  with pytest.raises(OSError, match="No space left"):
    fileio.write_json_atomic(str(path), {"v": 2})
  assert json.loads(path.read_text()) == {"v": 1}
  assert _leftovers(tmp_path) == []


def test_unserialisable_json_never_opens_the_file(tmp_path):
  path = tmp_path / "r.json"
  path.write_text('{"v": 1}')
  with pytest.raises(TypeError):
    fileio.write_json_atomic(str(path), {"v": object()})
  assert path.read_text() == '{"v": 1}'
  assert _leftovers(tmp_path) == []


def test_binary_mode_and_bad_mode(tmp_path):
  path = tmp_path / "b.bin"
  with fileio.open_atomic(str(path), "wb") as f:
    f.write(b"\x00\x01")
  assert path.read_bytes() == b"\x00\x01"
  with pytest.raises(ValueError, match="mode"):
    with fileio.open_atomic(str(path), "a"):
      pass


def test_permissions_follow_the_umask(tmp_path):
  plain, atomic = tmp_path / "plain", tmp_path / "atomic"
  with open(plain, "w") as f:
    f.write("x")
  fileio.write_text_atomic(str(atomic), "x")
  assert os.stat(atomic).st_mode == os.stat(plain).st_mode


def _run_data():
  test = [records_lib.Record("/d/good.png", None, 0, "good", "test"),
          records_lib.Record("/d/bad.png", "/d/bad_mask.png", 1, "crack",
                             "test")]
  return api.RunData(train=[], test=test, test_is_moved=np.array([False, True]))


def test_run_result_files_survive_a_full_disk(tmp_path, monkeypatch):
  """results.json, metrics.md and test_scores.csv all write atomically."""
  data = _run_data()
  preds = api.Predictions(test_scores=np.array([0.25, 0.5]), test_maps=None)
  res, md, sc = (str(tmp_path / n) for n in
                 ("results.json", "metrics.md", "test_scores.csv"))
  results.write_json_atomic(res, {"metrics": {"test": {"image_auroc": 1.0}}})
  results.write_metrics_md(md, "| old |\n")
  results.write_scores_csv(sc, data, preds)
  before = {p: open(p).read() for p in (res, md, sc)}
  with open(sc) as f:
    assert list(csv.reader(f)) == [
        ["image_path", "defect", "label", "moved", "score"],
        ["/d/good.png", "good", "0", "0", "0.25"],
        ["/d/bad.png", "crack", "1", "1", "0.5"]]

  _disk_full(monkeypatch)
  new_preds = api.Predictions(test_scores=np.array([0.75, 1.0]), test_maps=None)
  for write in (lambda: results.write_json_atomic(res, {"metrics": {}}),
                lambda: results.write_metrics_md(md, "| new |\n"),
                lambda: results.write_scores_csv(sc, data, new_preds)):
    with pytest.raises(OSError, match="No space left"):
      write()
  assert {p: open(p).read() for p in (res, md, sc)} == before
  assert _leftovers(tmp_path) == []


def test_scores_csv_failing_mid_row_keeps_the_old_file(tmp_path):
  data = _run_data()
  path = str(tmp_path / "test_scores.csv")
  results.write_scores_csv(path, data, api.Predictions(
      test_scores=np.array([0.25, 0.5]), test_maps=None))
  before = open(path).read()
  # The second score cannot be written: the header and first row already were.
  bad = api.Predictions(test_scores=np.array([0.1, "not a number"], object),
                        test_maps=None)
  with pytest.raises(ValueError):
    results.write_scores_csv(path, data, bad)
  assert open(path).read() == before


def test_sweep_files_survive_a_full_disk(tmp_path, monkeypatch):
  """sweep_results.csv/.md and sweep_cell.json all write atomically."""
  spec = dict(base="configs/x.py", axes={"a": [1, 2]}, metric="test.m")
  rows = [dict(a="1", status="done", seconds=1.0, **{"test.m": 0.5}),
          dict(a="2", status="pending")]
  monkeypatch.setattr(sweep.viz, "save_heatmap", lambda path, *a, **k: None)
  sweep.write_aggregates(spec, rows, str(tmp_path))
  cell = sweep.expand_cells(spec)[0]
  sweep.write_cell_info(str(tmp_path), cell, returncode=0)
  info = os.path.join(sweep.cell_dir(str(tmp_path), cell), sweep.CELL_INFO)
  files = [str(tmp_path / sweep.CSV_NAME), str(tmp_path / sweep.MD_NAME), info]
  before = {p: open(p).read() for p in files}
  assert json.loads(before[info])["returncode"] == 0

  rows2 = [dict(r, status="failed") for r in rows]
  for name in (sweep.CSV_NAME, sweep.MD_NAME):
    with monkeypatch.context() as m:
      _disk_full(m, only=name)
      with pytest.raises(OSError, match="No space left"):
        sweep.write_aggregates(spec, rows2, str(tmp_path))
    # The CSV written before the markdown failed is the new one.
    if name == sweep.MD_NAME:
      assert "failed" in open(files[0]).read()
      open(files[0], "w").write(before[files[0]])
  _disk_full(monkeypatch)
  with pytest.raises(OSError, match="No space left"):
    sweep.write_cell_info(str(tmp_path), cell, returncode=1)
  assert {p: open(p).read() for p in files} == before
  assert _leftovers(tmp_path) == []
  assert _leftovers(os.path.dirname(info)) == []
