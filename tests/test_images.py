"""Images as cameras write them: exact pixel values for each kind of file.

The rule (``dicofun.data.images.to_unit``): uint8 as stored; other integers
divided by 2^d − 1 for the smallest d in 8, 10, 12, 14, 16 holding the
image's maximum; floats in [0, 1] kept, in [0, 255] divided by 255, else
stretched min..max; alpha composited on black; round(255 · v).
"""

import os
import struct
import zlib

import numpy as np
from PIL import Image
import pytest
import tifffile

from dicofun.data import errors
from dicofun.data import images


def _png16(path, arr):
  """A 16-bit colour PNG (filter 0), which PIL cannot write."""
  h, w, c = arr.shape
  ctype = {2: 4, 3: 2, 4: 6}[c]
  raw = b"".join(b"\x00" + arr[y].astype(">u2").tobytes() for y in range(h))

  def chunk(kind, body):
    return (struct.pack(">I", len(body)) + kind + body
            + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF))

  ihdr = struct.pack(">IIBBBBB", w, h, 16, ctype, 0, 0, 0)
  with open(path, "wb") as f:
    f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def _grey(img):
  assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[-1] == 3
  np.testing.assert_array_equal(img[..., 0], img[..., 1])
  np.testing.assert_array_equal(img[..., 0], img[..., 2])
  return img[..., 0]


def test_8bit_grey_and_rgb_are_used_as_stored(tmp_path):
  g = np.array([[0, 128], [255, 7]], np.uint8)
  Image.fromarray(g).save(tmp_path / "g.png")
  np.testing.assert_array_equal(_grey(images.load_image(tmp_path / "g.png")),
                                g)
  rgb = np.array([[[1, 2, 3], [250, 128, 0]]], np.uint8)
  Image.fromarray(rgb).save(tmp_path / "c.png")
  np.testing.assert_array_equal(images.load_image(tmp_path / "c.png"), rgb)


def test_12bit_grey_png_is_scaled_by_4095_not_65535(tmp_path):
  g = np.array([[0, 1000], [2048, 4095]], np.uint16)
  Image.fromarray(g).save(tmp_path / "g12.png")
  # round(v · 255 / 4095): 62.27 → 62, 127.53 → 128.
  np.testing.assert_array_equal(
      _grey(images.load_image(tmp_path / "g12.png")), [[0, 62], [128, 255]])


def test_10bit_16bit_and_8bit_in_16bit_containers(tmp_path):
  cases = {
      "g10.png": ([[0, 512], [1023, 100]], [[0, 128], [255, 25]]),
      # Full 16 bits: 32768·255/65535 = 127.502 → 128, 16384 → 63.75 → 64.
      "g16.png": ([[0, 65535], [32768, 16384]], [[0, 255], [128, 64]]),
      # Only 8 bits used: the values are kept.
      "g8.png": ([[0, 200], [17, 255]], [[0, 200], [17, 255]]),
  }
  for name, (values, want) in cases.items():
    Image.fromarray(np.array(values, np.uint16)).save(tmp_path / name)
    np.testing.assert_array_equal(_grey(images.load_image(tmp_path / name)),
                                  want, err_msg=name)


def test_16bit_rgb_png_keeps_its_12_bits(tmp_path):
  rgb = np.array([[[4095, 2048, 0], [1000, 1, 4000]]], np.uint16)
  _png16(tmp_path / "c12.png", rgb)
  # PIL alone keeps the high byte: 4095 → 15. The rule: v · 255 / 4095.
  np.testing.assert_array_equal(images.load_image(tmp_path / "c12.png"),
                                [[[255, 128, 0], [62, 0, 249]]])


def test_16bit_png_filters_match_opencv(tmp_path):
  cv2 = pytest.importorskip("cv2")
  rng = np.random.default_rng(0)
  rgb = rng.integers(0, 4096, (13, 17, 3)).astype(np.uint16)
  rgb[4:9] = rgb[4:5]  # Smooth rows make the encoder pick Up/Avg/Paeth.
  path = str(tmp_path / "cv.png")
  cv2.imwrite(path, rgb[..., ::-1])
  with open(path, "rb") as f:
    data = f.read()
  np.testing.assert_array_equal(images._png16_colour(data), rgb)  # pylint: disable=protected-access


def test_16bit_rgba_png_is_composited(tmp_path):
  rgba = np.array([[[4095, 0, 2000, 4095], [4095, 4095, 4095, 0]]],
                  np.uint16)
  _png16(tmp_path / "a.png", rgba)
  # max 4095 → 12 bits: 2000 · 255 / 4095 = 124.54 → 125; alpha 0 → black.
  np.testing.assert_array_equal(images.load_image(tmp_path / "a.png"),
                                [[[255, 0, 125], [0, 0, 0]]])


def test_truncated_16bit_png_is_a_corrupt_image(tmp_path):
  rgb = np.random.default_rng(1).integers(0, 65535, (40, 40, 3)).astype(
      np.uint16)
  _png16(tmp_path / "ok.png", rgb)
  data = (tmp_path / "ok.png").read_bytes()
  (tmp_path / "cut.png").write_bytes(data[:len(data) // 2])
  with pytest.raises(errors.CorruptImageError, match="truncated"):
    images.load_image(tmp_path / "cut.png")


def test_16bit_tiffs_grey_and_rgb(tmp_path):
  tifffile.imwrite(tmp_path / "g.tif",
                   np.array([[0, 1000], [2048, 4095]], np.uint16))
  np.testing.assert_array_equal(_grey(images.load_image(tmp_path / "g.tif")),
                                [[0, 62], [128, 255]])
  tifffile.imwrite(tmp_path / "c.tif",
                   np.array([[[4095, 2048, 0], [1000, 1, 4000]]], np.uint16))
  np.testing.assert_array_equal(images.load_image(tmp_path / "c.tif"),
                                [[[255, 128, 0], [62, 0, 249]]])


def test_float_tiffs(tmp_path):
  # In [0, 1]: used as they are (before: rounded to {0, 1}).
  tifffile.imwrite(tmp_path / "f.tif",
                   np.array([[0, 0.25], [0.5, 1.0]], np.float32))
  np.testing.assert_array_equal(_grey(images.load_image(tmp_path / "f.tif")),
                                [[0, 64], [128, 255]])
  # Colour float TIFF (PIL cannot read it at all).
  tifffile.imwrite(tmp_path / "fc.tif",
                   np.array([[[1.0, 0.5, 0.0]]], np.float32), photometric="rgb")
  np.testing.assert_array_equal(images.load_image(tmp_path / "fc.tif"),
                                [[[255, 128, 0]]])
  # In [0, 255]: divided by 255.
  tifffile.imwrite(tmp_path / "f255.tif",
                   np.array([[0, 10.4], [200, 255]], np.float32))
  np.testing.assert_array_equal(
      _grey(images.load_image(tmp_path / "f255.tif")), [[0, 10], [200, 255]])
  # Any other range: min..max → 0..255 ((v + 1) / 4).
  tifffile.imwrite(tmp_path / "fz.tif",
                   np.array([[-1, 0], [1, 3]], np.float32))
  np.testing.assert_array_equal(_grey(images.load_image(tmp_path / "fz.tif")),
                                [[0, 64], [128, 255]])


def test_rgba_and_grey_alpha_are_composited_on_black(tmp_path):
  rgba = np.array([[[200, 100, 50, 128], [10, 20, 30, 255],
                    [90, 90, 90, 0]]], np.uint8)
  Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
  # colour · alpha / 255: 200·128/255 = 100.4 → 100, 50.2 → 50, 25.1 → 25.
  np.testing.assert_array_equal(images.load_image(tmp_path / "a.png"),
                                [[[100, 50, 25], [10, 20, 30], [0, 0, 0]]])
  la = np.array([[[200, 64], [40, 255]]], np.uint8)
  Image.fromarray(la, "LA").save(tmp_path / "la.png")
  np.testing.assert_array_equal(_grey(images.load_image(tmp_path / "la.png")),
                                [[50, 40]])


def test_palette_with_a_transparent_index(tmp_path):
  p = Image.new("P", (2, 1))
  p.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
  p.putpixel((0, 0), 0)
  p.putpixel((1, 0), 1)
  p.info["transparency"] = 1
  p.save(tmp_path / "p.png", transparency=1)
  np.testing.assert_array_equal(images.load_image(tmp_path / "p.png"),
                                [[[255, 0, 0], [0, 0, 0]]])


def test_bit_depth_rule():
  assert [images.bit_depth(v) for v in (0, 255, 256, 1023, 1024, 4095, 4096,
                                        16383, 16384, 65535, 70000)] == [
                                            8, 8, 10, 10, 12, 12, 14, 14, 16,
                                            16, 17]


# ------------------------------------------------------ folder scan (#11)


def _png(path, value=0):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(np.full((4, 4, 3), value, np.uint8)).save(path)


def test_scan_follows_symlinked_folders_once_and_survives_loops(tmp_path):
  """A symlinked folder of images is scanned (issue 25 #11); loops and
  links back into the tree are not followed twice; dicofun's own output
  folders (with the .dicofun-output marker) are skipped."""
  root = tmp_path / "line"
  elsewhere = tmp_path / "camera2"
  for rel in ("real/a.png", "real/b.png"):
    _png(str(root / rel))
  for name in ("c.png", "d.png"):
    _png(str(elsewhere / name))
  os.symlink(elsewhere, root / "link")
  os.symlink(root, root / "loop")  # A loop to the top.
  os.symlink(root / "real", root / "real" / "again")  # A loop below.
  os.symlink(root / "real", root / "alias")  # A second way into real/.
  os.symlink(elsewhere, root / "zlink")  # A second way into camera2/.
  os.symlink(tmp_path / "nowhere", root / "dangling")
  _png(str(root / "old_report" / "images" / "a.png.png"))
  (root / "old_report" / ".dicofun-output").write_text('{"command": "x"}')
  found = [os.path.relpath(p, root)
           for p in images.list_images_recursive(str(root))]
  assert found == ["link/c.png", "link/d.png", "real/a.png", "real/b.png"]


# ------------------------------------------------------ large images (#10)


def _gradient(w, h):
  x = np.linspace(0, 255, w, dtype=np.float32)[None, :]
  y = np.linspace(0, 255, h, dtype=np.float32)[:, None]
  return ((x + y) / 2).astype(np.uint8)


@pytest.mark.parametrize("ext", ["png", "jpg"])
def test_a_large_image_is_decoded_reduced_to_what_the_pipeline_needs(
    tmp_path, ext):
  """20 MP decoded for a 64-pixel input: about 4 x 64 on the short side,
  not 5000 x 4000 (issue 25 #10); the pixels are the same picture."""
  path = str(tmp_path / f"big.{ext}")
  Image.fromarray(_gradient(5000, 4000)).convert("RGB").save(path)
  small = images.load_image(path, min_side=64)
  assert small.dtype == np.uint8 and small.shape[2] == 3
  assert 256 <= min(small.shape[:2]) < 512, small.shape
  assert small.shape[1] / small.shape[0] == pytest.approx(1.25, rel=0.02)
  want = np.asarray(Image.fromarray(_gradient(5000, 4000)).resize(
      small.shape[1::-1], Image.Resampling.BOX), np.float32)
  assert np.abs(small[..., 0].astype(np.float32) - want).mean() < 2.0
  # Small images, and any image without min_side, are decoded as stored.
  assert images.load_image(path).shape == (4000, 5000, 3)
  Image.fromarray(_gradient(1024, 900)).save(tmp_path / "mvtec.png")
  assert images.load_image(str(tmp_path / "mvtec.png"),
                           min_side=64).shape == (900, 1024, 3)


def test_an_image_above_the_pixel_limit_is_refused_by_name(tmp_path):
  path = str(tmp_path / "wide.png")
  Image.fromarray(_gradient(20, 20)).save(path)
  with pytest.raises(errors.ImageTooLargeError) as e:
    images.load_image(path, max_pixels=300)
  assert str(e.value) == (
      f"image {path!r} has 20x20 = 400 pixels, above the limit of 300 "
      "(config.dataset.max_image_pixels); shrink the file or raise the "
      "limit")
  assert images.load_image(path, max_pixels=400).shape == (20, 20, 3)
  Image.fromarray(_gradient(16, 16)).save(tmp_path / "ok.png")
  got = images.screen_images([path, str(tmp_path / "ok.png")], desc=None,
                             max_pixels=300)
  assert got.readable == [str(tmp_path / "ok.png")]
  assert got.errors == [(path, "20x20 = 400 pixels, above the limit of 300 "
                         "(config.dataset.max_image_pixels)")]
