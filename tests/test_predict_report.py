"""dicofun predict writes inspect's report.html and warns when new images
are unlike the model's training images (issue 29)."""

import html
import json
import os
import shutil
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

from dicofun import checkpoint
from dicofun import inspection
from dicofun import predict
from dicofun.data import synthetic

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
UNLIKE = "unlike the model's training images"


@pytest.fixture(scope="module")
def model(tmp_path_factory):
  """A model inspected from 12 synthetic textures; 6 more of the same kind
  held out."""
  tmp = tmp_path_factory.mktemp("predict_report")
  gen = synthetic.write_inspect_folder(str(tmp / "gen"), num_good=18,
                                       num_defective=1, image_size=32)
  train, same = tmp / "train", tmp / "same"
  (train / "good").mkdir(parents=True)
  same.mkdir()
  goods = sorted(os.listdir(os.path.join(gen, "good")))
  for i, name in enumerate(goods):
    shutil.copy(os.path.join(gen, "good", name),
                (train / "good" if i < 12 else same) / name)
  out = str(tmp / "model")
  inspection.inspect_folder(
      str(train), out_dir=out,
      config=inspection.inspect_config("patchcore", image_size=32))
  other = tmp / "other"
  other.mkdir()
  rng = np.random.default_rng(0)
  for i in range(6):  # Bright stripes, not the textures: another kind.
    img = np.zeros((32, 32, 3), np.uint8)
    img[:, ::4] = 255
    img = np.clip(img.astype(int) + rng.integers(0, 30, img.shape), 0, 255)
    Image.fromarray(img.astype(np.uint8)).save(other / f"{i}.png")
  return tmp, out


def _predict(model_dir, images, out):
  return subprocess.run(
      [sys.executable, "-m", "dicofun", "predict", f"--model={model_dir}",
       f"--images={images}", f"--out={out}"],
      capture_output=True, text=True, timeout=600, cwd=REPO)


def test_the_model_stores_its_training_statistics(model):
  _, out = model
  _, _, meta = checkpoint.load_inference(out)
  stats = meta[predict.TRAINING_STATS]
  assert stats["images"] == 12
  assert stats["width"][2] == 32 and stats["height"][2] == 32
  assert len(stats["mean"]) == len(stats["score"]) == 5


def test_predict_on_the_training_kind_does_not_warn(model):
  tmp, out = model
  proc = _predict(out, tmp / "same", tmp / "pred_same")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert UNLIKE not in proc.stderr + proc.stdout
  info = json.loads((tmp / "pred_same" / "predict.json").read_text())
  assert info["warnings"] == []
  page = (tmp / "pred_same" / "report.html").read_text()
  assert html.escape(UNLIKE) not in page and "class=\"warn\"" not in page
  assert f"report: {tmp / 'pred_same' / 'report.html'}" in proc.stdout


def test_predict_on_another_kind_warns_in_console_and_report(model):
  tmp, out = model
  proc = _predict(out, tmp / "other", tmp / "pred_other")
  assert proc.returncode == 0, proc.stderr[-3000:]
  warned = [l for l in proc.stderr.splitlines() if UNLIKE in l]
  assert len(warned) == 1, proc.stderr
  assert "median score" in warned[0]  # Farther than the training images.
  assert "mean grey level" in warned[0]
  assert "warning: unlike the training images" in proc.stdout
  page = (tmp / "pred_other" / "report.html").read_text()
  assert f'<p class="warn">These images are {html.escape(UNLIKE)}' in page
  # The same report as inspect's: ranked rows, thumbnails, the threshold.
  assert page.count('<tr class="') >= 6
  assert "one colour scale for every image" in page
  for name in (f"images/{i}.png.jpg" for i in range(6)):
    assert (tmp / "pred_other" / name).is_file()
    assert name in page


def test_another_size_alone_warns():
  stats = predict.training_stats(sizes=[(224, 224)] * 5,
                                 means=[100, 101, 102, 99, 98],
                                 stds=[20] * 5, scores=[1, 2, 3, 4, 5])
  assert predict.unlike_training(stats, sizes=[(224, 224)] * 3,
                                 means=[100] * 3, stds=[20] * 3,
                                 scores=[2, 3, 4]) == []
  lines = predict.unlike_training(stats, sizes=[(128, 128)] * 3,
                                  means=[100] * 3, stds=[20] * 3,
                                  scores=[2, 3, 4])
  assert len(lines) == 1 and "128x128 px (median)" in lines[0]
  # A model saved before issue 29 has no statistics: no check, no error.
  assert predict.unlike_training(None, sizes=[(128, 128)], means=[0],
                                 stds=[0], scores=[9]) == []


def test_a_run_model_stores_size_and_grey_levels_without_scores(model):
  tmp, _ = model
  config = inspection.inspect_config("patchcore", image_size=32)
  paths = sorted(str(p) for p in (tmp / "train" / "good").iterdir())
  stats = predict.sample_training_stats(config, paths + ["tfds://x/0"],
                                        max_images=13)
  # The 12 images; the tfds:// record is not readable here, skipped.
  assert stats["images"] == 12 and stats["score"] is None
  assert stats["width"] == [32.0] * 5
  assert predict.sample_training_stats(config, ["/nonexistent.png"]) is None
