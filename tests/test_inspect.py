"""dicofun inspect: an unlabelled folder in, scores, report and model out.

Units (the label-free threshold, folder labels, screening), ``inspect_folder``
with a fake method whose scores are hand-computable, the report's HTML, and
one end-to-end ``python -m dicofun inspect`` with SoftPatch on a contaminated
synthetic folder.
"""

import csv
import glob
import html.parser
import json
import os
import shutil
import subprocess
import sys
import time
import types
import urllib.parse

import numpy as np
from PIL import Image
import pytest

from dicofun import api
from dicofun import inspection
from dicofun import methods
from dicofun import metrics
from dicofun import predict
from dicofun.data import errors
from dicofun.data import folder
from dicofun.data import images

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
S = 16


# ------------------------------------------------------------------ units


def test_robust_threshold_is_median_plus_scaled_mad():
  t, rule = metrics.robust_threshold(np.array([1.0, 2, 3, 4, 100]))
  # median 3, |x - 3| = 2, 1, 0, 1, 97 → MAD 1.
  assert t == pytest.approx(3 + 3.5 * 1.4826)
  assert "MAD" in rule


def test_robust_threshold_with_a_contamination_hint_is_a_quantile():
  t, rule = metrics.robust_threshold(np.array([1.0, 2, 3, 4, 100]),
                                     contamination=0.2)
  # 0.8 quantile: position 3.2 between 4 and 100.
  assert t == pytest.approx(4 + 0.2 * 96)
  assert "0.8 quantile" in rule
  with pytest.raises(ValueError, match="in \\(0, 1\\)"):
    metrics.robust_threshold(np.ones(3), contamination=1.5)


def test_robust_threshold_of_identical_scores_flags_none():
  """No spread means nothing is an outlier (issue 25 #3)."""
  for value in (0.0625, 0.0, 19.3):
    scores = np.full(20, value)
    t, _ = metrics.robust_threshold(scores)
    assert t > value
    assert not metrics.is_anomalous(scores, t).any(), value
  # Scores equal up to float32 rounding are no spread either.
  scores = np.full(20, np.float32(0.1), np.float64)
  scores[::3] = np.nextafter(np.float32(0.1), np.float32(1))
  t, _ = metrics.robust_threshold(scores)
  assert not metrics.is_anomalous(scores, t).any()


def test_robust_threshold_of_mostly_tied_scores_uses_the_mean_deviation():
  # 19 tied scores and one outlier: MAD 0, so the spread is
  # 1.253314 · mean |x − median| = 1.253314 · 3/20 (Iglewicz & Hoaglin).
  scores = np.array([2.0] * 19 + [5.0])
  t, rule = metrics.robust_threshold(scores)
  assert t == pytest.approx(2 + 3.5 * 1.253314 * 0.15)
  assert "MAD" in rule
  np.testing.assert_array_equal(metrics.is_anomalous(scores, t),
                                [False] * 19 + [True])


def test_folder_labels_from_good_and_other_subfolders(tmp_path):
  root = str(tmp_path)
  paths = [os.path.join(root, p) for p in
           ("OK/a.png", "line1/good/b.png", "scratch/c.png", "loose.png")]
  np.testing.assert_array_equal(folder.folder_labels(root, paths),
                                [0, 0, 1, -1])
  # Without any good/ok folder nothing is labelled.
  plain = [os.path.join(root, p) for p in ("cam1/a.png", "cam2/b.png")]
  np.testing.assert_array_equal(folder.folder_labels(root, plain), [-1, -1])


def test_folder_labels_from_a_csv(tmp_path):
  root = str(tmp_path)
  csv_path = tmp_path / "labels.csv"
  csv_path.write_text("file,label\na.png,0\nb.png,defect\nc.png,\n"
                      f"{os.path.join(root, 'd.png')},ok\n")
  paths = [os.path.join(root, n) for n in ("a.png", "b.png", "c.png",
                                           "d.png", "e.png")]
  np.testing.assert_array_equal(
      folder.folder_labels(root, paths, labels_csv=str(csv_path)),
      [0, 1, -1, 0, -1])
  bad = tmp_path / "bad.csv"
  bad.write_text("name,y\na.png,0\n")
  with pytest.raises(errors.DatasetError, match="'file' and 'label'"):
    folder.folder_labels(root, paths, labels_csv=str(bad))


def test_screen_images_sorts_readable_unreadable_and_small(tmp_path):
  noise = np.random.default_rng(0).integers(0, 256, (20, 30, 3), np.uint8)
  Image.fromarray(noise).save(tmp_path / "ok.png")
  Image.fromarray(np.zeros((10, 40, 3), np.uint8)).save(tmp_path / "low.png")
  data = (tmp_path / "ok.png").read_bytes()
  (tmp_path / "cut.png").write_bytes(data[:len(data) // 2])
  (tmp_path / "zero.png").write_bytes(b"")
  (tmp_path / "text.png").write_text("not an image")
  paths = images.list_images_recursive(tmp_path)
  got = images.screen_images(paths, min_size=16, desc=None)
  assert [os.path.basename(p) for p in got.readable] == ["low.png", "ok.png"]
  assert [(os.path.basename(p), why) for p, why in got.errors] == [
      ("cut.png", "OSError: image file is truncated"),
      ("text.png", "UnidentifiedImageError: cannot identify image file "
       f"{str(tmp_path / 'text.png')!r}"),
      ("zero.png", "empty file (0 bytes)")]
  assert [(os.path.basename(p), s) for p, s in got.small] == [
      ("low.png", (40, 10))]


# ------------------------------------------------- inspect_folder, fake method


def _fake_method():
  """Score = mean pixel / 255; the map is that score everywhere."""

  def score(records, s):
    v = np.array([images.load_image(r.image_path).mean() / 255.0
                  for r in records])
    return v, np.stack([np.full((s, s), x, np.float32) for x in v])

  def run(config, data, workdir):
    del workdir
    assert data.test == []
    s, m = score(data.train, config.dataset.image_size)
    return api.Predictions(test_scores=np.zeros(0), test_maps=None,
                           train_scores=s, train_maps=m,
                           state={"offset": np.float32(0.0)})

  def predict_fn(config, state, records):
    s, m = score(records, config.dataset.image_size)
    return s + float(state["offset"]), m

  mod = types.ModuleType("fake_inspect_method")
  mod.run, mod.predict = run, predict_fn
  return mod


# Grey levels: five normals, one defect, one unlabelled loose file.
_FOLDER = {"good/a.png": 100, "good/b.png": 102, "good/c.png": 104,
           "good/d.png": 106, "good/e.png": 108, "defect/x.png": 250,
           "loose.png": 104}


def _make_folder(root):
  for rel, v in _FOLDER.items():
    os.makedirs(os.path.dirname(os.path.join(root, rel)) or root,
                exist_ok=True)
    Image.fromarray(np.full((20, 20, 3), v, np.uint8)).save(
        os.path.join(root, rel))
  noise = np.random.default_rng(0).integers(0, 256, (20, 20, 3), np.uint8)
  Image.fromarray(noise).save(os.path.join(root, "good/cut.png"))
  good = open(os.path.join(root, "good/cut.png"), "rb").read()
  with open(os.path.join(root, "good/cut.png"), "wb") as f:
    f.write(good[:len(good) // 2])
  open(os.path.join(root, "good/zero.png"), "wb").close()


@pytest.fixture
def inspected(tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, "fake_inspect_method", _fake_method())
  monkeypatch.setitem(methods.METHODS, "fake", "fake_inspect_method")
  root = str(tmp_path / "line")
  _make_folder(root)
  config = inspection.inspect_config("patchcore", image_size=S)
  config.method = "fake"
  out = str(tmp_path / "out")
  outcome = inspection.inspect_folder(root, out_dir=out, config=config)
  return root, out, outcome


def _rows(path):
  with open(path, newline="") as f:
    return list(csv.DictReader(f))


def test_inspect_of_twenty_identical_images_flags_none(tmp_path, monkeypatch):
  """Issue 25 #3: MAD 0 made the threshold the median and flagged all 20."""
  monkeypatch.setitem(sys.modules, "fake_inspect_method", _fake_method())
  monkeypatch.setitem(methods.METHODS, "fake", "fake_inspect_method")
  root = tmp_path / "same"
  root.mkdir()
  for i in range(20):
    Image.fromarray(np.full((20, 20, 3), 77, np.uint8)).save(
        root / f"{i:02d}.png")
  config = inspection.inspect_config("patchcore", image_size=S)
  config.method = "fake"
  outcome = inspection.inspect_folder(str(root), out_dir=str(tmp_path / "o"),
                                      config=config)
  np.testing.assert_array_equal(outcome.scores, 77 / 255)
  assert outcome.threshold > 77 / 255
  assert not outcome.decisions.any()
  rows = _rows(outcome.csv_path)
  assert len(rows) == 20 and {r["decision"] for r in rows} == {"0"}


def test_inspect_scores_every_readable_image_with_a_robust_threshold(
    inspected):
  root, out, outcome = inspected
  # Scores v/255: median 104, MAD 2 → threshold (104 + 3.5·1.4826·2)/255.
  assert outcome.threshold == pytest.approx((104 + 3.5 * 1.4826 * 2) / 255)
  rows = _rows(os.path.join(out, "scores.csv"))
  assert [r["file"] for r in rows] == [
      "defect/x.png", "good/e.png", "good/d.png", "good/c.png", "loose.png",
      "good/b.png", "good/a.png"]
  assert [r["rank"] for r in rows] == ["1", "2", "3", "4", "5", "6", "7"]
  np.testing.assert_allclose([float(r["score"]) for r in rows],
                             np.array([250, 108, 106, 104, 104, 102, 100])
                             / 255.0)
  assert [r["decision"] for r in rows] == ["1", "0", "0", "0", "0", "0", "0"]
  assert [r["label"] for r in rows] == ["1", "0", "0", "0", "", "0", "0"]
  assert rows[0]["overlay"] == os.path.join("overlays", "defect", "x.png.jpg")
  assert all(os.path.isfile(os.path.join(out, r["overlay"])) for r in rows)
  assert [(r["file"], r["reason"]) for r in _rows(
      os.path.join(out, "errors.csv"))] == [
          ("good/cut.png", "OSError: image file is truncated"),
          ("good/zero.png", "empty file (0 bytes)")]
  # Labels from good/ vs defect/: 6 labelled, perfectly separated.
  assert outcome.metrics["labelled_images"] == 6
  assert outcome.metrics["image_auroc"] == 1.0
  assert outcome.metrics["precision_at_threshold"] == 1.0
  assert outcome.metrics["recall_at_threshold"] == 1.0
  assert os.path.isfile(os.path.join(out, "roc.png"))
  with open(os.path.join(out, "inspect.json")) as f:
    info = json.load(f)
  assert (info["images"], info["flagged"], info["unreadable"]) == (7, 1, 2)


def test_inspect_model_scores_new_images_the_same_way(inspected, tmp_path):
  root, out, outcome = inspected
  got = predict.predict_folder(out, root, out_dir=str(tmp_path / "pred"),
                               overlays=False)
  assert got.threshold == pytest.approx(outcome.threshold)
  by_file = dict(zip(outcome.files, outcome.scores))
  np.testing.assert_allclose(got.scores, [by_file[p] for p in got.files])
  assert len(got.errors) == 2


def test_strict_inspect_aborts(tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, "fake_inspect_method", _fake_method())
  monkeypatch.setitem(methods.METHODS, "fake", "fake_inspect_method")
  root = str(tmp_path / "line")
  _make_folder(root)
  config = inspection.inspect_config("patchcore", image_size=S)
  config.method = "fake"
  with pytest.raises(errors.DatasetError, match="2 unreadable file"):
    inspection.inspect_folder(root, out_dir=str(tmp_path / "out"),
                              config=config, strict=True)


def test_an_image_above_the_pixel_limit_is_listed_and_the_rest_scored(
    tmp_path, monkeypatch):
  """``config.dataset.max_image_pixels`` (issue 25 #10): the large file
  goes to errors.csv with the limit named; every other image is scored."""
  monkeypatch.setitem(sys.modules, "fake_inspect_method", _fake_method())
  monkeypatch.setitem(methods.METHODS, "fake", "fake_inspect_method")
  root = tmp_path / "line"
  root.mkdir()
  for i in range(5):
    Image.fromarray(np.full((16, 16, 3), 100 + i, np.uint8)).save(
        root / f"{i}.png")
  Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(root / "big.png")
  config = inspection.inspect_config("patchcore", image_size=S)
  assert config.dataset.max_image_pixels == images.DEFAULT_MAX_PIXELS
  config.method = "fake"
  config.dataset.max_image_pixels = 300
  out = tmp_path / "out"
  outcome = inspection.inspect_folder(str(root), out_dir=str(out),
                                      config=config)
  assert [os.path.basename(p) for p in outcome.files] == [
      f"{i}.png" for i in range(5)]
  assert [(r["file"], r["reason"]) for r in _rows(out / "errors.csv")] == [
      ("big.png", "20x20 = 400 pixels, above the limit of 300 "
       "(config.dataset.max_image_pixels)")]


def test_mvtec_layout_masks_add_pixel_metrics(tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, "fake_inspect_method", _fake_method())
  monkeypatch.setitem(methods.METHODS, "fake", "fake_inspect_method")
  cat = tmp_path / "widget"
  for rel, v in [("test/good/a.png", 100), ("test/good/b.png", 102),
                 ("test/good/c.png", 104), ("test/good/d.png", 106),
                 ("test/good/e.png", 108), ("test/crack/x.png", 250)]:
    (cat / rel).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((20, 20, 3), v, np.uint8)).save(cat / rel)
  mask = np.zeros((20, 20), np.uint8)
  mask[:, :5] = 255  # Nearest 20 → 16 keeps 4 of 16 columns: f = 1/4.
  (cat / "ground_truth" / "crack").mkdir(parents=True)
  Image.fromarray(mask).save(cat / "ground_truth" / "crack" / "x_mask.png")
  config = inspection.inspect_config("patchcore", image_size=S)
  config.method = "fake"
  outcome = inspection.inspect_folder(str(cat / "test"),
                                      out_dir=str(tmp_path / "out"),
                                      config=config)
  # Maps are constant per image: the defect's mask pixels beat the 5 normal
  # images' pixels and tie with its own other pixels:
  # AUROC = (5 + ½(1 − f)) / (6 − f) with f = 1/4.
  assert outcome.metrics["pixel_auroc"] == pytest.approx(5.375 / 5.75)
  # AUPRO: one region (the 64 mask pixels); normal pixels: 5·256 + the
  # defect image's other 192, which score highest (250/255). The curve goes
  # (0, 0) → (192/1472, 1), then the next score (108/255) jumps past FPR 0.3:
  # area 0.3 − ½·192/1472, over 0.3.
  assert outcome.metrics["aupro"] == pytest.approx(1 - 192 / 1472 / 0.6)


def test_missing_or_empty_folder_is_named(tmp_path):
  with pytest.raises(errors.DatasetError, match="not found: .*nowhere"):
    inspection.inspect_folder(str(tmp_path / "nowhere"),
                              out_dir=str(tmp_path / "o"))
  (tmp_path / "empty").mkdir()
  (tmp_path / "empty" / "notes.txt").write_text("no images")
  with pytest.raises(errors.EmptyCategoryError, match="empty"):
    inspection.inspect_folder(str(tmp_path / "empty"),
                              out_dir=str(tmp_path / "o"))


class _ReportParser(html.parser.HTMLParser):
  """Collects <img src> and the text of <td class="file"> cells."""

  def __init__(self):
    super().__init__()
    self.srcs, self.files, self.links = [], [], []
    self._in_file = False

  def handle_starttag(self, tag, attrs):
    attrs = dict(attrs)
    if tag == "img":
      self.srcs.append(attrs["src"])
    if tag == "a":
      self.links.append(attrs["href"])
    if tag == "td":
      self._in_file = attrs.get("class") == "file"

  def handle_data(self, data):
    if self._in_file:
      self.files.append(data)
      self._in_file = False


def src_file(page_dir, src):
  """The file a relative URL ``src`` of a page in ``page_dir`` loads, as a
  browser reads it (``#`` starts a fragment, ``?`` a query, ``%XX`` is a
  byte), or None when no such file exists."""
  url = urllib.parse.urlsplit(src)
  if url.scheme or url.netloc or url.query or url.fragment:
    return None
  path = os.path.join(page_dir, urllib.parse.unquote(url.path))
  return path if os.path.isfile(path) else None


def check_report(out_dir):
  """Every image the page references exists (or is a data: URI); every
  scored file appears exactly once."""
  with open(os.path.join(out_dir, "report.html"), encoding="utf-8") as f:
    page = f.read()
  assert "http://" not in page and "https://" not in page
  parser = _ReportParser()
  parser.feed(page)
  assert parser.srcs
  for src in parser.srcs:
    if not src.startswith("data:image/"):
      assert src_file(out_dir, src), src
  for href in parser.links:  # The figures and the original images.
    assert src_file(out_dir, href), href
  scored = [r["file"] for r in _rows(os.path.join(out_dir, "scores.csv"))]
  assert sorted(parser.files) == sorted(scored)
  assert len(set(parser.files)) == len(parser.files)
  return parser


def test_report_references_existing_images_and_lists_each_file_once(
    inspected):
  _, out, _ = inspected
  parser = check_report(out)
  # Two pictures per image (view, overlay) plus histogram and ROC.
  assert len(parser.srcs) == 2 * len(_FOLDER) + 2
  assert "histogram.png" in parser.srcs and "roc.png" in parser.srcs
  with open(os.path.join(out, "report.html"), encoding="utf-8") as f:
    page = f.read()
  assert "<th>labelled_images</th><td>6</td>" in page
  assert "<th>image_auroc</th><td>1.0000</td>" in page
  assert "1 of 7 images flagged" in page


def test_report_command_rebuilds_the_inspect_page_from_its_files(
    inspected, tmp_path):
  from dicofun import report  # pylint: disable=g-import-not-at-top
  _, out, _ = inspected
  page = os.path.join(out, "report.html")
  with open(page, encoding="utf-8") as f:
    original = f.read()
  os.remove(page)
  assert report.build(out) == page
  with open(page, encoding="utf-8") as f:
    assert f.read() == original
  # Elsewhere: the same page with its image paths relative to the new place.
  moved = report.build(out, str(tmp_path / "elsewhere" / "page.html"))
  parser = _ReportParser()
  parser.feed(open(moved, encoding="utf-8").read())
  assert all(src_file(os.path.dirname(moved), src) for src in parser.srcs)
  assert len(parser.srcs) == 2 * len(_FOLDER) + 2


def test_report_links_to_awkward_file_names_resolve(tmp_path, monkeypatch):
  """``#``, ``?``, ``%`` and spaces in file names are URL-encoded in the
  page (issue 25 #13), for the inspect page and its rebuilt copy."""
  from dicofun import report  # pylint: disable=g-import-not-at-top
  monkeypatch.setitem(sys.modules, "fake_inspect_method", _fake_method())
  monkeypatch.setitem(methods.METHODS, "fake", "fake_inspect_method")
  root = tmp_path / "line"
  names = ["a#1.png", "b?2.png", "c%41.png", "d e.png", "e&f.png", "g.png"]
  for i, name in enumerate(["sub#dir/x.png"] + names):
    (root / name).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((20, 20, 3), 100 + i, np.uint8)).save(root / name)
  config = inspection.inspect_config("patchcore", image_size=S)
  config.method = "fake"
  out = str(tmp_path / "out")
  inspection.inspect_folder(str(root), out_dir=out, config=config)
  parser = check_report(out)
  assert len(parser.srcs) == 2 * 7 + 1
  assert "images/a%231.png.jpg" in parser.srcs
  assert "overlays/sub%23dir/x.png.jpg" in parser.srcs
  assert "images/b%3F2.png.jpg" in parser.srcs
  moved = report.build(out, str(tmp_path / "elsewhere" / "page.html"))
  parser = _ReportParser()
  parser.feed(open(moved, encoding="utf-8").read())
  assert len(parser.srcs) == 2 * 7 + 1
  assert all(src_file(os.path.dirname(moved), src) for src in parser.srcs)


def test_inspect_headline_names_the_small_images_and_the_auroc():
  from dicofun import report  # pylint: disable=g-import-not-at-top
  lines = report.inspect_headline(
      flagged=1, images=52, threshold=0.25, rule="robust", unreadable=2,
      small=[("good/tiny10.png", 10, 10)], image_size=224, out_dir="out",
      metrics={"labelled_images": 52, "image_auroc": 0.87234})
  assert lines[:3] == [
      "1 of 52 images flagged (score >= 0.25; threshold: robust).",
      "Transductive image AUROC against the 52 labelled images: 0.8723.",
      "2 unreadable file(s) skipped; 1 image(s) smaller than 224x224 "
      "upscaled: good/tiny10.png (10x10)."]
  many = [(f"{i}.png", 5, 6) for i in range(7)]
  line = report.inspect_headline(
      flagged=0, images=7, threshold=1.0, rule="r", unreadable=0, small=many,
      image_size=8, out_dir="o")[1]
  assert line.endswith("upscaled: 0.png (5x6), 1.png (5x6), 2.png (5x6), "
                       "3.png (5x6), 4.png (5x6) and 2 more.")


def test_report_of_a_run_workdir_ranks_the_test_images(tmp_path):
  from dicofun import report  # pylint: disable=g-import-not-at-top
  run = tmp_path / "run"
  (run / "data").mkdir(parents=True)
  rows = [("data/a.png", "good", 0, 0, 0.2), ("data/b.png", "crack", 1, 0, 0.9),
          ("data/c.png", "good", 0, 0, 0.5), ("data/d.png", "crack", 1, 1, 0.4)]
  for rel, *_ in rows:
    Image.fromarray(np.full((300, 200, 3), 7, np.uint8)).save(run / rel)
  with open(run / "test_scores.csv", "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["image_path", "defect", "label", "moved", "score"])
    w.writerows(rows)
  Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(run / "roc.png")
  (run / "results.json").write_text(json.dumps({
      "threshold": 0.45, "threshold_rule": "99th percentile",
      "metrics": {"test": {"image_auroc": 0.75, "aupro": 0.5}},
      "config": {"method": "patchcore",
                 "dataset": {"name": "synthetic", "category": "texture"}}}))
  page = report.build(str(run))
  assert page == str(run / "report.html")
  html_text = open(page, encoding="utf-8").read()
  parser = _ReportParser()
  parser.feed(html_text)
  # Highest score first; data/d.png was moved into the training set.
  assert parser.files == ["data/b.png", "data/c.png",
                          "data/d.png (moved into training)", "data/a.png"]
  assert html_text.count("FLAGGED") == 2  # 0.9 and 0.5 >= 0.45.
  assert "<th>test.image_auroc</th><td>0.7500</td>" in html_text
  assert "2 at or above the stored threshold 0.45" in html_text
  for src in parser.srcs:
    assert src_file(str(run), src), src
  assert "roc.png" in parser.srcs and "report_histogram.png" in parser.srcs
  thumb = Image.open(run / "report_images" / "00001_b.png.jpg")
  assert thumb.size == (75, 112)  # 200x300 in a 112-pixel box.
  with pytest.raises(report.NotAReportableRunError, match="not a finished"):
    report.build(str(tmp_path / "data_only"))


# ------------------------------------------------------------- end to end


def _synthetic_line_folder(tmp_path):
  """train/good + 10 % defective test images, plus four awkward files."""
  gen = tmp_path / "mvtec"
  subprocess.run([sys.executable, "-m", "dicofun.data.synthetic",
                  f"--root={gen}", "--num_train=27", "--num_test_good=1",
                  "--num_test_anomalous=3", "--image_size=64"], check=True,
                 capture_output=True, cwd=REPO, timeout=120)
  src = gen / "texture"
  line = tmp_path / "line"
  (line / "good").mkdir(parents=True)
  (line / "defect").mkdir()
  goods = sorted(glob.glob(str(src / "train" / "good" / "*.png")))
  for p in goods:
    shutil.copy(p, line / "good")
  bad = sorted(p for p in glob.glob(str(src / "test" / "*" / "*.png"))
               if os.path.basename(os.path.dirname(p)) != "good")[:3]
  for p in bad:
    shutil.copy(p, line / "defect" / (
        os.path.basename(os.path.dirname(p)) + "_" + os.path.basename(p)))
  data = open(goods[0], "rb").read()
  (line / "good" / "truncated.png").write_bytes(data[:len(data) // 2])
  (line / "good" / "empty.png").write_bytes(b"")
  gray = np.asarray(Image.open(goods[1]).convert("L"), np.uint16) * 16
  Image.fromarray(gray).save(line / "good" / "sixteen_bit.png")  # 12-bit
  Image.open(goods[2]).resize((10, 10)).save(line / "good" / "tiny.png")
  return line, len(goods) + len(bad) + 2


def test_end_to_end_cli_on_a_contaminated_folder(tmp_path):
  line, n_readable = _synthetic_line_folder(tmp_path)
  out = tmp_path / "report"
  env = dict(os.environ, DICOFUN_CACHE=str(tmp_path / "cache"))
  t0 = time.time()
  proc = subprocess.run(
      [sys.executable, "-m", "dicofun", "inspect", str(line), f"--out={out}",
       "--image_size=64"],
      capture_output=True, text=True, timeout=600, cwd=str(tmp_path), env=env)
  seconds = time.time() - t0
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert [r["file"] for r in _rows(out / "errors.csv")] == [
      "good/empty.png", "good/truncated.png"]
  rows = _rows(out / "scores.csv")
  assert len(rows) == n_readable
  assert {"good/sixteen_bit.png", "good/tiny.png"} <= {r["file"] for r in rows}
  # The scores and flags: ranked highest first, flagged exactly at the
  # label-free threshold of these scores, labels from the folder names.
  scores = np.array([float(r["score"]) for r in rows])
  labels = np.array([int(r["label"]) for r in rows])
  info = json.loads((out / "inspect.json").read_text())
  threshold, _ = metrics.robust_threshold(scores)
  assert info["threshold"] == pytest.approx(threshold)
  assert [r["rank"] for r in rows] == [str(i) for i in
                                       range(1, len(rows) + 1)]
  assert np.all(np.diff(scores) <= 0)
  assert [r["decision"] for r in rows] == [
      str(int(s >= threshold)) for s in scores]
  assert labels.tolist() == [int(r["file"].startswith("defect/"))
                             for r in rows]
  flagged = sum(r["decision"] == "1" for r in rows)
  assert info["flagged"] == flagged
  assert 1 <= flagged < len(rows) // 2
  assert f"flagged: {flagged} (score >= " in proc.stdout
  # The blob defect stands out (about twice the median score).
  assert rows[0]["file"] == "defect/blob_000.png"
  assert rows[0]["decision"] == "1"
  assert info["metrics"]["image_auroc"] == pytest.approx(
      metrics.image_auroc(scores, labels))
  assert info["metrics"]["image_auroc"] > 0.6
  check_report(str(out))
  assert os.path.isdir(out / "model")
  assert f"report: {out / 'report.html'}" in proc.stdout
  assert "smaller than the 64x64 input" in proc.stderr
  print(f"inspect wall time {seconds:.1f}s\n{proc.stdout}")


def test_bank_methods_run_without_a_test_set_and_return_train_maps(
    monkeypatch):
  from dicofun.methods.patchcore import method as patchcore  # pylint: disable=g-import-not-at-top
  feats = np.random.default_rng(0).normal(size=(9, 4, 4, 8)).astype(
      np.float32)
  calls = []

  def load_features(config, recs, **kw):
    del config, kw
    calls.append(len(recs))
    return feats[:len(recs)]

  monkeypatch.setattr(patchcore.features_lib, "load_features", load_features)
  config = inspection.inspect_config("patchcore", image_size=S)
  recs = folder.unlabelled_records([f"{i}.png" for i in range(9)])
  preds = patchcore.run(config, api.RunData(train=recs, test=[]), "")
  assert calls == [9]  # No feature extraction for the empty test set.
  assert preds.test_scores.shape == (0,)
  bank = patchcore.fit(feats, coreset_fraction=0.1, projection_dim=128,
                       seed=0)
  loo = patchcore.score(patchcore.leave_one_out_bank(bank, feats), feats,
                        exclude_source=np.arange(9))
  want_scores, want_maps = patchcore.maps_and_scores(loo, size=S,
                                                     sigma=4.0)
  np.testing.assert_allclose(preds.train_scores, want_scores, rtol=1e-6)
  np.testing.assert_allclose(preds.train_maps, want_maps, rtol=1e-5,
                             atol=1e-6)
  assert preds.train_maps.shape == (9, S, S)


def test_each_command_help_lists_its_flags_with_defaults():
  from dicofun import cli  # pylint: disable=g-import-not-at-top
  text = cli.command_help("inspect")
  assert text.startswith("usage: dicofun inspect FOLDER")
  for flag in ("--method (default: 'softpatch')",
               "--backbone (default: 'efficientnet_lite0')",
               "--image_size (default: '224')",
               "--contamination_hint (default: None)",
               "--strict (default: 'false')", "--labels", "--out"):
    assert flag in text, flag
  assert set(cli.COMMANDS) == {
      "inspect", "run", "predict", "sweep", "report", "export", "demo"}
  assert "--batch_size (default: '1')" in cli.command_help("export")
  for command in cli.COMMANDS:
    text = cli.command_help(command)
    assert text.startswith(f"usage: dicofun {command}"), command
    fv = cli.flag_values(command)
    for name, flag in fv._flags().items():  # pylint: disable=protected-access
      if name == flag.name and type(flag).__name__ != "_FlagAlias":
        default = flag.default_as_str if flag.default is not None else "None"
        assert f"--{name}" in text and f"(default: {default})" in text, (
            command, name)
  report_help = cli.command_help("report")
  assert "--run (default: None)" in report_help
  assert "the HTML file (default <run>/report.html)" in report_help


def test_report_help_from_the_command_line():
  proc = subprocess.run([sys.executable, "-m", "dicofun", "report", "--help"],
                        capture_output=True, text=True, timeout=300, cwd=REPO)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout.startswith("usage: dicofun report --run=DIR [--out=FILE]")
  assert "--run (default: None)" in proc.stdout
  assert "--out (default: None)" in proc.stdout
  # Piped into a reader that stops early: no BrokenPipeError traceback.
  piped = subprocess.run(
      f"'{sys.executable}' -m dicofun report --help | head -1", shell=True,
      capture_output=True, text=True, timeout=300, cwd=REPO)
  assert piped.stdout.startswith("usage: dicofun report")
  assert "Traceback" not in piped.stderr, piped.stderr


def test_synthetic_inspect_folder_layout(tmp_path):
  from dicofun.data import synthetic  # pylint: disable=g-import-not-at-top
  root = synthetic.write_inspect_folder(str(tmp_path / "line"), num_good=3,
                                        num_defective=2, image_size=16)
  rels = sorted(os.path.relpath(p, root)
                for p in images.list_images_recursive(root))
  assert rels == ["defect/blob_000.png", "defect/scratch_000.png",
                  "good/000.png", "good/001.png", "good/002.png"]
  # The same pixels as the MVTec-layout generator's.
  cat = synthetic.generate(str(tmp_path / "mvtec"), num_train=3,
                           num_test_good=0, num_test_anomalous=2,
                           image_size=16)
  for a, b in [("good/001.png", "train/good/001.png"),
               ("defect/scratch_000.png", "test/scratch/000.png")]:
    np.testing.assert_array_equal(images.load_image(os.path.join(root, a)),
                                  images.load_image(os.path.join(cat, b)))
  with pytest.raises(FileExistsError):
    synthetic.write_inspect_folder(root)


def test_predict_takes_the_model_folder_as_model(tmp_path):
  """``dicofun predict --model=DIR`` (the issue's spelling) is --workdir."""
  proc = subprocess.run(
      [sys.executable, "-m", "dicofun", "predict",
       f"--model={tmp_path / 'no_run'}", f"--images={tmp_path}"],
      capture_output=True, text=True, timeout=300, cwd=REPO)
  assert proc.returncode != 0
  assert f"no inference checkpoint at {tmp_path / 'no_run' / 'model'}" in (
      proc.stderr), proc.stderr[-2000:]
  from dicofun import cli  # pylint: disable=g-import-not-at-top
  assert "--model, --workdir (default: None)" in cli.command_help("predict")
  assert "--model, --workdir (default: None)" in cli.command_help("export")
