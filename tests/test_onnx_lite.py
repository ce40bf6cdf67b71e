"""benchmarks/_onnx_lite.py: the ONNX EfficientNet-Lite peer equals our model.

The ``lite0_full`` speed row (issue 16) times onnxruntime on this graph
against our jitted Flax model; the comparison means something only if both
compute the same function, so onnxruntime's outputs are checked against ours
on random weights (with random BatchNorm statistics, so the folding is
exercised) and on the packaged pretrained weights.
"""

import importlib.util
import os

import jax
import numpy as np
import pytest

from dicofun.models import efficientnet_lite
from dicofun.models import registry
from dicofun.models import weights

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _builder():
  spec = importlib.util.spec_from_file_location(
      "_onnx_lite", os.path.join(_REPO, "benchmarks", "_onnx_lite.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def test_same_pads_put_the_extra_row_last():
  lite = _builder()
  assert lite.same_pads(224, 3, 2) == (0, 1)
  assert lite.same_pads(112, 5, 2) == (1, 2)
  assert lite.same_pads(7, 5, 2) == (2, 2)  # Odd side: out 4, total 4.
  assert lite.same_pads(9, 3, 1) == (1, 1)
  assert lite.same_pads(14, 5, 1) == (2, 2)


def _randomise_bn(variables, seed=0):
  """Random BatchNorm scale/bias/mean/var (init gives 1, 0, 0, 1)."""
  rng = np.random.default_rng(seed)
  out = jax.tree.map(np.array, variables)
  for tree, kind in ((out["params"], "params"), (out["batch_stats"], "stats")):
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
      key = path[-1].key
      parent = tree
      for p in path[:-1]:
        parent = parent[p.key]
      n = leaf.shape
      if kind == "params" and key == "scale":
        parent[key] = rng.uniform(0.5, 1.5, n).astype(np.float32)
      elif kind == "params" and key == "bias" and path[0].key != "fc":
        parent[key] = rng.normal(0, 0.1, n).astype(np.float32)
      elif key == "mean":
        parent[key] = rng.normal(0, 0.1, n).astype(np.float32)
      elif key == "var":
        parent[key] = rng.uniform(0.5, 2.0, n).astype(np.float32)
  return out


def _compare(bb, variables, size, batch=2, seed=0):
  lite = _builder()
  model, flops = lite.build(variables, 0, size, size)
  sess = ort.InferenceSession(model.SerializeToString(),
                              providers=["CPUExecutionProvider"])
  x = np.random.default_rng(seed).uniform(-1, 1, (batch, size, size, 3)
                                          ).astype(np.float32)
  logits, feats = jax.jit(bb.module.apply)(variables, x)
  ref_logits, ref8, ref16 = sess.run(
      ["logits", "stride8", "stride16"], {"images": x.transpose(0, 3, 1, 2)})
  pairs = ((logits, ref_logits), (feats["stride8"], ref8.transpose(0, 2, 3, 1)),
           (feats["stride16"], ref16.transpose(0, 2, 3, 1)))
  for ours, ref in pairs:
    ours = np.asarray(ours)
    assert ours.shape == ref.shape
    scale = max(float(np.abs(ref).max()), 1.0)
    np.testing.assert_allclose(ours, ref, atol=1e-4 * scale)
  return flops


def test_onnx_lite0_equals_ours_random_weights():
  bb = registry.get_backbone("efficientnet_lite0", weights="random")
  variables = _randomise_bn(bb.variables)
  assert not np.allclose(variables["batch_stats"]["bn0"]["var"], 1.0)
  _compare(bb, variables, 96)


def test_onnx_lite0_equals_ours_pretrained():
  try:
    bb = registry.get_backbone("efficientnet_lite0")
  except weights.MissingWeightsError:
    pytest.skip("efficientnet_lite0 weight package not installed")
  _compare(bb, bb.variables, 96, seed=1)


def test_flops_counted_per_conv():
  """2·MACs of every conv + the classifier, re-derived from the block table."""
  lite = _builder()
  bb = registry.get_backbone("efficientnet_lite0", weights="random")
  _, flops = lite.build(bb.variables, 0, 224, 224)
  h = 112
  want = 2 * h * h * 32 * 3 * 9  # Stem: 3x3 stride 2, 3 -> 32.
  for r, k, s, e, cin, cout in efficientnet_lite.block_settings(0):
    for j in range(r):
      c = cin if j == 0 else cout
      hidden = c * e
      if e != 1:
        want += 2 * h * h * c * hidden
      h = -(-h // (s if j == 0 else 1))
      want += 2 * h * h * hidden * k * k + 2 * h * h * hidden * cout
  want += 2 * h * h * 320 * 1280 + 2 * 1280 * 1000
  assert h == 7
  assert flops == want
