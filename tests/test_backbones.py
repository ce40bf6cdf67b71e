"""Tests for the EfficientNet-Lite and DINOv2 backbones and the registry.

References: ImageNet classes of real photos (EfficientNet-Lite), onnxruntime
running the packaged DINOv2 ONNX graph, and an ONNX ``Resize`` node for the
torch-style bicubic position-embedding interpolation.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from dicofun.models import efficientnet_lite
from dicofun.models import registry
from dicofun.models import vit
from dicofun.models import weights

skimage_data = pytest.importorskip("skimage.data")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module", autouse=True)
def _cache(tmp_path_factory):
  with pytest.MonkeyPatch.context() as mp:
    mp.setenv("DICOFUN_CACHE", str(tmp_path_factory.mktemp("dicofun_cache")))
    yield


def _resize_crop(img: np.ndarray, size: int, crop: float = 0.875
                 ) -> np.ndarray:
  """Short side to size/crop with PIL bicubic, then a centre crop."""
  im = Image.fromarray(img)
  w, h = im.size
  s = size / crop / min(w, h)
  im = im.resize((round(w * s), round(h * s)), Image.BICUBIC)
  w, h = im.size
  left, top = (w - size) // 2, (h - size) // 2
  im = im.crop((left, top, left + size, top + size))
  return np.asarray(im, np.float32) / 255.0


@pytest.mark.parametrize("variant,blocks", [(0, 16), (1, 21), (2, 21)])
def test_lite_classifies_cat_and_espresso(variant, blocks):
  bb = registry.get_backbone(f"efficientnet_lite{variant}")
  assert len([k for k in bb.variables["params"] if k.startswith("blocks_")]
             ) == blocks
  size = bb.default_size
  x = np.stack([_resize_crop(skimage_data.chelsea(), size),
                _resize_crop(skimage_data.coffee(), size)])
  x = np.asarray(bb.normalise(x))
  logits, feats = jax.jit(bb.module.apply)(bb.variables, x)
  top = np.asarray(jnp.argmax(logits, -1))
  assert 281 <= top[0] <= 285, top  # tabby/tiger/Persian/Siamese/Egyptian cat
  assert top[1] == 967, top  # espresso
  s4 = -(-size // 4)
  assert feats["stride4"].shape[:3] == (2, s4, s4)
  assert feats["stride32"].shape[1] == -(-size // 32)


def test_lite_variants_match_checkpoint_shapes():
  for v in (0, 1, 2):
    sd = weights.load_backbone_weights(f"efficientnet_lite{v}").state_dict
    conv = efficientnet_lite.convert_torch_weights(sd)
    init = jax.eval_shape(efficientnet_lite.EfficientNetLite(variant=v).init,
                          jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))
    shapes = lambda t: jax.tree.map(lambda a: tuple(np.shape(a)), t)
    assert shapes(conv) == shapes(init), v
  # Lite3/4 geometry (random init only): stem and head unscaled, first and
  # last stacks one block each.
  assert efficientnet_lite.block_settings(4)[0][0] == 1
  assert efficientnet_lite.block_settings(4)[-1][0] == 1
  assert [s[0] for s in efficientnet_lite.block_settings(3)] == [
      1, 3, 3, 5, 5, 6, 1]
  assert efficientnet_lite.block_settings(3)[-1][5] == 384


def test_lite3_has_no_pretrained_weights():
  with pytest.raises(ValueError, match="no pretrained weights"):
    registry.get_backbone("efficientnet_lite3")
  # Shapes only (a real random init compiles the whole net: slow here).
  model = efficientnet_lite.EfficientNetLite(variant=3)
  x = jnp.zeros((1, 64, 64, 3))
  variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)
  _, feats = jax.eval_shape(model.apply, variables, x)
  assert {k: v.shape for k, v in feats.items()} == {
      "stride4": (1, 16, 16, 32), "stride8": (1, 8, 8, 48),
      "stride16": (1, 4, 4, 136), "stride32": (1, 2, 2, 384)}
  assert registry.BACKBONES["efficientnet_lite3"].mean == (0.5, 0.5, 0.5)


def _onnx_session(names):
  model = onnx.load(weights.packaged_weights_path("dinov2_vits14"))
  for n in names:
    model.graph.output.append(
        onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None))
  return ort.InferenceSession(model.SerializeToString(),
                              providers=["CPUExecutionProvider"])


def test_dinov2_matches_onnxruntime_on_chelsea():
  bb = registry.get_backbone("dinov2_vits14", layer=8)
  assert bb.patch == 14 and bb.layer == 8
  x = np.asarray(bb.normalise(_resize_crop(skimage_data.chelsea(), 224)))
  x = x[None].astype(np.float32)
  final_name = "/backbone/layernorm/Add_1_output_0"
  block8_name = "/backbone/encoder/layer.7/Add_1_output_0"
  ref_final, ref_b8 = _onnx_session([final_name, block8_name]).run(
      [final_name, block8_name], {"input_image": x.transpose(0, 3, 1, 2)})
  final, feats = jax.jit(lambda v, a: bb.module.apply(v, a, layers=(8,)))(
      bb.variables, x)
  assert final.shape == (1, 257, 384)
  assert np.abs(np.asarray(final) - ref_final).max() < 1e-3
  assert np.abs(np.asarray(feats["block8"]) - ref_b8).max() < 1e-3
  # Registry features: block 8 raw tokens (norm_intermediate=False);
  # layer 12 = final-normed tokens.
  raw = registry.get_backbone("dinov2_vits14", layer=8,
                              norm_intermediate=False)
  f8 = raw.apply_features(raw.variables, x)
  assert f8["tokens"].shape == (1, 16, 16, 384) and f8["cls"].shape == (1, 384)
  np.testing.assert_allclose(np.asarray(f8["tokens"]).reshape(256, 384),
                             ref_b8[0, 1:], atol=1e-3)
  bb12 = registry.get_backbone("dinov2_vits14", layer=12)
  f12 = bb12.apply_features(bb12.variables, x)
  np.testing.assert_allclose(np.asarray(f12["cls"])[0], ref_final[0, 0],
                             atol=1e-3)


def _onnx_resize(grid: np.ndarray, out_hw) -> np.ndarray:
  """ONNX Resize (cubic, a=-0.75, half_pixel) of an NCHW float32 array."""
  h = onnx.helper
  node = h.make_node("Resize", ["x", "", "", "sizes"], ["y"], mode="cubic",
                     cubic_coeff_a=-0.75,
                     coordinate_transformation_mode="half_pixel")
  graph = h.make_graph(
      [node], "resize",
      [h.make_tensor_value_info("x", onnx.TensorProto.FLOAT, grid.shape),
       h.make_tensor_value_info("sizes", onnx.TensorProto.INT64, [4])],
      [h.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)])
  model = h.make_model(graph, opset_imports=[h.make_opsetid("", 14)])
  sess = ort.InferenceSession(model.SerializeToString(),
                              providers=["CPUExecutionProvider"])
  sizes = np.array(grid.shape[:2] + tuple(out_hw), np.int64)
  return sess.run(["y"], {"x": grid, "sizes": sizes})[0]


@pytest.mark.parametrize("out_hw", [(16, 16), (32, 32), (40, 20), (37, 37)])
def test_bicubic_position_resize_matches_onnx(out_hw):
  grid = np.random.default_rng(0).normal(size=(37, 37, 5)).astype(np.float32)
  ours = np.asarray(vit.resize_bicubic(jnp.asarray(grid), out_hw))
  ref = _onnx_resize(grid.transpose(2, 0, 1)[None], out_hw)[0]
  np.testing.assert_allclose(ours, ref.transpose(1, 2, 0), atol=2e-5)
  m = vit.bicubic_matrix(37, out_hw[0])
  np.testing.assert_allclose(m.sum(1), 1.0, atol=1e-6)


def test_dinov2_other_sizes_and_random():
  bb = registry.get_backbone("dinov2_vits14", weights="random", layer=2)
  feats = jax.eval_shape(bb.apply_features, bb.variables,
                         jnp.zeros((2, 28, 42, 3)))
  assert feats["tokens"].shape == (2, 2, 3, 384)
  assert bb.weights_sha256 == "random-0" and bb.mean == registry.IMAGENET_MEAN
  with pytest.raises(ValueError, match="layer"):
    registry.get_backbone("dinov2_vits14", weights="random", layer=13)
  with pytest.raises(ValueError, match="multiple of the patch"):
    jax.eval_shape(bb.apply_features, bb.variables,
                   jnp.zeros((1, 30, 28, 3)))
  with pytest.raises(KeyError):
    registry.get_backbone("resnet50")


def test_original_dinov2_names_convert():
  rng = np.random.default_rng(0)
  d = 8
  orig = {"cls_token": rng.normal(size=(1, 1, d)),
          "pos_embed": rng.normal(size=(1, 5, d)),
          "patch_embed.proj.weight": rng.normal(size=(d, 3, 2, 2)),
          "patch_embed.proj.bias": rng.normal(size=(d,)),
          "norm.weight": np.ones(d), "norm.bias": np.zeros(d),
          "blocks.0.norm1.weight": np.ones(d), "blocks.0.norm1.bias": np.zeros(d),
          "blocks.0.attn.qkv.weight": rng.normal(size=(3 * d, d)),
          "blocks.0.attn.qkv.bias": rng.normal(size=(3 * d,)),
          "blocks.0.attn.proj.weight": rng.normal(size=(d, d)),
          "blocks.0.attn.proj.bias": np.zeros(d),
          "blocks.0.ls1.gamma": np.ones(d), "blocks.0.ls2.gamma": np.ones(d),
          "blocks.0.norm2.weight": np.ones(d), "blocks.0.norm2.bias": np.zeros(d),
          "blocks.0.mlp.fc1.weight": rng.normal(size=(4 * d, d)),
          "blocks.0.mlp.fc1.bias": np.zeros(4 * d),
          "blocks.0.mlp.fc2.weight": rng.normal(size=(d, 4 * d)),
          "blocks.0.mlp.fc2.bias": np.zeros(d)}
  var = vit.convert_hf_weights(orig)
  p = var["params"]["block0"]
  np.testing.assert_allclose(p["attn"]["key"]["kernel"],
                             orig["blocks.0.attn.qkv.weight"][d:2 * d].T,
                             rtol=1e-6)
  model = vit.VisionTransformer(dim=d, depth=1, heads=2, patch=2, pos_grid=2)
  init = jax.eval_shape(model.init, jax.random.PRNGKey(0),
                        jnp.zeros((1, 4, 4, 3)))
  shapes = lambda t: jax.tree.map(lambda a: tuple(np.shape(a)), t)
  assert shapes(init) == shapes(var)
  out, _ = jax.jit(model.apply)(var, jnp.ones((1, 4, 4, 3)))
  assert out.shape == (1, 5, d) and np.isfinite(np.asarray(out)).all()


def _layer_norm(x, scale, bias, eps=1e-6):
  x = np.asarray(x, np.float64)
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu) ** 2).mean(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + eps) * scale + bias


@pytest.mark.parametrize("weights_name", ["random", "pretrained"])
def test_norm_intermediate_is_final_layernorm_of_block_tokens(weights_name):
  """The default LayerNorm path == the final norm applied to raw block tokens."""
  raw = registry.get_backbone("dinov2_vits14", weights=weights_name, layer=8,
                              norm_intermediate=False)
  normed = registry.get_backbone("dinov2_vits14", weights=weights_name,
                                 layer=8)
  assert normed.norm_intermediate and not raw.norm_intermediate
  x = np.random.default_rng(0).normal(size=(2, 56, 42, 3)).astype(np.float32)
  fr = jax.jit(raw.apply_features)(raw.variables, x)
  fn = jax.jit(normed.apply_features)(normed.variables, x)
  ln = raw.variables["params"]["norm"]
  scale, bias = np.asarray(ln["scale"]), np.asarray(ln["bias"])
  np.testing.assert_allclose(np.asarray(fn["tokens"]),
                             _layer_norm(fr["tokens"], scale, bias),
                             atol=2e-4, rtol=1e-4)
  np.testing.assert_allclose(np.asarray(fn["cls"]),
                             _layer_norm(fr["cls"], scale, bias),
                             atol=2e-4, rtol=1e-4)
  assert not np.allclose(np.asarray(fn["tokens"]), np.asarray(fr["tokens"]),
                         atol=1e-2)
  # The last layer is final-normed either way (one setting, one cache key).
  a = registry.get_backbone("dinov2_vits14", weights=weights_name, layer=12,
                            norm_intermediate=False)
  b = registry.get_backbone("dinov2_vits14", weights=weights_name, layer=12)
  assert not a.norm_intermediate and not b.norm_intermediate
  np.testing.assert_allclose(
      np.asarray(jax.jit(a.apply_features)(a.variables, x)["tokens"]),
      np.asarray(jax.jit(b.apply_features)(b.variables, x)["tokens"]),
      atol=1e-5)


@pytest.mark.parametrize("size,kernel,stride", [
    (9, 3, 1), (9, 3, 2), (10, 5, 2), (8, 5, 1), (7, 5, 2), (16, 3, 2)])
def test_shifted_depthwise_equals_grouped_conv(size, kernel, stride):
  """The CPU depthwise path is the same "SAME" convolution as XLA's."""
  rng = np.random.default_rng(size * 10 + kernel + stride)
  x = jnp.asarray(rng.normal(size=(2, size, size + 1, 6)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(kernel, kernel, 1, 6)), jnp.float32)
  ref = jax.lax.conv_general_dilated(
      x, w, (stride, stride), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"),
      feature_group_count=6)
  for impl in ("shifted", "xla"):
    got = efficientnet_lite.depthwise_conv(x, w, stride, impl)
    assert got.shape == ref.shape
    np.testing.assert_allclose(np.asarray(got), np.asarray(ref), atol=1e-5)
  with pytest.raises(ValueError, match="auto|xla|shifted"):
    efficientnet_lite.depthwise_conv(x, w, stride, "fast")


def test_lite_features_same_with_either_depthwise_path():
  """Extraction outputs unchanged by the CPU depthwise path (issue #16)."""
  x = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (2, 96, 80, 3)),
                  jnp.float32)
  shifted = efficientnet_lite.EfficientNetLite(0, depthwise_impl="shifted")
  variables = shifted.init(jax.random.PRNGKey(0), x)
  # Parameter tree is nn.Conv's: converted torch weights load unchanged.
  assert variables["params"]["blocks_0"]["depthwise_conv"]["kernel"].shape == (
      3, 3, 1, 32)
  logits_s, feats_s = shifted.apply(variables, x)
  logits_x, feats_x = efficientnet_lite.EfficientNetLite(
      0, depthwise_impl="xla").apply(variables, x)
  np.testing.assert_allclose(logits_s, logits_x, rtol=1e-4, atol=1e-4)
  for name in feats_x:
    scale = float(jnp.abs(feats_x[name]).max())
    np.testing.assert_allclose(feats_s[name], feats_x[name],
                               atol=1e-4 * max(scale, 1.0))


def test_lite_pointwise_dot_equals_the_1x1_convolution():
  """The 1 × 1 convolutions as one matrix product: same outputs (#16)."""
  x = jnp.asarray(np.random.default_rng(1).uniform(-1, 1, (2, 64, 48, 3)),
                  jnp.float32)
  dot = efficientnet_lite.EfficientNetLite(0)
  variables = dot.init(jax.random.PRNGKey(1), x)
  # nn.Conv's parameter layout: converted weights load unchanged.
  assert variables["params"]["blocks_1"]["expand_conv"]["kernel"].shape == (
      1, 1, 16, 96)
  assert variables["params"]["conv_head"]["kernel"].shape == (1, 1, 320, 1280)
  logits_d, feats_d = dot.apply(variables, x)
  logits_c, feats_c = efficientnet_lite.EfficientNetLite(
      0, pointwise_impl="conv").apply(variables, x)
  np.testing.assert_allclose(logits_d, logits_c, rtol=1e-5, atol=1e-5)
  for name in feats_c:
    scale = float(jnp.abs(feats_c[name]).max())
    np.testing.assert_allclose(feats_d[name], feats_c[name],
                               atol=1e-5 * max(scale, 1.0))
  with pytest.raises(ValueError, match="pointwise"):
    efficientnet_lite.EfficientNetLite(0, pointwise_impl="fast").init(
        jax.random.PRNGKey(1), x)


def test_vit_gelu_is_exact_erf_gelu():
  """The erf form equals jax's erfc form and hand values (not tanh GELU)."""
  x = jnp.linspace(-6.0, 6.0, 1201, dtype=jnp.float32)
  # Absolute: below x ≈ -4, 1 + erf rounds to a multiple of 2^-24 (as in
  # torch); there GELU is ~0 and the forms differ by < 1e-6.
  np.testing.assert_allclose(vit.gelu(x), jax.nn.gelu(x, approximate=False),
                             atol=1e-6, rtol=1e-6)
  # Φ(1) = 0.841344746..., so gelu(1) = Φ(1), gelu(-1) = -(1 - Φ(1)).
  np.testing.assert_allclose(vit.gelu(jnp.array([1.0, -1.0, 0.0, 2.0])),
                             [0.8413447, -0.1586553, 0.0, 1.9544997],
                             atol=1e-6)
  # The tanh approximation differs by ~1e-4 at x = 1: not what we compute.
  assert abs(float(jax.nn.gelu(1.0, approximate=True)) - 0.8413447) > 1e-4


def test_vit_attention_equals_softmax_einsum():
  rng = np.random.default_rng(0)
  q, k, v = (jnp.asarray(rng.normal(size=(2, 7, 3, 4)), jnp.float32)
             for _ in range(3))
  logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / 2.0  # sqrt(hd) = 2.
  ref = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(logits, axis=-1), v)
  got = vit.attention(q, k, v)
  assert got.shape == (2, 7, 3, 4)
  np.testing.assert_allclose(got, ref, atol=1e-6)
  # Equal keys: uniform weights, every query gets the mean of the values.
  same_k = jnp.broadcast_to(k[:, :1], k.shape)
  np.testing.assert_allclose(
      vit.attention(q, same_k, v),
      jnp.broadcast_to(v.mean(axis=1, keepdims=True), v.shape), atol=1e-6)
  # Two tokens, one head, hd = 1: logits q·k = [[1, 0], [0, 0]] → the first
  # query weights the values by softmax([1, 0]) = [e/(e+1), 1/(e+1)].
  one = lambda a: jnp.asarray(a, jnp.float32).reshape(1, 2, 1, 1)
  out = vit.attention(one([1, 0]), one([1, 0]), one([2, 4]))
  e = np.e
  np.testing.assert_allclose(np.asarray(out).ravel(),
                             [(2 * e + 4) / (e + 1), 3.0], rtol=1e-6)
