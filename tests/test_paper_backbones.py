"""The papers' backbones from user weight files in the official torch naming.

DINO v1 ViT-S/8 and ViT-B/8, DINOv2 ViT-B/14 and ViT-L/14, Wide ResNet-50-2:
random weights written in the official state-dict layout (``.npz`` and the
torch zip format), loaded through ``registry.get_backbone(name,
weights=path)`` and compared with references computed outside JAX from the
same tensors: a float64 numpy forward of the facebookresearch
``vision_transformer.py`` written here (its position-embedding interpolation
an onnxruntime ``Resize``, as torch exports ``F.interpolate``), and an ONNX
graph of torchvision's ``wide_resnet50_2`` built with ``onnx.helper`` (unfused
``BatchNormalization``) run by onnxruntime. The state-dict keys are written
out here by hand, not taken from the code under test. Reduced depths keep the
fast tests fast; the full geometries run in the ``slow`` tests. Then the
errors: a wrong key, a file of another architecture, ``pretrained`` without a
file, and the ``weights=`` config argument.
"""

import collections
import importlib.util
import os

import jax
import numpy as np
import pytest
from scipy import special

from dicofun import configlib
from dicofun import features
from dicofun import user_errors
from dicofun.models import names
from dicofun.models import registry
from dicofun.models import vit
from dicofun.models import weights

import test_weights as torch_writer

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
helper = onnx.helper

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# name -> (dim, heads, patch, trained grid side, layer scale, DINO v1).
_VITS = {
    "dino_vits8": (384, 6, 8, 28, False, True),
    "dino_vitb8": (768, 12, 8, 28, False, True),
    "dinov2_vitb14": (768, 12, 14, 37, True, False),
    "dinov2_vitl14": (1024, 16, 14, 37, True, False),
}


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
  monkeypatch.setenv("DICOFUN_CACHE", str(tmp_path / "cache"))


# --------------------------------------------------------------------------
# Official layouts with random weights.

def vit_state(name, depth, seed=0):
  """A facebookresearch ``vision_transformer`` state dict (DINO / DINOv2)."""
  dim, _, patch, grid, layer_scale, _ = _VITS[name]
  rng = np.random.default_rng(seed)
  f32 = lambda *s, scale=0.02, mean=0.0: (
      mean + scale * rng.standard_normal(s)).astype(np.float32)
  sd = collections.OrderedDict()
  sd["cls_token"] = f32(1, 1, dim, scale=0.5)
  sd["pos_embed"] = f32(1, 1 + grid * grid, dim, scale=0.5)
  sd["patch_embed.proj.weight"] = f32(dim, 3, patch, patch, scale=0.05)
  sd["patch_embed.proj.bias"] = f32(dim)
  for i in range(depth):
    b = f"blocks.{i}."
    sd[b + "norm1.weight"] = f32(dim, scale=0.1, mean=1.0)
    sd[b + "norm1.bias"] = f32(dim, scale=0.1)
    sd[b + "attn.qkv.weight"] = f32(3 * dim, dim, scale=0.06)
    sd[b + "attn.qkv.bias"] = f32(3 * dim)
    sd[b + "attn.proj.weight"] = f32(dim, dim, scale=0.03)
    sd[b + "attn.proj.bias"] = f32(dim)
    if layer_scale:
      sd[b + "ls1.gamma"] = f32(dim, scale=0.3, mean=0.5)
    sd[b + "norm2.weight"] = f32(dim, scale=0.1, mean=1.0)
    sd[b + "norm2.bias"] = f32(dim, scale=0.1)
    sd[b + "mlp.fc1.weight"] = f32(4 * dim, dim, scale=0.03)
    sd[b + "mlp.fc1.bias"] = f32(4 * dim)
    sd[b + "mlp.fc2.weight"] = f32(dim, 4 * dim, scale=0.02)
    sd[b + "mlp.fc2.bias"] = f32(dim)
    if layer_scale:
      sd[b + "ls2.gamma"] = f32(dim, scale=0.3, mean=0.5)
  sd["norm.weight"] = f32(dim, scale=0.1, mean=1.0)
  sd["norm.bias"] = f32(dim, scale=0.1)
  return sd


def wrn_state(blocks, stem, seed=0):
  """A torchvision ``wide_resnet50_2`` state dict (``blocks`` per stage; the
  real one: (3, 4, 6, 3), stem 64), with ``fc`` and BatchNorm step counters
  as torchvision saves them."""
  rng = np.random.default_rng(seed)
  sd = collections.OrderedDict()

  def conv(key, cout, cin, k):
    std = np.sqrt(2.0 / (cin * k * k))
    sd[key + ".weight"] = (std * rng.standard_normal((cout, cin, k, k))
                           ).astype(np.float32)

  def bn(key, c):
    # A small last gamma keeps the residual stream's scale from growing
    # block by block (torchvision's zero_init_residual, softened).
    lo, hi = (0.1, 0.4) if key.endswith("bn3") else (0.5, 1.5)
    sd[key + ".weight"] = rng.uniform(lo, hi, c).astype(np.float32)
    sd[key + ".bias"] = (0.1 * rng.standard_normal(c)).astype(np.float32)
    sd[key + ".running_mean"] = (0.1 * rng.standard_normal(c)
                                 ).astype(np.float32)
    sd[key + ".running_var"] = rng.uniform(0.5, 2.0, c).astype(np.float32)
    sd[key + ".num_batches_tracked"] = np.array(7, np.int64)

  conv("conv1", stem, 3, 7)
  bn("bn1", stem)
  cin = stem
  for s, n in enumerate(blocks):
    planes = stem * 2 ** s
    width, cout = planes * 2, planes * 4  # width_per_group=128: 2x.
    for j in range(n):
      p = f"layer{s + 1}.{j}."
      conv(p + "conv1", width, cin, 1)
      bn(p + "bn1", width)
      conv(p + "conv2", width, width, 3)
      bn(p + "bn2", width)
      conv(p + "conv3", cout, width, 1)
      bn(p + "bn3", cout)
      if j == 0:
        conv(p + "downsample.0", cout, cin, 1)
        bn(p + "downsample.1", cout)
      cin = cout
  sd["fc.weight"] = np.zeros((1000, cin), np.float32)
  sd["fc.bias"] = np.zeros(1000, np.float32)
  return sd


def save_npz(path, sd):
  np.savez(path, **sd)
  return str(path)


def save_torch_zip(path, sd):
  """``sd`` as ``torch.save`` writes it (zip format, one storage per
  tensor), with the writer of tests/test_weights.py."""
  storages, obj = [], collections.OrderedDict()
  with torch_writer._fake_torch():
    for i, (k, v) in enumerate(sd.items()):
      v = np.ascontiguousarray(v)
      kind = {np.float32: "FloatStorage",
              np.int64: "LongStorage"}[v.dtype.type]
      st = torch_writer._Storage(str(i), kind, v.reshape(-1))
      storages.append(st)
      stride = tuple(int(np.prod(v.shape[d + 1:])) for d in range(v.ndim))
      obj[k] = torch_writer._Tensor(st, 0, v.shape, stride, param=True)
    torch_writer._write_zip(str(path), obj, storages)
  return str(path)


# --------------------------------------------------------------------------
# References outside JAX.

def _run_onnx(nodes, inits, inputs, outputs):
  graph = helper.make_graph(
      nodes, "ref", [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT,
                                                   v.shape)
                     for n, v in inputs.items()],
      [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None)
       for n in outputs],
      initializer=[onnx.numpy_helper.from_array(v, n)
                   for n, v in inits.items()])
  model = helper.make_model(graph,
                            opset_imports=[helper.make_opsetid("", 17)])
  sess = ort.InferenceSession(model.SerializeToString(),
                              providers=["CPUExecutionProvider"])
  return sess.run(list(outputs), dict(inputs))


def torch_interpolate_pos(pos, gh, gw, *, dino_v1):
  """``interpolate_pos_encoding`` of DINO (``scale_factor=(g + 0.1) / M``,
  none on the trained square grid) or of the ``size=`` form (DINOv2 here),
  as an ONNX ``Resize``: torch's bicubic (a = -0.75, half-pixel)."""
  m = int(round(np.sqrt(pos.shape[1] - 1)))
  if (gh, gw) == (m, m):
    return pos
  grid = pos[:, 1:].reshape(1, m, m, -1).transpose(0, 3, 1, 2)
  attrs = dict(mode="cubic", cubic_coeff_a=-0.75,
               coordinate_transformation_mode="half_pixel")
  x = grid.astype(np.float32)
  if dino_v1:
    scales = np.array([1, 1, (gh + 0.1) / m, (gw + 0.1) / m], np.float32)
    node = helper.make_node("Resize", ["x", "", "scales"], ["y"], **attrs)
    (y,) = _run_onnx([node], {"scales": scales}, {"x": x}, ["y"])
  else:
    sizes = np.array([1, x.shape[1], gh, gw], np.int64)
    node = helper.make_node("Resize", ["x", "", "", "sizes"], ["y"], **attrs)
    (y,) = _run_onnx([node], {"sizes": sizes}, {"x": x}, ["y"])
  assert y.shape[2:] == (gh, gw)
  patch = y.transpose(0, 2, 3, 1).reshape(1, gh * gw, -1)
  return np.concatenate([pos[:, :1], patch], axis=1)


def _ln(x, sd, key, eps=1e-6):
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu) ** 2).mean(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + eps) * sd[key + ".weight"] + sd[key + ".bias"]


def numpy_vit(sd, images_nhwc, *, name):
  """facebookresearch ``VisionTransformer.forward`` in float64 numpy.

  Returns the raw output of every block (the residual stream) and the final
  LayerNorm's ``norm`` function: ``get_intermediate_layers(x, n)`` is
  ``[norm(o) for o in outs[-n:]]``.
  """
  sd = {k: np.asarray(v, np.float64) for k, v in sd.items()}
  _, heads, patch, _, _, dino_v1 = _VITS[name]
  x = np.asarray(images_nhwc, np.float64).transpose(0, 3, 1, 2)  # NCHW.
  b, c, h, w = x.shape
  gh, gw = h // patch, w // patch
  cols = (x.reshape(b, c, gh, patch, gw, patch).transpose(0, 2, 4, 1, 3, 5)
          .reshape(b, gh * gw, c * patch * patch))
  wp = sd["patch_embed.proj.weight"]
  tok = cols @ wp.reshape(wp.shape[0], -1).T + sd["patch_embed.proj.bias"]
  cls = np.broadcast_to(sd["cls_token"], (b, 1, tok.shape[-1]))
  t = np.concatenate([cls, tok], axis=1)
  t = t + torch_interpolate_pos(sd["pos_embed"], gh, gw, dino_v1=dino_v1)
  n, d = t.shape[1], t.shape[2]
  hd = d // heads
  outs = []
  for i in range(1 + max(int(k.split(".")[1]) for k in sd
                         if k.startswith("blocks."))):
    p = f"blocks.{i}."
    y = _ln(t, sd, p + "norm1")
    qkv = y @ sd[p + "attn.qkv.weight"].T + sd[p + "attn.qkv.bias"]
    q, k, v = qkv.reshape(b, n, 3, heads, hd).transpose(2, 0, 3, 1, 4)
    a = q @ k.transpose(0, 1, 3, 2) * hd ** -0.5
    a = np.exp(a - a.max(-1, keepdims=True))
    a = a / a.sum(-1, keepdims=True)
    y = (a @ v).transpose(0, 2, 1, 3).reshape(b, n, d)
    y = y @ sd[p + "attn.proj.weight"].T + sd[p + "attn.proj.bias"]
    t = t + sd.get(p + "ls1.gamma", 1.0) * y
    y = _ln(t, sd, p + "norm2")
    y = y @ sd[p + "mlp.fc1.weight"].T + sd[p + "mlp.fc1.bias"]
    y = 0.5 * y * (1 + special.erf(y / np.sqrt(2)))  # nn.GELU().
    y = y @ sd[p + "mlp.fc2.weight"].T + sd[p + "mlp.fc2.bias"]
    t = t + sd.get(p + "ls2.gamma", 1.0) * y
    outs.append(t)
  return outs, lambda o: _ln(o, sd, "norm")


def onnx_wrn(sd, images_nhwc, blocks):
  """torchvision's ``wide_resnet50_2`` as an ONNX graph from ``sd``:
  ``layer1``..``layer4`` outputs (NHWC) by onnxruntime."""
  nodes, inits = [], {}
  for k, v in sd.items():
    if v.dtype == np.float32:
      inits[k] = v

  def conv_bn(x, conv, bn, stride, out, relu=True):
    k = sd[conv + ".weight"].shape[-1]
    nodes.append(helper.make_node(
        "Conv", [x, conv + ".weight"], [out + "_c"], kernel_shape=[k, k],
        strides=[stride, stride], pads=[k // 2] * 4))
    nodes.append(helper.make_node(
        "BatchNormalization", [out + "_c"] + [f"{bn}.{s}" for s in (
            "weight", "bias", "running_mean", "running_var")],
        [out + ("_b" if relu else "")], epsilon=1e-5))
    if relu:
      nodes.append(helper.make_node("Relu", [out + "_b"], [out]))
    return out

  x = conv_bn("x", "conv1", "bn1", 2, "stem")
  nodes.append(helper.make_node("MaxPool", [x], ["pool"], kernel_shape=[3, 3],
                                strides=[2, 2], pads=[1, 1, 1, 1]))
  x = "pool"
  outputs = []
  for s, n in enumerate(blocks):
    for j in range(n):
      p = f"layer{s + 1}.{j}."
      stride = 2 if (j == 0 and s > 0) else 1
      y = conv_bn(x, p + "conv1", p + "bn1", 1, p + "a")
      y = conv_bn(y, p + "conv2", p + "bn2", stride, p + "b")
      y = conv_bn(y, p + "conv3", p + "bn3", 1, p + "c", relu=False)
      short = x
      if j == 0:
        short = conv_bn(x, p + "downsample.0", p + "downsample.1", stride,
                        p + "d", relu=False)
      nodes.append(helper.make_node("Add", [y, short], [p + "sum"]))
      nodes.append(helper.make_node("Relu", [p + "sum"], [p + "out"]))
      x = p + "out"
    outputs.append(x)
  x_nchw = np.ascontiguousarray(np.asarray(images_nhwc, np.float32)
                                .transpose(0, 3, 1, 2))
  res = _run_onnx(nodes, inits, {"x": x_nchw}, outputs)
  return [r.transpose(0, 2, 3, 1) for r in res]


def _images(shape, seed=1):
  return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


# --------------------------------------------------------------------------
# ViTs.

def _check_vit(name, path, sd, images, *, depth, overrides):
  """Every ``layer`` (normed and raw) against the numpy reference."""
  outs, norm = numpy_vit(sd, images, name=name)
  dim, _, patch, _, _, _ = _VITS[name]
  gh, gw = images.shape[1] // patch, images.shape[2] // patch
  for layer in range(1, depth + 1):
    for normed in (True, False):
      bb = registry.get_backbone(name, weights=path, layer=layer,
                                 norm_intermediate=normed,
                                 module_overrides=overrides)
      f = jax.jit(bb.apply_features)(bb.variables, images)
      ref = outs[layer - 1]
      # get_intermediate_layers norms; the last layer is normed either way.
      if normed or layer == depth:
        ref = norm(ref)
      assert f["tokens"].shape == (len(images), gh, gw, dim)
      np.testing.assert_allclose(np.asarray(f["cls"]), ref[:, 0],
                                 atol=2e-4, rtol=2e-4,
                                 err_msg=f"{name} layer {layer} cls")
      np.testing.assert_allclose(
          np.asarray(f["tokens"]), ref[:, 1:].reshape(-1, gh, gw, dim),
          atol=2e-4, rtol=2e-4, err_msg=f"{name} layer {layer} tokens")
  return bb


@pytest.mark.parametrize("fmt", ["npz", "pth"])
def test_dino_vitb8_paper_features_match_numpy_reference(tmp_path, fmt):
  """FUN-AD's paper features: DINO ViT-B/8 ``get_intermediate_layers(n=1)``
  at 224, ``[CLS ‖ patch]`` 1536-d on 28×28 (no position resize there)."""
  sd = vit_state("dino_vitb8", depth=2)
  path = (save_npz(tmp_path / "dino_vitb8.npz", sd) if fmt == "npz" else
          save_torch_zip(tmp_path / "dino_vitbase8_pretrain.pth", sd))
  images = _images((1, 224, 224, 3))
  bb = registry.get_backbone("dino_vitb8", weights=path, layer=2,
                             module_overrides={"depth": 2})
  assert bb.patch == 8 and bb.mean == registry.IMAGENET_MEAN
  tokens = jax.jit(features.layout_fn(bb, "tokens"))(bb.variables, images)
  assert tokens.shape == (1, 28, 28, 1536)
  outs, norm = numpy_vit(sd, images, name="dino_vitb8")
  last = norm(outs[-1])  # get_intermediate_layers(x, n=1)[0].
  ref = np.concatenate([np.broadcast_to(last[:, :1], last[:, 1:].shape),
                        last[:, 1:]], -1).reshape(1, 28, 28, 1536)
  np.testing.assert_allclose(np.asarray(tokens), ref, atol=2e-4, rtol=2e-4)


def test_dino_v1_position_interpolation_off_grid(tmp_path):
  """Other input sizes: DINO's ``scale_factor=(g + 0.1) / 28`` bicubic
  resize, every layer, LayerNorm on and off."""
  sd = vit_state("dino_vitb8", depth=2, seed=3)
  path = save_npz(tmp_path / "w.npz", sd)
  _check_vit("dino_vitb8", path, sd, _images((2, 64, 96, 3)), depth=2,
             overrides={"depth": 2})


@pytest.mark.parametrize("name", ["dinov2_vitb14", "dinov2_vitl14"])
def test_dinov2_b_l_match_numpy_reference(tmp_path, name):
  """Layer scale on, the ``size=`` position resize (DINOv2 here)."""
  sd = vit_state(name, depth=2, seed=4)
  path = save_npz(tmp_path / f"{name}.npz", sd)
  _check_vit(name, path, sd, _images((2, 56, 70, 3)), depth=2,
             overrides={"depth": 2})


def test_dinov2_hf_names_and_training_wrappers_read_the_same(tmp_path):
  """HF ``Dinov2Model`` names, a ``backbone.`` prefix and the keys the
  backbone does not use (``mask_token``, a ``head``) give the same tensors."""
  sd = vit_state("dinov2_vitb14", depth=1, seed=5)
  wrapped = {f"backbone.{k}": v for k, v in sd.items()}
  wrapped["backbone.mask_token"] = np.zeros((1, 768), np.float32)
  wrapped["head.weight"] = np.zeros((10, 768), np.float32)
  hf = vit.original_to_hf(sd)
  x = _images((1, 28, 28, 3))
  got = []
  for i, state in enumerate((sd, wrapped, hf)):
    bb = registry.get_backbone(
        "dinov2_vitb14", weights=save_npz(tmp_path / f"{i}.npz", state),
        layer=1, module_overrides={"depth": 1})
    got.append(np.asarray(jax.jit(bb.apply_features)(bb.variables,
                                                     x)["tokens"]))
  np.testing.assert_array_equal(got[0], got[1])
  np.testing.assert_allclose(got[0], got[2], atol=1e-6)


def test_dino_vits8_full_geometry_from_torch_zip(tmp_path):
  """The real ViT-S/8 shapes, all 12 blocks, from a torch zip file; the
  same file given as ViT-B/8 is refused naming the shape and what it is."""
  sd = vit_state("dino_vits8", depth=12, seed=6)
  path = save_torch_zip(tmp_path / "dino_deitsmall8_pretrain.pth", sd)
  x = _images((1, 32, 40, 3))
  outs, norm = numpy_vit(sd, x, name="dino_vits8")
  bb = registry.get_backbone("dino_vits8", weights=path, layer=12)
  f = jax.jit(bb.apply_features)(bb.variables, x)
  np.testing.assert_allclose(np.asarray(f["tokens"]),
                             norm(outs[-1])[:, 1:].reshape(1, 4, 5, 384),
                             atol=3e-4, rtol=3e-4)
  with pytest.raises(weights.WeightsFileError) as e:
    registry.get_backbone("dino_vitb8", weights=path)
  msg = str(e.value)
  assert "\n" not in msg and isinstance(e.value, user_errors.UserError)
  assert (f"weights file {path} is not a dino_vitb8 checkpoint: cls_token "
          "has shape (1, 1, 384), expected (1, 1, 768); its tensors are "
          "those of dino_vits8 (pass backbone=dino_vits8)") == msg


# --------------------------------------------------------------------------
# Wide ResNet-50-2.

_TINY_WRN = {"blocks": (1, 2, 1, 1), "stem": 8}


@pytest.mark.parametrize("fmt", ["npz", "pth"])
def test_wrn_matches_onnxruntime(tmp_path, fmt):
  """torchvision's stages as ``stride4..32``; the PatchCore layout uses
  ``layer2`` and ``layer3`` unchanged."""
  sd = wrn_state(_TINY_WRN["blocks"], _TINY_WRN["stem"])
  path = (save_npz(tmp_path / "wrn.npz", sd) if fmt == "npz" else
          save_torch_zip(tmp_path / "wrn.pth", sd))
  bb = registry.get_backbone("wide_resnet50_2", weights=path,
                             module_overrides=_TINY_WRN)
  assert bb.patch == 0 and bb.layer is None
  x = _images((2, 64, 48, 3))
  got = jax.jit(bb.apply_features)(bb.variables, x)
  refs = onnx_wrn(sd, x, _TINY_WRN["blocks"])
  for name, ref in zip(("stride4", "stride8", "stride16", "stride32"), refs):
    assert got[name].shape == ref.shape, name
    np.testing.assert_allclose(np.asarray(got[name]), ref, atol=1e-4,
                               rtol=1e-4, err_msg=name)
  pc = jax.jit(features.layout_fn(bb, "patchcore"))(bb.variables, x)
  assert pc.shape == (2, 8, 6, 64 + 128)  # layer2 (stride 8) + layer3.


@pytest.mark.slow
def test_wrn50_2_full_geometry_matches_onnxruntime(tmp_path):
  """The real WRN-50-2 shapes (512 + 1024 channels for PatchCore)."""
  sd = wrn_state((3, 4, 6, 3), 64, seed=2)
  path = save_npz(tmp_path / "wide_resnet50_2.npz", sd)
  bb = registry.get_backbone("wide_resnet50_2", weights=path)
  x = _images((1, 64, 64, 3))
  got = jax.jit(bb.apply_features)(bb.variables, x)
  refs = onnx_wrn(sd, x, (3, 4, 6, 3))
  for name, ref in zip(("stride4", "stride8", "stride16", "stride32"), refs):
    # float32 sums of up to 9·1024 terms: rounding scales with the map.
    np.testing.assert_allclose(np.asarray(got[name]), ref,
                               atol=2e-5 * np.abs(ref).max(), rtol=1e-4,
                               err_msg=name)
  assert got["stride8"].shape[-1] == 512 and got["stride16"].shape[-1] == 1024
  pc = jax.jit(features.layout_fn(bb, "patchcore"))(bb.variables, x)
  assert pc.shape == (1, 8, 8, 1536)


@pytest.mark.slow
def test_dino_vitb8_full_geometry_at_224(tmp_path):
  """The real ViT-B/8: 12 blocks, [CLS ‖ patch] 1536-d on 28×28."""
  sd = vit_state("dino_vitb8", depth=12, seed=7)
  path = save_npz(tmp_path / "dino_vitb8.npz", sd)
  x = _images((1, 224, 224, 3))
  outs, norm = numpy_vit(sd, x, name="dino_vitb8")
  bb = registry.get_backbone("dino_vitb8", weights=path, layer=12)
  tokens = jax.jit(features.layout_fn(bb, "tokens"))(bb.variables, x)
  last = norm(outs[-1])
  assert tokens.shape == (1, 28, 28, 1536)
  np.testing.assert_allclose(np.asarray(tokens)[..., 768:],
                             last[:, 1:].reshape(1, 28, 28, 768),
                             atol=5e-4, rtol=5e-4)
  np.testing.assert_allclose(np.asarray(tokens)[0, 0, 0, :768], last[0, 0],
                             atol=5e-4, rtol=5e-4)


# --------------------------------------------------------------------------
# Clear errors.

def test_wrong_key_names_the_key_and_its_shape(tmp_path):
  sd = vit_state("dino_vitb8", depth=2)
  sd["blocks.1.attn.qkv_weight"] = sd.pop("blocks.1.attn.qkv.weight")
  path = save_npz(tmp_path / "w.npz", sd)
  with pytest.raises(weights.WeightsFileError, match=(
      r"not a dino_vitb8 checkpoint: key 'blocks\.1\.attn\.qkv\.weight' "
      r"\(shape \(2304, 768\)\) is missing")):
    registry.get_backbone("dino_vitb8", weights=path, layer=1,
                          module_overrides={"depth": 2})
  # A deeper file than the architecture: its extra block is named.
  sd = vit_state("dino_vitb8", depth=3)
  path = save_npz(tmp_path / "deep.npz", sd)
  with pytest.raises(weights.WeightsFileError,
                     match=r"unexpected key\(s\) 'blocks\.2\.norm1\.weight'"):
    registry.get_backbone("dino_vitb8", weights=path, layer=1,
                          module_overrides={"depth": 2})
  # A wrong shape inside a block.
  sd = wrn_state(_TINY_WRN["blocks"], _TINY_WRN["stem"])
  sd["layer2.1.conv2.weight"] = sd["layer2.1.conv2.weight"][:, :, :1, :1]
  path = save_npz(tmp_path / "wrn.npz", sd)
  with pytest.raises(weights.WeightsFileError, match=(
      r"layer2\.1\.conv2\.weight has shape \(32, 32, 1, 1\), expected "
      r"\(32, 32, 3, 3\)")):
    registry.get_backbone("wide_resnet50_2", weights=path,
                          module_overrides=_TINY_WRN)


def test_wrong_architecture_is_refused(tmp_path):
  wrn = save_npz(tmp_path / "wrn.npz",
                 wrn_state(_TINY_WRN["blocks"], _TINY_WRN["stem"]))
  with pytest.raises(weights.WeightsFileError) as e:
    registry.get_backbone("dino_vitb8", weights=wrn)
  assert str(e.value).startswith(
      f"weights file {wrn} is not a dino_vitb8 checkpoint: key 'cls_token' "
      "(shape (1, 1, 768)) is missing (150 of 150 expected keys are; the "
      "file's keys: 'conv1.weight', 'bn1.weight', 'bn1.bias', ...")
  dino = save_npz(tmp_path / "dino.npz", vit_state("dino_vits8", depth=1))
  with pytest.raises(weights.WeightsFileError,
                     match="not a wide_resnet50_2 checkpoint: key "
                           "'conv1.weight'"):
    registry.get_backbone("wide_resnet50_2", weights=dino)
  # DINO v1 has no layer scale: a DINOv2-style block is refused, and the
  # other way round.
  v2 = save_npz(tmp_path / "v2.npz", vit_state("dinov2_vitb14", depth=1))
  with pytest.raises(weights.WeightsFileError, match=(
      r"pos_embed has shape \(1, 1370, 768\), expected \(1, 785, 768\)")):
    registry.get_backbone("dino_vitb8", weights=v2, layer=1,
                          module_overrides={"depth": 1})
  v1 = vit_state("dino_vitb8", depth=1)
  v1["patch_embed.proj.weight"] = np.zeros((768, 3, 14, 14), np.float32)
  v1["pos_embed"] = np.zeros((1, 1370, 768), np.float32)
  with pytest.raises(weights.WeightsFileError,
                     match=r"key 'blocks\.0\.ls1\.gamma' \(shape \(768,\)\) "
                           r"is missing"):
    registry.get_backbone("dinov2_vitb14", weights=save_npz(
        tmp_path / "v1.npz", v1), layer=1, module_overrides={"depth": 1})


def test_matching_backbones_names_what_a_file_is():
  """Full geometries as zero-copy views: which backbone a file matches."""
  def full(shapes):
    return {k: np.broadcast_to(np.float32(0), s) for k, s in shapes.items()}
  for name in ("dino_vits8", "dino_vitb8", "dinov2_vitb14", "dinov2_vitl14",
               "wide_resnet50_2"):
    spec = registry.BACKBONES[name]
    module = registry._module(spec, {})
    shapes, _ = registry._expected_keys(spec.family, module)
    assert registry.matching_backbones(full(shapes)) == [name]


@pytest.mark.parametrize("name", ["dino_vits8", "dino_vitb8", "dinov2_vitb14",
                                  "dinov2_vitl14", "wide_resnet50_2"])
def test_pretrained_without_a_file_says_to_pass_it(name):
  with pytest.raises(weights.WeightsFileError) as e:
    registry.get_backbone(name)
  msg = str(e.value)
  assert isinstance(e.value, user_errors.UserError) and "\n" not in msg
  assert msg.startswith(f"no pretrained weights are available for {name}; "
                        "pass its weights file instead, weights=<path> "
                        "(the official file: ")
  assert registry.BACKBONES[name].weights_file.split("/")[-1].split()[0] in msg
  # A missing file is a user error too.
  with pytest.raises(weights.MissingWeightsError,
                     match="does not exist") as e:
    registry.get_backbone(name, weights="/no/such/file.pth")
  assert isinstance(e.value, user_errors.UserError)


def test_random_weights_build_every_new_backbone():
  for name, overrides in (("dino_vitb8", {"depth": 1}),
                          ("wide_resnet50_2", _TINY_WRN)):
    bb = registry.get_backbone(name, weights="random", layer=1,
                               module_overrides=overrides)
    assert bb.weights_sha256 == "random-0"


# --------------------------------------------------------------------------
# Config: weights= and the paper's FUN-AD features.

def _config(name, arg):
  spec = importlib.util.spec_from_file_location(
      "c", os.path.join(REPO, "configs", name + ".py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def test_weights_config_arg_selects_a_file():
  assert configlib.SHARED_ARGS["weights"] == "backbone.weights"
  cfg = _config("patchcore_mvtec_layout",
                "root=/data,category=mvtec_ad/screw,backbone=wide_resnet50_2,"
                "weights=/w/wide_resnet50_2-95faca4d.pth")
  assert cfg.backbone.name == "wide_resnet50_2"
  assert cfg.backbone.weights == "/w/wide_resnet50_2-95faca4d.pth"
  cfg = _config("funad_mvtec_layout",
                "root=/data,category=c,backbone=dino_vitb8,layer=12,"
                "weights=/w/dino_vitbase8_pretrain.pth")
  assert (cfg.backbone.name, cfg.backbone.layer) == ("dino_vitb8", 12)
  assert cfg.dataset.image_size % names.PATCH_SIZES["dino_vitb8"] == 0
  assert _config("softpatch_mvtec", "weights=random").backbone.weights == (
      "random")
  # No packaged weights: the config says so before any work starts.
  with pytest.raises(configlib.ConfigArgError, match=(
      r"config\.backbone\.weights='pretrained': expected a weights file for "
      r"dino_vitb8")):
    _config("funad_mvtec_layout", "backbone=dino_vitb8")
