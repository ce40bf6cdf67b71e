"""A procedural anomaly-detection dataset in the MVTec AD layout **(ours)**.

``generate(root, category=...)`` writes::

  root/<category>/
    train/good/000.png ...              normal training images
    test/good/000.png ...               normal test images
    test/<defect>/000.png ...           anomalous test images
    ground_truth/<defect>/000_mask.png  their masks (uint8 0/255)
    manifest.json                       the arguments and the file list

so every MVTec reader (``dicofun.data.mvtec.read_mvtec``) reads it unchanged.
It exists for tests, CI and smoke runs: no download, a few hundred KB, and
anomalies that are easy to see but not trivial to score.

Categories (``CATEGORIES``):

* ``"texture"``: a sum of oriented sinusoids plus low-pass filtered noise,
  mapped onto a two-colour palette. The orientations and frequencies are fixed
  per dataset (by ``seed``); every image draws its own phases, a small
  orientation/frequency jitter and its own noise field, so normal images vary.
* ``"object"``: a rounded rectangle with a round hole (a "washer plate") on a
  smooth background, with slight position and rotation jitter and its own
  surface shading.

Defects (``DEFECTS``), spread evenly over the anomalous test images (the
``i``-th anomalous image gets ``DEFECTS[i % 4]``):

* ``"scratch"``: a thin curved line (a quadratic Bezier curve), lighter or
  darker than the surface;
* ``"blob"``: a soft elliptical stain of a random colour;
* ``"crack"``: a dark, jagged random-walk polyline;
* ``"missing"``: a region replaced by the background (object) or by the flat
  mean colour of the texture.

Knobs behind the anomalies (module constants; changing them changes the data,
so they are part of ``_GENERATOR_VERSION``):

* ``SIZE_RANGE``: the defect's size as a fraction of the image side, drawn
  log-uniformly. Lines (scratch: length 1.5x size; crack: walk length 1.5x
  size) are 1-2 px wide and cover under ~2 % of the image; blobs and missing
  regions (semi-major axis 0.75x size) cover ~0.2 % to ~20 %, half of them
  under ~2 %;
* ``CONTRAST_RANGE``: the strength of scratches and blobs (fraction of the
  full intensity range), drawn uniformly, so some are faint; a crack darkens
  its pixels by a factor of 1 - (contrast + 0.3), since cracks are thin;
  a missing region's contrast is whatever the surface differed from its fill;
* ``MASK_THRESHOLD``: a pixel belongs to the mask when the defect's shape
  covers at least half of it, or when any channel changed by more than this
  many uint8 levels. The mask therefore contains every visibly changed pixel;
  an anomaly whose mask would be smaller than ``MIN_MASK_PIXELS`` is redrawn.

Everything is deterministic: every image has its own random generator seeded
by ``(seed, category, split, defect, index)``, and the PNG encoder is
deterministic, so the same arguments give byte-identical files. A second call
with the same arguments finds ``manifest.json`` and returns at once.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import shutil
import tempfile
from typing import Optional, Sequence

from absl import logging
import numpy as np
from PIL import Image
from PIL import ImageDraw

CATEGORIES = ("texture", "object")
DEFECTS = ("scratch", "blob", "crack", "missing")

GOOD = "good"
SIZE_RANGE = (0.04, 0.4)
CONTRAST_RANGE = (0.08, 0.45)
MASK_THRESHOLD = 2
MIN_MASK_PIXELS = 4

# Bump when the images a given set of arguments produces change; a manifest
# from another version is treated as stale and the data is regenerated.
_GENERATOR_VERSION = 1
_MANIFEST = "manifest.json"
_INSPECT_STAMP = ".synthetic.json"  # write_inspect_folder's arguments.
_SUPERSAMPLE = 4
_SPLIT_IDS = {"train": 0, "test": 1}


@dataclasses.dataclass(frozen=True)
class Sample:
  """One generated image.

  Attributes:
    image: uint8 HxWx3, what is written to disk.
    mask: bool HxW ground truth (all False for normal images).
    clean: uint8 HxWx3, the same image before the defect was drawn (equal to
      ``image`` for normal images); lets tests check the mask against the
      pixels that actually changed.
    defect: the defect type, or ``"good"``.
  """

  image: np.ndarray
  mask: np.ndarray
  clean: np.ndarray
  defect: str


# ----------------------------------------------------------------------------
# Normal images.


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
  """Pixel-centre coordinates (y, x), each HxW float32."""
  c = np.arange(size, dtype=np.float32) + 0.5
  return np.meshgrid(c, c, indexing="ij")


def _lowpass_noise(rng: np.random.Generator, size: int,
                   sigma: float) -> np.ndarray:
  """White noise blurred by a Gaussian of ``sigma`` pixels, unit variance."""
  white = rng.standard_normal((size, size), dtype=np.float32)
  fy = np.fft.fftfreq(size).astype(np.float32)[:, None]
  fx = np.fft.rfftfreq(size).astype(np.float32)[None, :]
  kernel = np.exp(-2.0 * (np.pi * sigma) ** 2 * (fx ** 2 + fy ** 2))
  out = np.fft.irfft2(np.fft.rfft2(white) * kernel, s=(size, size))
  out = out.astype(np.float32)
  return out / (out.std() + 1e-6)


def _style(category: str, seed: int) -> dict[str, np.ndarray]:
  """The per-dataset look: fixed by ``seed``, shared by all images."""
  rng = np.random.default_rng([seed, CATEGORIES.index(category), 7919])
  if category == "texture":
    n = 3
    return dict(
        angles=rng.uniform(0.0, np.pi, n),
        # Periods between 6 and 24 pixels at 128 px (scaled with the size).
        periods=rng.uniform(6.0, 24.0, n) / 128.0,
        weights=rng.uniform(0.5, 1.0, n),
        colour_a=rng.uniform(0.2, 0.45, 3),
        colour_b=rng.uniform(0.55, 0.8, 3),
    )
  return dict(
      background=rng.uniform(0.15, 0.35, 3),
      colour=rng.uniform(0.55, 0.8, 3),
  )


def _render_texture(rng: np.random.Generator, size: int,
                    style: dict[str, np.ndarray]
                    ) -> tuple[np.ndarray, np.ndarray, None]:
  """A texture image, its "missing" fill (the flat mean colour), no support."""
  yy, xx = _grid(size)
  field = np.zeros((size, size), np.float32)
  for angle, period, weight in zip(style["angles"], style["periods"],
                                   style["weights"]):
    a = angle + rng.normal(0.0, np.deg2rad(3.0))
    p = period * size * rng.uniform(0.97, 1.03)
    phase = rng.uniform(0.0, 2.0 * np.pi)
    field += weight * np.sin(
        2.0 * np.pi * (xx * np.cos(a) + yy * np.sin(a)) / p + phase)
  field /= np.sum(style["weights"])
  field += 0.35 * _lowpass_noise(rng, size, sigma=max(size / 64.0, 1.0))
  t = np.clip(0.5 + 0.4 * field, 0.0, 1.0)[..., None]
  image = style["colour_a"] * (1.0 - t) + style["colour_b"] * t
  fill = np.broadcast_to(image.mean(axis=(0, 1)), image.shape)
  return image.astype(np.float32), fill.astype(np.float32), None


def _object_sdf(size: int, centre: np.ndarray, angle: float) -> np.ndarray:
  """Signed distance (pixels, < 0 inside) of the holed rounded rectangle."""
  yy, xx = _grid(size)
  dx, dy = xx - centre[0], yy - centre[1]
  c, s = np.cos(angle), np.sin(angle)
  u, v = c * dx + s * dy, -s * dx + c * dy
  half = np.array([0.32, 0.22], np.float32) * size
  radius = 0.07 * size
  qx = np.abs(u) - (half[0] - radius)
  qy = np.abs(v) - (half[1] - radius)
  outside = np.hypot(np.maximum(qx, 0.0), np.maximum(qy, 0.0))
  rect = outside + np.minimum(np.maximum(qx, qy), 0.0) - radius
  # The hole sits off-centre so that rotations are visible.
  hole = 0.07 * size - np.hypot(u - 0.15 * size, v)
  return np.maximum(rect, hole)


def _render_object(rng: np.random.Generator, size: int,
                   style: dict[str, np.ndarray]
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """An object image, its "missing" fill (the background) and support.

  The support (bool HxW) is where defects may be centred: the object, away
  from its anti-aliased edge.
  """
  yy, xx = _grid(size)
  vignette = (0.9 + 0.2 * yy / size)[..., None]
  mottle = 0.01 * _lowpass_noise(rng, size, sigma=size / 16.0)[..., None]
  background = style["background"] * vignette + mottle
  centre = size / 2.0 + rng.uniform(-0.04, 0.04, 2) * size
  angle = np.deg2rad(rng.uniform(-10.0, 10.0))
  sdf = _object_sdf(size, centre, angle)
  alpha = np.clip(0.5 - sdf, 0.0, 1.0)[..., None]
  # Surface shading: a random-direction gradient plus fine grain.
  g = rng.uniform(0.0, 2.0 * np.pi)
  shade = 1.0 + 0.08 * ((xx - centre[0]) * np.cos(g)
                        + (yy - centre[1]) * np.sin(g)) / size
  grain = 0.015 * _lowpass_noise(rng, size, sigma=1.0)
  surface = style["colour"] * shade[..., None] + grain[..., None]
  image = background * (1.0 - alpha) + surface * alpha
  return image.astype(np.float32), background.astype(np.float32), sdf < -1.0


# ----------------------------------------------------------------------------
# Defects. Each shape function returns a float HxW coverage in [0, 1];
# ``_apply_defect`` turns it into a change of colour.


def _raster_polyline(points: np.ndarray, size: int, width: float) -> np.ndarray:
  """Anti-aliased coverage of a polyline, by drawing at 4x and averaging."""
  ss = _SUPERSAMPLE
  canvas = Image.new("L", (size * ss, size * ss), 0)
  draw = ImageDraw.Draw(canvas)
  pts = [(float(x) * ss, float(y) * ss) for x, y in points]
  w = max(int(round(width * ss)), 1)
  draw.line(pts, fill=255, width=w, joint="curve")
  for x, y in pts:  # Round caps so that thick segments join without gaps.
    r = w / 2.0
    draw.ellipse((x - r, y - r, x + r, y + r), fill=255)
  small = canvas.resize((size, size), Image.Resampling.BOX)
  return np.asarray(small, np.float32) / 255.0


def _scratch(rng: np.random.Generator, size: int, centre: np.ndarray,
             scale: float) -> np.ndarray:
  """A thin curved line of length ~ 1.5 * scale * size."""
  length = 1.5 * scale * size
  a = rng.uniform(0.0, np.pi)
  d = np.array([np.cos(a), np.sin(a)])
  n = np.array([-d[1], d[0]])
  p0, p2 = centre - d * length / 2, centre + d * length / 2
  p1 = centre + n * length * rng.uniform(-0.35, 0.35)
  t = np.linspace(0.0, 1.0, 24)[:, None]
  curve = (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t ** 2 * p2
  return _raster_polyline(curve, size, width=rng.uniform(0.8, 2.0))


def _crack(rng: np.random.Generator, size: int, centre: np.ndarray,
           scale: float) -> np.ndarray:
  """A jagged random-walk polyline, sometimes with one branch."""
  length = 1.5 * scale * size
  steps = int(rng.integers(6, 14))
  # A slowly drifting main direction plus independent per-step kinks: jagged
  # but going somewhere, unlike a pure random walk that curls up.
  drift = rng.uniform(0.0, 2.0 * np.pi)
  pts = [centre.copy()]
  for _ in range(steps):
    drift += rng.normal(0.0, 0.2)
    heading = drift + rng.normal(0.0, 0.6)
    pts.append(pts[-1] + length / steps * np.array([np.cos(heading),
                                                    np.sin(heading)]))
  pts = np.stack(pts)
  pts -= pts.mean(axis=0) - centre  # Centre the walk on ``centre``.
  width = rng.uniform(1.0, 2.2)
  cov = _raster_polyline(pts, size, width)
  if rng.random() < 0.5:
    start = pts[int(rng.integers(1, steps))]
    h0 = drift + rng.choice([-1.0, 1.0]) * rng.uniform(0.4, 1.2)
    branch = [start]
    for _ in range(max(steps // 3, 2)):
      h = h0 + rng.normal(0.0, 0.6)
      branch.append(branch[-1] + length / steps * np.array([np.cos(h),
                                                            np.sin(h)]))
    cov = np.maximum(cov, _raster_polyline(np.stack(branch), size,
                                           max(width * 0.7, 0.8)))
  return cov


def _ellipse_radius(rng: np.random.Generator, size: int, centre: np.ndarray,
                    scale: float, wobble: float) -> np.ndarray:
  """Normalised elliptical radius (1 on the boundary), optionally wobbly."""
  yy, xx = _grid(size)
  a = max(scale * size, 1.5)
  b = max(a * rng.uniform(0.4, 1.0), 1.5)
  th = rng.uniform(0.0, np.pi)
  dx, dy = xx - centre[0], yy - centre[1]
  u = (np.cos(th) * dx + np.sin(th) * dy) / a
  v = (-np.sin(th) * dx + np.cos(th) * dy) / b
  r = np.hypot(u, v)
  if wobble:
    phi = np.arctan2(v, u)
    k = rng.integers(2, 6, 2)
    ph = rng.uniform(0.0, 2.0 * np.pi, 2)
    r = r / (1.0 + wobble * (0.6 * np.sin(k[0] * phi + ph[0])
                             + 0.4 * np.sin(k[1] * phi + ph[1])))
  return r


def _blob(rng: np.random.Generator, size: int, centre: np.ndarray,
          scale: float) -> np.ndarray:
  """A soft elliptical stain: full inside 60 % of the radius, then fading."""
  r = _ellipse_radius(rng, size, centre, 0.75 * scale, wobble=0.1)
  t = np.clip((1.0 - r) / 0.4, 0.0, 1.0)
  return (t * t * (3.0 - 2.0 * t)).astype(np.float32)  # smoothstep


def _missing(rng: np.random.Generator, size: int, centre: np.ndarray,
             scale: float) -> np.ndarray:
  """An irregular region with an anti-aliased (one-pixel) edge."""
  r = _ellipse_radius(rng, size, centre, 0.75 * scale, wobble=0.2)
  a = max(0.75 * scale * size, 1.5)
  return np.clip((1.0 - r) * a + 0.5, 0.0, 1.0).astype(np.float32)


def _pick_centre(rng: np.random.Generator, size: int,
                 support: Optional[np.ndarray]) -> np.ndarray:
  """A defect centre (x, y): on the object when ``support`` is given."""
  if support is None:
    margin = 0.1 * size
    return rng.uniform(margin, size - margin, 2)
  ys, xs = np.nonzero(support)
  i = int(rng.integers(len(ys)))
  return np.array([xs[i] + 0.5, ys[i] + 0.5])


def _quantise(image: np.ndarray) -> np.ndarray:
  return np.clip(np.round(image * 255.0), 0, 255).astype(np.uint8)


def _apply_defect(rng: np.random.Generator, defect: str, clean: np.ndarray,
                  fill: np.ndarray, support: Optional[np.ndarray]
                  ) -> tuple[np.ndarray, np.ndarray]:
  """Draws one defect on ``clean`` (float); returns (uint8 image, mask)."""
  size = clean.shape[0]
  clean_q = _quantise(clean)
  lo, hi = np.log(SIZE_RANGE[0]), np.log(SIZE_RANGE[1])
  for _ in range(100):
    centre = _pick_centre(rng, size, support)
    scale = float(np.exp(rng.uniform(lo, hi)))
    contrast = rng.uniform(*CONTRAST_RANGE)
    if defect == "scratch":
      cov = _scratch(rng, size, centre, scale)
      sign = rng.choice([-1.0, 1.0])
      # Lighter or darker by ``contrast`` of the full range.
      out = clean + (sign * contrast) * cov[..., None]
    elif defect == "crack":
      cov = _crack(rng, size, centre, scale)
      # Cracks are dark; a faint one is a shallow darkening.
      out = clean * (1.0 - (contrast + 0.3) * cov[..., None])
    elif defect == "blob":
      cov = _blob(rng, size, centre, scale)
      colour = rng.uniform(0.0, 1.0, 3)
      direction = colour - clean.mean(axis=(0, 1))
      direction /= np.linalg.norm(direction) + 1e-6
      out = clean + (contrast * np.sqrt(3.0) * direction) * cov[..., None]
    elif defect == "missing":
      cov = _missing(rng, size, centre, scale)
      out = clean * (1.0 - cov[..., None]) + fill * cov[..., None]
    else:
      raise ValueError(f"unknown defect {defect!r}; known: {DEFECTS}")
    image = _quantise(out)
    changed = np.abs(image.astype(np.int16) - clean_q.astype(np.int16)).max(-1)
    mask = (changed > MASK_THRESHOLD)
    # The drawn shape counts only where it changed something (a "missing"
    # region over the background of an object changes nothing).
    mask |= (cov >= 0.5) & (changed > 0)
    if mask.sum() >= MIN_MASK_PIXELS:
      return image, mask
  raise RuntimeError(f"could not draw a visible {defect!r} defect")


# ----------------------------------------------------------------------------
# Public API.


def make_sample(category: str, *, seed: int = 0, image_size: int = 128,
                split: str = "test", index: int = 0,
                defect: str = GOOD) -> Sample:
  """Renders one image (and its mask) of the synthetic dataset.

  Args:
    category: one of ``CATEGORIES``.
    seed: dataset seed (fixes the look and every image).
    image_size: side of the square image in pixels.
    split: "train" or "test".
    index: index of the image among those of its (split, defect).
    defect: ``"good"`` for a normal image, else one of ``DEFECTS``.

  Returns:
    The ``Sample``; identical for identical arguments.
  """
  if category not in CATEGORIES:
    raise ValueError(f"unknown synthetic category {category!r}; known: "
                     f"{CATEGORIES}")
  if defect != GOOD and defect not in DEFECTS:
    raise ValueError(f"unknown defect {defect!r}; known: {DEFECTS}")
  defect_id = 0 if defect == GOOD else 1 + DEFECTS.index(defect)
  rng = np.random.default_rng([seed, CATEGORIES.index(category),
                               _SPLIT_IDS[split], defect_id, index])
  style = _style(category, seed)
  render = _render_texture if category == "texture" else _render_object
  clean, fill, support = render(rng, image_size, style)
  # Mild sensor noise, shared by the clean and the defective image.
  clean = clean + rng.normal(0.0, 0.006, clean.shape).astype(np.float32)
  clean_q = _quantise(clean)
  if defect == GOOD:
    return Sample(clean_q, np.zeros((image_size, image_size), bool), clean_q,
                  GOOD)
  image, mask = _apply_defect(rng, defect, clean, fill, support)
  return Sample(image, mask, clean_q, defect)


def _plan(*, num_train: int, num_test_good: int,
          num_test_anomalous: int) -> list[tuple[str, str, int, str]]:
  """Every file to write: (split, defect, index, relative image path)."""
  plan = [("train", GOOD, i, f"train/{GOOD}/{i:03d}.png")
          for i in range(num_train)]
  plan += [("test", GOOD, i, f"test/{GOOD}/{i:03d}.png")
           for i in range(num_test_good)]
  counters = {d: 0 for d in DEFECTS}
  for i in range(num_test_anomalous):
    d = DEFECTS[i % len(DEFECTS)]
    plan.append(("test", d, counters[d], f"test/{d}/{counters[d]:03d}.png"))
    counters[d] += 1
  return plan


def _mask_relpath(defect: str, index: int) -> str:
  return f"ground_truth/{defect}/{index:03d}_mask.png"


def _png_bytes(array: np.ndarray) -> bytes:
  """PNG of a uint8 array (HxWx3 RGB or HxW gray); same pixels, same bytes."""
  buf = io.BytesIO()
  # Fixed settings and no metadata: same pixels, same bytes. Level 1: the
  # noisy images barely compress further, and level 6 costs 3x the time.
  Image.fromarray(array).save(buf, format="PNG", compress_level=1)
  return buf.getvalue()


def _read_manifest(path: str) -> Optional[dict]:
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def generate(root: str, *, category: str = "texture", num_train: int = 60,
             num_test_good: int = 20, num_test_anomalous: int = 20,
             image_size: int = 128, seed: int = 0) -> str:
  """Writes the synthetic dataset of one category in the MVTec AD layout.

  Args:
    root: parent folder; the data goes to ``root/<category>/``.
    category: one of ``CATEGORIES``.
    num_train: number of normal training images.
    num_test_good: number of normal test images.
    num_test_anomalous: number of anomalous test images, spread evenly over
      ``DEFECTS`` in order (so 4 or more covers every defect type).
    image_size: side of the square images, in pixels (>= 16).
    seed: fixes the dataset's look and every image.

  Returns:
    The category folder, ready for ``dicofun.data.mvtec.read_mvtec``.

  Raises:
    ValueError: unknown category or bad sizes.
    FileExistsError: ``root/<category>`` exists, is not empty and was not
      written by this generator (it is never overwritten).
  """
  if category not in CATEGORIES:
    raise ValueError(f"unknown synthetic category {category!r}; known: "
                     f"{CATEGORIES}")
  if image_size < 16:
    raise ValueError(f"image_size must be >= 16, got {image_size}")
  if num_train < 1 or num_test_good < 0 or num_test_anomalous < 0 or (
      num_test_good + num_test_anomalous < 1):
    raise ValueError("need num_train >= 1 and at least one test image; got "
                     f"{num_train}, {num_test_good}, {num_test_anomalous}")
  root = os.path.abspath(os.path.expanduser(os.fspath(root)))
  category_dir = os.path.join(root, category)
  args = dict(category=category, num_train=num_train,
              num_test_good=num_test_good,
              num_test_anomalous=num_test_anomalous, image_size=image_size,
              seed=seed, version=_GENERATOR_VERSION)
  plan = _plan(num_train=num_train, num_test_good=num_test_good,
               num_test_anomalous=num_test_anomalous)
  files = sorted([p for *_, p in plan]
                 + [_mask_relpath(d, i) for _, d, i, _ in plan if d != GOOD])

  manifest_path = os.path.join(category_dir, _MANIFEST)
  manifest = _read_manifest(manifest_path)
  if (manifest is not None and manifest.get("args") == args
      and manifest.get("files") == files
      and all(os.path.isfile(os.path.join(category_dir, f)) for f in files)):
    logging.info("Synthetic %s data already at %s", category, category_dir)
    return category_dir
  if os.path.isdir(category_dir) and manifest is None and os.listdir(
      category_dir):
    raise FileExistsError(
        f"{category_dir!r} exists and was not written by the synthetic "
        f"generator (no {_MANIFEST}); refusing to overwrite it. Pick another "
        "root or remove it.")

  # Written into a temporary sibling and renamed, so that an interrupted run
  # never leaves a half-written dataset behind a valid-looking folder.
  os.makedirs(root, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=f".{category}.tmp-", dir=root)
  try:
    for split, defect, index, rel in plan:
      sample = make_sample(category, seed=seed, image_size=image_size,
                           split=split, index=index, defect=defect)
      outputs = [(rel, sample.image)]
      if defect != GOOD:
        outputs.append((_mask_relpath(defect, index),
                        sample.mask.astype(np.uint8) * 255))
      for path, array in outputs:
        full = os.path.join(tmp, path)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        with open(full, "wb") as f:
          f.write(_png_bytes(array))
    with open(os.path.join(tmp, _MANIFEST), "w") as f:
      json.dump(dict(args=args, files=files), f, indent=1, sort_keys=True)
    if os.path.isdir(category_dir):
      shutil.rmtree(category_dir)  # Ours (it had a manifest) but stale.
    os.replace(tmp, category_dir)
  finally:
    if os.path.isdir(tmp):
      shutil.rmtree(tmp, ignore_errors=True)
  logging.info("Wrote synthetic %s data (%d files) to %s", category,
               len(files), category_dir)
  return category_dir


def write_inspect_folder(root: str, *, category: str = "texture",
                         num_good: int = 45, num_defective: int = 5,
                         image_size: int = 128, seed: int = 0) -> str:
  """One contaminated folder as a line delivers it, for ``dicofun inspect``.

  ``root/good/NNN.png`` are the normal training images of ``generate`` and
  ``root/defect/<defect>_NNN.png`` its anomalous test images (same seeds,
  so the same pixels); the folder names only give the report its labels.

  Running it again with the same arguments on the folder it wrote does
  nothing (its arguments are kept in the hidden ``.synthetic.json``, which
  image listings skip), so a quick-start command can be repeated.

  Returns:
    ``root`` (absolute).

  Raises:
    ValueError: bad sizes.
    FileExistsError: ``root`` exists, is not empty and is not this call's
      folder.
  """
  if image_size < 16 or num_good < 1 or num_defective < 0:
    raise ValueError("need image_size >= 16, num_good >= 1 and "
                     f"num_defective >= 0; got {image_size}, {num_good}, "
                     f"{num_defective}")
  root = os.path.abspath(os.path.expanduser(os.fspath(root)))
  args = dict(category=category, num_good=int(num_good),
              num_defective=int(num_defective), image_size=int(image_size),
              seed=int(seed), version=_GENERATOR_VERSION)
  stamp = os.path.join(root, _INSPECT_STAMP)
  if os.path.isdir(root) and os.listdir(root):
    if os.path.isfile(stamp):
      with open(stamp) as f:
        if json.load(f) == args:
          logging.info("%s already holds these synthetic images", root)
          return root
    raise FileExistsError(f"{root!r} is not empty; pick another folder")
  plan = _plan(num_train=num_good, num_test_good=0,
               num_test_anomalous=num_defective)
  for split, defect, index, rel in plan:
    sample = make_sample(category, seed=seed, image_size=image_size,
                         split=split, index=index, defect=defect)
    name = os.path.basename(rel)
    out = (os.path.join(root, "good", name) if defect == GOOD
           else os.path.join(root, "defect", f"{defect}_{name}"))
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "wb") as f:
      f.write(_png_bytes(sample.image))
  with open(stamp, "w") as f:  # Last: a folder cut short has none.
    json.dump(args, f)
  logging.info("Wrote %d good and %d defective synthetic images to %s",
               num_good, num_defective, root)
  return root


def main(argv: Optional[Sequence[str]] = None) -> None:
  """``python -m dicofun.data.synthetic --root=DIR [--category=texture]``.

  ``--layout=inspect`` writes one contaminated folder instead
  (``write_inspect_folder``: ``--num_train`` good images,
  ``--num_test_anomalous`` defective ones).
  """
  import argparse  # pylint: disable=g-import-not-at-top
  parser = argparse.ArgumentParser(prog="python -m dicofun.data.synthetic",
                                   description=__doc__.splitlines()[0])
  parser.add_argument("--root", required=True)
  parser.add_argument("--category", default="texture", choices=CATEGORIES)
  parser.add_argument("--num_train", type=int, default=60)
  parser.add_argument("--num_test_good", type=int, default=20)
  parser.add_argument("--num_test_anomalous", type=int, default=20)
  parser.add_argument("--image_size", type=int, default=128)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--layout", default="mvtec", choices=("mvtec", "inspect"))
  a = parser.parse_args(argv)
  if a.layout == "inspect":
    write_inspect_folder(a.root, category=a.category, num_good=a.num_train,
                         num_defective=a.num_test_anomalous,
                         image_size=a.image_size, seed=a.seed)
    return
  out = generate(a.root, category=a.category, num_train=a.num_train,
                 num_test_good=a.num_test_good,
                 num_test_anomalous=a.num_test_anomalous,
                 image_size=a.image_size, seed=a.seed)
  logging.info("Synthetic dataset written to %s", out)

