"""dicofun never deletes or overwrites what it did not write (issue 25).

``dicofun inspect`` (and ``predict``, ``export``) into a folder that holds a
user's files is refused before any work; an output folder never overlaps the
inspected folder; a run's results replace the old ones all at once or not at
all. Every data-safety test hashes every file before and after.
"""

import errno
import hashlib
import json
import os
import subprocess
import sys
import types

import numpy as np
from PIL import Image
import pytest

from dicofun import api
from dicofun import fileio
from dicofun import inspection
from dicofun import methods
from dicofun import report
from dicofun.data import images

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
S = 16


def _hashes(root):
  """{relative path: sha256} of every file under ``root``."""
  out = {}
  for d, _, files in os.walk(root):
    for f in files:
      p = os.path.join(d, f)
      with open(p, "rb") as fh:
        out[os.path.relpath(p, root)] = hashlib.sha256(fh.read()).hexdigest()
  return out


def _fake_method():
  """Score = mean pixel / 255; the map is that score everywhere."""

  def score(records, s):
    v = np.array([images.load_image(r.image_path).mean() / 255.0
                  for r in records])
    return v, np.stack([np.full((s, s), x, np.float32) for x in v])

  def run(config, data, workdir):
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "trained.txt"), "w") as f:
      f.write("x")
    s, m = score(data.train, config.dataset.image_size)
    return api.Predictions(test_scores=np.zeros(0), test_maps=None,
                           train_scores=s, train_maps=m,
                           state={"offset": np.float32(0.0)})

  def predict_fn(config, state, records):
    s, m = score(records, config.dataset.image_size)
    return s + float(state["offset"]), m

  mod = types.ModuleType("fake_safety_method")
  mod.run, mod.predict = run, predict_fn
  return mod


@pytest.fixture
def fake(monkeypatch):
  monkeypatch.setitem(sys.modules, "fake_safety_method", _fake_method())
  monkeypatch.setitem(methods.METHODS, "fake", "fake_safety_method")
  config = inspection.inspect_config("patchcore", image_size=S)
  config.method = "fake"
  return config


def _folder(root, levels=(100, 102, 104, 106, 108, 250), sub=""):
  os.makedirs(os.path.join(root, sub), exist_ok=True)
  for i, v in enumerate(levels):
    Image.fromarray(np.full((20, 20, 3), v, np.uint8)).save(
        os.path.join(root, sub, f"{i}.png"))
  return root


def _inspect(folder, out, config):
  return inspection.inspect_folder(str(folder), out_dir=str(out),
                                   config=config)


# --------------------------------------------------------- #1: never delete


def test_out_equal_to_the_inspected_folder_deletes_nothing(tmp_path, fake):
  """The repro of #1: IN has a training/ sub-folder; --out=IN."""
  root = _folder(str(tmp_path / "in"))
  _folder(root, sub="training")
  before = _hashes(root)
  with pytest.raises(fileio.OutputFolderError,
                     match="inside the input folder.*the same folder"):
    _inspect(root, root, fake)
  assert _hashes(root) == before


def test_a_users_non_empty_out_folder_is_refused_untouched(tmp_path, fake):
  root = _folder(str(tmp_path / "in"))
  out = tmp_path / "out"
  (out / "training").mkdir(parents=True)
  (out / "training" / "important.txt").write_text("my notes")
  (out / "scores.csv").write_text("mine\n")
  before, inputs = _hashes(out), _hashes(root)
  with pytest.raises(fileio.OutputFolderError) as e:
    _inspect(root, out, fake)
  assert str(e.value) == (
      f"--out={str(out)!r} is not empty and was not made by dicofun (no "
      ".dicofun-output file in it); dicofun never deletes or overwrites "
      "files it did not write: name a new or empty folder with --out")
  assert _hashes(out) == before
  assert _hashes(root) == inputs
  assert sorted(os.listdir(tmp_path)) == ["in", "out"]  # No temp folder.


def test_rerun_replaces_its_own_output_but_not_a_users_file_in_it(
    tmp_path, fake):
  root = _folder(str(tmp_path / "in"))
  out = tmp_path / "out"
  _inspect(root, out, fake)
  marker = json.loads((out / ".dicofun-output").read_text())
  assert marker["command"] == "inspect"
  assert {"scores.csv", "report.html", "model", "training",
          os.path.join("training", "trained.txt")} <= set(marker["files"])
  # A second run over its own output: replaced, no temp folder left.
  os.remove(os.path.join(root, "0.png"))
  second = _inspect(root, out, fake)
  assert len(second.files) == 5
  assert sorted(os.listdir(tmp_path)) == ["in", "out"]
  assert not os.path.exists(out / "images" / "0.png.jpg")
  # A file the user put into dicofun's folder stops the next run.
  (out / "training" / "important.txt").write_text("my notes")
  before = _hashes(out)
  with pytest.raises(fileio.OutputFolderError,
                     match="holds 1 file.*'training/important.txt'"):
    _inspect(root, out, fake)
  assert _hashes(out) == before


def test_cli_out_equal_to_input_is_one_line_and_leaves_inputs_identical(
    tmp_path):
  root = _folder(str(tmp_path / "in"))
  _folder(root, sub="training")
  before = _hashes(root)
  proc = subprocess.run(
      [sys.executable, "-m", "dicofun", "inspect", root, f"--out={root}",
       "--image_size=16"],
      capture_output=True, text=True, timeout=300, cwd=str(tmp_path),
      env=dict(os.environ, DICOFUN_CACHE=str(tmp_path / "cache")))
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
  assert proc.stderr.rstrip().splitlines()[-1].startswith(
      f"error: --out={root!r} is inside the input folder FOLDER={root!r} "
      "(the same folder)")
  assert _hashes(root) == before


# ---------------------------------------------------- #2: no overlap


def test_out_inside_the_inspected_folder_is_refused(tmp_path, fake):
  root = _folder(str(tmp_path / "in"))
  before = _hashes(root)
  with pytest.raises(fileio.OutputFolderError,
                     match="inside the input folder.*outside"):
    _inspect(root, os.path.join(root, "report"), fake)
  assert _hashes(root) == before
  assert sorted(os.listdir(root)) == [f"{i}.png" for i in range(6)]
  # And the other way round: the inspected folder inside --out.
  with pytest.raises(fileio.OutputFolderError, match="is inside --out"):
    _inspect(root, str(tmp_path), fake)
  assert _hashes(root) == before


# ------------------------------------------- #7: all at once or not at all


def _full_disk_at(monkeypatch, where):
  """ENOSPC at one point of the run (see tests/test_fileio.py)."""
  if where == "inspect.json":
    real = os.fsync

    def fsync(fd):
      if "inspect.json" not in os.readlink(f"/proc/self/fd/{fd}"):
        return real(fd)
      raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(os, "fsync", fsync)
  else:  # The third overlay thumbnail.
    real_save, calls = report._thumb, []  # pylint: disable=protected-access

    def thumb(array, path):
      if os.sep + "overlays" + os.sep in path:
        calls.append(1)
        if len(calls) == 3:
          raise OSError(errno.ENOSPC, "No space left on device")
      return real_save(array, path)
    monkeypatch.setattr(report, "_thumb", thumb)


@pytest.mark.parametrize("where", ["inspect.json", "overlays"])
def test_disk_full_leaves_the_previous_results_whole(tmp_path, fake,
                                                     monkeypatch, where):
  first = _folder(str(tmp_path / "a"))
  second = _folder(str(tmp_path / "b"), levels=(10, 20, 30, 40, 50, 60, 200))
  out = tmp_path / "out"
  _inspect(first, out, fake)
  before = _hashes(out)
  inputs = _hashes(second)
  _full_disk_at(monkeypatch, where)
  with pytest.raises(OSError, match="No space left"):
    _inspect(second, out, fake)
  assert _hashes(out) == before  # Model, CSV, report, JSON: all the old run.
  assert _hashes(second) == inputs
  assert sorted(os.listdir(tmp_path)) == ["a", "b", "out"]
  monkeypatch.undo()


# ------------------------------------------- the same rules for predict


def test_predict_out_is_refused_when_it_holds_a_users_files(tmp_path, fake):
  from dicofun import predict  # pylint: disable=g-import-not-at-top
  root = _folder(str(tmp_path / "in"))
  model = tmp_path / "model_out"
  _inspect(root, model, fake)
  out = tmp_path / "pred"
  out.mkdir()
  (out / "scores.csv").write_text("mine\n")
  before, inputs = _hashes(out), _hashes(root)
  with pytest.raises(fileio.OutputFolderError, match="not made by dicofun"):
    predict.predict_folder(str(model), root, out_dir=str(out))
  with pytest.raises(fileio.OutputFolderError,
                     match="inside the input folder --images="):
    predict.predict_folder(str(model), root,
                           out_dir=os.path.join(root, "pred"))
  assert _hashes(out) == before and _hashes(root) == inputs
  # Its own output is replaced; the default lands in the model folder,
  # whose next inspect run may replace it with the rest.
  got = predict.predict_folder(str(model), root, out_dir=str(tmp_path / "p"))
  again = predict.predict_folder(str(model), root, out_dir=str(tmp_path / "p"))
  assert again.csv_path == str(tmp_path / "p" / "scores.csv")
  assert os.path.isfile(again.csv_path) and got.overlays == again.overlays
  assert all(os.path.isfile(p) for p in again.overlays)
  predict.predict_folder(str(model), root)
  assert fileio.read_marker(str(model / "predictions"))["command"] == (
      "predict")
  _inspect(root, model, fake)
  assert not os.path.exists(model / "predictions")


def test_export_never_overwrites_a_users_file(tmp_path):
  from dicofun import export  # pylint: disable=g-import-not-at-top
  mine = tmp_path / "model.stablehlo"
  mine.write_bytes(b"my own model")
  with pytest.raises(fileio.OutputFolderError,
                     match="is not an earlier dicofun export"):
    export.export_scorer(str(tmp_path / "no_model"), str(mine))
  assert mine.read_bytes() == b"my own model"
  (tmp_path / "other.json").write_text('{"mine": 1}')
  with pytest.raises(fileio.OutputFolderError):
    export.check_export_target(str(tmp_path / "other"))
  # An earlier export (its .json says so) may be replaced.
  (tmp_path / "old.stablehlo").write_bytes(b"x")
  (tmp_path / "old.stablehlo.json").write_text('{"dicofun_export": true}')
  export.check_export_target(str(tmp_path / "old.stablehlo"))
  export.check_export_target(str(tmp_path / "new.stablehlo"))
