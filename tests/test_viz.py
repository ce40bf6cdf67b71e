"""Every figure function writes a PNG; the overlay's pixels are checked."""

import matplotlib
import matplotlib.image as mpimg
import numpy as np
import pytest

from dicofun import viz
from tests import figure_pixels as fp

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
  # The batch separates perfectly (anomalous pixels ≥ 1 > normal ones): both
  # curves run up the left edge and along the top, area 1 read from the
  # pixels; a scorer with inverted scores draws area ~0.
  path = tmp_path / "roc.png"
  viz.save_roc_curves(str(path), image_scores=scores, image_labels=labels,
                      maps=maps, masks=masks)
  _check_png(path)
  rgb = fp.read_rgb(path)
  half = rgb.shape[1] // 2
  assert fp.roc_area(rgb[:, :half]) > 0.98  # image ROC
  assert fp.roc_area(rgb[:, half:]) > 0.98  # pixel ROC
  path = tmp_path / "roc_image_only.png"
  viz.save_roc_curves(str(path), image_scores=scores, image_labels=labels)
  _check_png(path)
  assert fp.roc_area(fp.read_rgb(path)) > 0.98
  path = tmp_path / "roc_inverted.png"
  viz.save_roc_curves(str(path), image_scores=-scores, image_labels=labels)
  assert fp.roc_area(fp.read_rgb(path)) < 0.05
  path = tmp_path / "roc_no_defects.png"
  viz.save_roc_curves(str(path), image_scores=scores, image_labels=labels,
                      maps=maps, masks=np.zeros_like(masks))
  _check_png(path)
  rgb = fp.read_rgb(path)
  assert fp.roc_area(rgb[:, :half]) > 0.98
  assert not fp.colour_mask(rgb[:, half:], fp.C0).any()  # no pixel curve


def _red(rgb):
  """Reddish: jet's top part (alone or half-blended over grey) and pure red;
  grey, and jet's lower half (blue to green), are not."""
  return rgb[..., 0] - rgb[..., 1:].max(-1) > 0.15


def test_save_anomaly_maps(tmp_path, batch):
  images, masks, maps, scores, _ = batch
  path = tmp_path / "sub" / "maps.png"
  viz.save_anomaly_maps(str(path), images, masks, maps, scores=scores,
                        titles=[f"img{i}.png" for i in range(len(maps))],
                        mean=(0.5, 0.5, 0.5), std=(0.2, 0.2, 0.2))
  _check_png(path)
  # Grey images (0 normalised = the mean): red can only come from the maps
  # and the GT contours. Columns are images 0–5 (anomalous 3–5, maps ≥ 1 on
  # a shared scale up to ~2); rows: image, GT contour (red), map, overlay.
  viz.save_anomaly_maps(str(path), np.zeros_like(images), masks, maps,
                        scores=scores, mean=(0.5,) * 3, std=(0.2,) * 3)
  red = _red(fp.read_rgb(path))
  h, w = red.shape
  cols = np.array_split(red[:, :int(0.92 * w)], 6, axis=1)  # no colour bar
  for j, col in enumerate(cols):
    quarters = [q.sum() for q in np.array_split(col, 4, axis=0)]
    if j < 3:  # normal: no red anywhere
      assert sum(quarters) == 0, (j, quarters)
    else:  # anomalous: contour, map and overlay, not the plain image
      assert quarters[0] == 0 and min(quarters[1:]) > 20, (j, quarters)


def test_save_overlay(tmp_path):
  rng = np.random.default_rng(1)
  image = rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)
  path = tmp_path / "overlay.png"
  amap = rng.random((10, 10))
  amap[:5, :5] = 2.0  # the top-left quarter at the top of the scale
  viz.save_overlay(str(path), image, amap, vmin=0.0, vmax=2.0)
  _check_png(path)
  rgb = fp.read_rgb(path)
  assert rgb.shape[:2] == (40, 60)
  # Where the map is high the overlay is red (½·jet(1) = dark red over the
  # image: R − B ≥ ½·0.5 on average), elsewhere (map < 1, jet below green)
  # it is not: blue outweighs red.
  hot, rest = rgb[1:19, 1:29], rgb[22:, 32:]
  assert (hot[..., 0] - hot[..., 2]).mean() > 0.2
  assert (rest[..., 2] - rest[..., 0]).mean() > 0.1


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
  # Grey images: red only where an anomalous map (≥ 1 of ~2) is overlaid.
  # Rows: best normals, best anomalies, worst normals, worst anomalies; 3
  # images of each class, so the 4th tile of every row is empty.
  viz.save_best_worst_grid(str(path), np.zeros_like(images), masks, maps,
                           scores, labels, k=4)
  red = _red(fp.read_rgb(path))
  tiles = [[t.sum() for t in np.array_split(row, 4, axis=1)]
           for row in np.array_split(red, 4, axis=0)]
  for i, row in enumerate(tiles):
    if i in (1, 3):
      assert min(row[:3]) > 20 and row[3] == 0, (i, row)
    else:
      assert sum(row) == 0, (i, row)


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
  # What it shows, panel by panel (thirds of the figure, left to right),
  # keys in sorted order as C0, C1: the evaluation points (test 0.7 above
  # transductive 0.6), the falling losses (loss above bce), the rising
  # pseudo-anomalous fraction; y in pixels grows downwards.
  rgb = fp.read_rgb(path)
  third = rgb.shape[1] // 3
  panels = [rgb[:, i * third:(i + 1) * third] for i in range(3)]

  def pixels(panel, colour):
    ys, xs = np.nonzero(fp.colour_mask(panel, colour))
    assert len(ys) > 20, colour
    return xs, ys

  def slope(panel, colour):
    return np.polyfit(*pixels(panel, colour), 1)[0]

  assert (pixels(panels[0], fp.C0)[1].mean()
          < pixels(panels[0], fp.C1)[1].mean())
  assert slope(panels[1], fp.C0) > 0.05 and slope(panels[1], fp.C1) > 0.05
  assert pixels(panels[1], fp.C1)[1].mean() < pixels(panels[1], fp.C0)[1].mean()
  assert slope(panels[2], fp.C0) < -0.05
  assert not fp.colour_mask(panels[2], fp.C1).any()  # one series only
  assert not viz.save_learning_curve(str(tmp_path / "none.png"),
                                     [{"epoch": 1, "num_pairs": 3.0}])
  assert not (tmp_path / "none.png").exists()
