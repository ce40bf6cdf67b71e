"""dicofun export: the StableHLO scorer equals the checkpoint's scores."""

import glob
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from dicofun import export
from dicofun import inspection
from dicofun import predict

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Runs with only jax, numpy and PIL: the exported file and its JSON.
_LOADER = r"""
import json, sys
import numpy as np, jax
from PIL import Image
path, images_txt, out = sys.argv[1:4]
meta = json.load(open(path + ".json"))
scorer = jax.export.deserialize(open(path, "rb").read())
r, s, b = meta["resize"], meta["image_size"], meta["batch_size"]
off = (r - s) // 2
scores = []
for p in open(images_txt).read().split():
  img = Image.open(p).convert("RGB").resize((r, r), Image.BILINEAR)
  x = np.asarray(img.crop((off, off, off + s, off + s)), np.uint8)[None]
  sc, mp = scorer.call(np.concatenate([x] * b))
  assert mp.shape == (b, s, s)
  scores.append(float(sc[0]))
assert not any(m.startswith("dicofun") for m in sys.modules), "dicofun used"
json.dump(scores, open(out, "w"))
"""


@pytest.fixture(scope="module")
def inspected(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("export")
  subprocess.run([sys.executable, "-m", "dicofun.data.synthetic",
                  f"--root={tmp / 'gen'}", "--num_train=10",
                  "--num_test_good=1", "--num_test_anomalous=2",
                  "--image_size=64"], check=True, capture_output=True,
                 cwd=REPO, timeout=120)
  folder = tmp / "line"
  folder.mkdir()
  for p in sorted(glob.glob(str(tmp / "gen" / "texture" / "*" / "*" /
                                "*.png"))):
    if "ground_truth" not in p:
      shutil.copy(p, folder / (p.split(os.sep)[-2] + "_" + os.path.basename(p)))
  config = inspection.inspect_config("softpatch", image_size=64)
  config.features_cache = False
  out = tmp / "out"
  inspection.inspect_folder(str(folder), out_dir=str(out), config=config)
  return folder, out


def test_exported_scorer_equals_the_checkpoint(inspected, tmp_path):
  folder, out = inspected
  path = str(tmp_path / "model.stablehlo")
  info = export.export_scorer(str(out), path)
  assert info["method"] == "softpatch" and info["image_size"] == 64
  with open(path + ".json") as f:
    assert json.load(f)["threshold"] == pytest.approx(info["threshold"])
  want = predict.predict_folder(str(out), str(folder),
                                out_dir=str(tmp_path / "pred"),
                                overlays=False)
  listing = tmp_path / "images.txt"
  listing.write_text("\n".join(want.files))
  got_path = tmp_path / "got.json"
  proc = subprocess.run(
      [sys.executable, "-c", _LOADER, path, str(listing), str(got_path)],
      capture_output=True, text=True, timeout=300, cwd=str(tmp_path),
      env=dict(os.environ, PYTHONPATH=""))
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(got_path) as f:
    got = json.load(f)
  np.testing.assert_allclose(got, want.scores, rtol=1e-5, atol=0)


def test_methods_without_an_exporter_are_refused(tmp_path, monkeypatch):
  import ml_collections  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(export.checkpoint, "load_inference", lambda d: (
      {}, ml_collections.ConfigDict(dict(method="dico")), {}))
  with pytest.raises(export.NotExportableError, match="'dico'"):
    export.export_scorer(str(tmp_path), str(tmp_path / "x"))
