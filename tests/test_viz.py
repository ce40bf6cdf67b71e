"""Every figure function writes a PNG; the overlay's pixels are checked."""

import matplotlib
import matplotlib.image as mpimg
import numpy as np
import pytest

from dicofun import viz

_PNG = b"\x89PNG\r\n\x1a\n"


def _check_png(path):
  data = path.read_bytes()
  assert data[:8] == _PNG
  assert len(data) > 1000


@pytest.fixture(name="batch")
def _batch():
  rng = np.random.default_rng(0)
  n = 6
  images = rng.normal(size=(n, 32, 32, 3)).astype(np.float32)
  masks = np.zeros((n, 16, 16), np.float32)  # maps smaller than images
  masks[3:, 4:9, 5:12] = 1
  maps = rng.random((n, 16, 16)).astype(np.float32) + masks
  labels = np.array([0, 0, 0, 1, 1, 1])
  scores = maps.reshape(n, -1).max(1)
  return images, masks, maps, scores, labels


def test_save_roc_curves(tmp_path, batch):
  _, masks, maps, scores, labels = batch
  path = tmp_path / "roc.png"
  viz.save_roc_curves(str(path), image_scores=scores, image_labels=labels,
                      maps=maps, masks=masks)
  _check_png(path)
  path = tmp_path / "roc_image_only.png"
  viz.save_roc_curves(str(path), image_scores=scores, image_labels=labels)
  _check_png(path)
  path = tmp_path / "roc_no_defects.png"
  viz.save_roc_curves(str(path), image_scores=scores, image_labels=labels,
                      maps=maps, masks=np.zeros_like(masks))
  _check_png(path)


def test_save_anomaly_maps(tmp_path, batch):
  images, masks, maps, scores, _ = batch
  path = tmp_path / "sub" / "maps.png"
  viz.save_anomaly_maps(str(path), images, masks, maps, scores=scores,
                        titles=[f"img{i}.png" for i in range(len(maps))],
                        mean=(0.5, 0.5, 0.5), std=(0.2, 0.2, 0.2))
  _check_png(path)


def test_save_overlay(tmp_path):
  rng = np.random.default_rng(1)
  image = rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)
  path = tmp_path / "overlay.png"
  viz.save_overlay(str(path), image, rng.random((10, 10)), vmin=0.0, vmax=2.0)
  _check_png(path)
  assert mpimg.imread(str(path)).shape[:2] == (40, 60)


def test_save_overlay_pixels_blend_the_image_and_the_scaled_map(tmp_path):
  """Grey 100 under a constant map 0.5 on the scale [0, 2]: every pixel is
  ½·100/255 + ½·jet(0.25), not a map stretched to its own range."""
  path = tmp_path / "overlay.png"
  viz.save_overlay(str(path), np.full((40, 60, 3), 100, np.uint8),
                   np.full((10, 10), 0.5), vmin=0.0, vmax=2.0)
  got = mpimg.imread(str(path))[..., :3]
  want = 0.5 * np.array(matplotlib.colormaps["jet"](0.25)[:3]) + 0.5 * 100 / 255
  np.testing.assert_allclose(got[5:-5, 5:-5], np.broadcast_to(
      want, got[5:-5, 5:-5].shape), atol=0.01)


def test_save_best_worst_grid(tmp_path, batch):
  images, masks, maps, scores, labels = batch
  path = tmp_path / "best_worst.png"
  # Positional order as in dicofun.results.write_figures.
  viz.save_best_worst_grid(str(path), images, masks, maps, scores, labels,
                           k=4)
  _check_png(path)


def test_save_heatmap(tmp_path):
  path = tmp_path / "sweep.png"
  matrix = np.array([[0.91, 0.93, np.nan], [0.95, 0.97, 0.99]])
  viz.save_heatmap(str(path), matrix, row_labels=["k=1", "k=3"],
                   col_labels=["0", "0.1", "0.2"], title="image AUROC",
                   xlabel="contamination", ylabel="k")
  _check_png(path)
  # What it shows: each cell in viridis at (v − 0.91) / 0.08, laid out as
  # the matrix (rows down, columns right), the NaN cell left blank.
  rgb = mpimg.imread(str(path))[..., :3]
  centre = {}
  for (i, j), frac in {(0, 0): 0.0, (0, 1): 0.25, (1, 0): 0.5, (1, 1): 0.75,
                       (1, 2): 1.0}.items():
    colour = np.array(matplotlib.colormaps["viridis"](frac)[:3])
    ys, xs = np.nonzero(np.abs(rgb - colour).max(-1) < 0.02)
    # The cell's block of pixels dominates the colour bar's thin band.
    assert len(ys) > 500, (i, j, len(ys))
    centre[i, j] = (np.median(ys), np.median(xs))
  row_y = [centre[0, 0][0], centre[1, 0][0]]
  col_x = [centre[0, 0][1], centre[0, 1][1], centre[1, 2][1]]
  assert row_y[0] + 20 < row_y[1] and col_x[0] + 20 < col_x[1] < col_x[2] - 20
  for (i, j), (y, x) in centre.items():
    if j < 2 or i == 1:
      assert abs(y - row_y[i]) < 3 and abs(x - col_x[j]) < 3, (i, j)
  blank = rgb[int(row_y[0]) - 10:int(row_y[0]) - 5,
              int(col_x[2]) - 10:int(col_x[2]) + 10]
  np.testing.assert_allclose(blank, 1.0, atol=0.01)  # White: no colour.
  with pytest.raises(ValueError):
    viz.save_heatmap(str(path), matrix, row_labels=["a"], col_labels=["b"],
                     title="")


def test_learning_curve_series_by_panel_and_png(tmp_path):
  history = [
      {"epoch": 1, "loss": 2.0, "bce": 1.5, "pseudo_anomalous_fraction": 0.01,
       "num_pairs": 588.0},
      {"epoch": 2, "loss": 1.0, "bce": 0.5, "pseudo_anomalous_fraction": 0.02,
       "test_image_auroc": 0.7, "transductive_image_auroc": 0.6,
       "num_pairs": 590.0, "resumed": True},
  ]
  panels = viz.curve_series(history)
  assert panels == {
      "loss": {"bce": ((1, 2), (1.5, 0.5)), "loss": ((1, 2), (2.0, 1.0))},
      "fraction": {"pseudo_anomalous_fraction": ((1, 2), (0.01, 0.02))},
      "evaluation": {"test_image_auroc": ((2,), (0.7,)),
                     "transductive_image_auroc": ((2,), (0.6,))},
  }
  path = tmp_path / "curve.png"
  assert viz.save_learning_curve(str(path), history, title="t")
  assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert not viz.save_learning_curve(str(tmp_path / "none.png"),
                                     [{"epoch": 1, "num_pairs": 3.0}])
  assert not (tmp_path / "none.png").exists()
