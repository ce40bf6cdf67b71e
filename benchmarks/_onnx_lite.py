"""EfficientNet-Lite as an ONNX graph built from our converted Flax variables.

The peer for ``lite0_full`` in benchmarks/results/speed.json (issue 16, item
3): the same network as ``dicofun.models.efficientnet_lite.EfficientNetLite``
written node by node with ``onnx.helper`` (no torch, no exporter), so
onnxruntime runs exactly our weights:

* every convolution is an ONNX ``Conv`` (depthwise: ``group = C``) with its
  BatchNorm (eps 1e-3) folded into the weight and a bias — what an exporter's
  graph looks like after onnxruntime's own Conv+BatchNormalization fusion;
* TensorFlow "SAME" padding as explicit ``pads``, computed from the static
  input size (stride 2: the extra row/column goes at the end, as in JAX);
* ReLU6 as ``Clip(0, 6)``; the residual ``Add`` where stride 1 and the
  channels match; ``GlobalAveragePool`` + ``Gemm`` for the classifier.

Input ``images`` is NCHW float32 (onnxruntime's native layout; the batch is
symbolic, the sides fixed because the pads depend on them). Outputs:
``logits`` (B, classes), ``stride8`` and ``stride16`` (NCHW feature maps, the
outputs of stages 3 and 5, our ``feats["stride8"]``/``feats["stride16"]``).

``build(variables, variant, height, width)`` returns the model and the
network's FLOPs per image (2 × multiply-adds of the convolutions and the
classifier, counted from the shapes; the elementwise work is left out).
"""

from __future__ import annotations

from typing import Any, Mapping, Tuple

import numpy as np
import onnx
from onnx import helper
from onnx import numpy_helper

from dicofun.models import efficientnet_lite

_EPS = 1e-3
OPSET = 17
# Stage index -> output name, as efficientnet_lite names its features.
_OUTPUT_STAGES = {2: "stride8", 4: "stride16"}


def same_pads(size: int, kernel: int, stride: int) -> Tuple[int, int]:
  """TF/JAX "SAME" padding (before, after) of one spatial dimension."""
  out = -(-size // stride)
  total = max((out - 1) * stride + kernel - size, 0)
  return total // 2, total - total // 2


def _fold(kernel_hwio: np.ndarray, bn_params: Mapping[str, Any],
          bn_stats: Mapping[str, Any]) -> Tuple[np.ndarray, np.ndarray]:
  """(OIHW weight, bias) of a bias-free conv followed by inference BatchNorm."""
  scale = (np.asarray(bn_params["scale"], np.float64)
           / np.sqrt(np.asarray(bn_stats["var"], np.float64) + _EPS))
  w = np.transpose(np.asarray(kernel_hwio, np.float64), (3, 2, 0, 1))
  w = w * scale[:, None, None, None]
  b = (np.asarray(bn_params["bias"], np.float64)
       - np.asarray(bn_stats["mean"], np.float64) * scale)
  return w.astype(np.float32), b.astype(np.float32)


class _Graph:
  """Accumulates nodes and initializers; tracks (C, H, W) and FLOPs."""

  def __init__(self):
    self.nodes = []
    self.inits = []
    self.flops = 0
    self._n = 0

  def name(self, prefix: str) -> str:
    self._n += 1
    return f"{prefix}_{self._n}"

  def const(self, prefix: str, value: np.ndarray) -> str:
    n = self.name(prefix)
    self.inits.append(numpy_helper.from_array(value, n))
    return n

  def conv_bn(self, x: str, hw: Tuple[int, int], kernel_hwio: np.ndarray,
              bn_params, bn_stats, stride: int, *, depthwise: bool,
              relu6: bool) -> Tuple[str, Tuple[int, int]]:
    w, b = _fold(kernel_hwio, bn_params, bn_stats)
    cout, cin_g, k, _ = w.shape
    (pt, pb), (pl, pr) = (same_pads(hw[0], k, stride),
                          same_pads(hw[1], k, stride))
    out_hw = (-(-hw[0] // stride), -(-hw[1] // stride))
    y = self.name("conv")
    self.nodes.append(helper.make_node(
        "Conv", [x, self.const("w", w), self.const("b", b)], [y],
        kernel_shape=[k, k], strides=[stride, stride],
        pads=[pt, pl, pb, pr], group=cout if depthwise else 1))
    self.flops += 2 * out_hw[0] * out_hw[1] * cout * cin_g * k * k
    if relu6:
      z = self.name("relu6")
      self.nodes.append(helper.make_node(
          "Clip", [y, self.const("lo", np.array(0, np.float32)),
                   self.const("hi", np.array(6, np.float32))], [z]))
      y = z
    return y, out_hw


def build(variables: Mapping[str, Any], variant: int = 0, height: int = 224,
          width: int = 224) -> Tuple[onnx.ModelProto, int]:
  """The ONNX graph of ``EfficientNetLite(variant)`` with ``variables``.

  Args:
    variables: ``{"params", "batch_stats"}`` as ``get_backbone`` /
      ``convert_torch_weights`` give them (numpy or jax arrays).
    variant: 0..4.
    height, width: the input size (fixes the "SAME" pads).

  Returns:
    ``(model, flops_per_image)``.
  """
  p, s = variables["params"], variables["batch_stats"]
  g = _Graph()
  x, hw = g.conv_bn("images", (height, width), p["conv_stem"]["kernel"],
                    p["bn0"], s["bn0"], 2, depthwise=False, relu6=True)
  outputs = {}
  idx = 0
  # Kernel sizes and input channels: the kernels' shapes say them.
  for stage, (r, _, st, e, _, cout) in enumerate(
      efficientnet_lite.block_settings(variant)):
    for j in range(r):
      bp, bs = p[f"blocks_{idx}"], s[f"blocks_{idx}"]
      stride = st if j == 0 else 1
      inputs = x
      cin_b = (bp["expand_conv"]["kernel"].shape[2] if "expand_conv" in bp
               else bp["depthwise_conv"]["kernel"].shape[3])
      if e != 1:
        x, hw = g.conv_bn(x, hw, bp["expand_conv"]["kernel"], bp["bn0"],
                          bs["bn0"], 1, depthwise=False, relu6=True)
      x, hw = g.conv_bn(x, hw, bp["depthwise_conv"]["kernel"], bp["bn1"],
                        bs["bn1"], stride, depthwise=True, relu6=True)
      x, hw = g.conv_bn(x, hw, bp["project_conv"]["kernel"], bp["bn2"],
                        bs["bn2"], 1, depthwise=False, relu6=False)
      if stride == 1 and cin_b == cout:
        y = g.name("add")
        g.nodes.append(helper.make_node("Add", [x, inputs], [y]))
        x = y
      idx += 1
    name = _OUTPUT_STAGES.get(stage)
    if name:
      g.nodes.append(helper.make_node("Identity", [x], [name]))
      outputs[name] = (cout, hw)
  x, hw = g.conv_bn(x, hw, p["conv_head"]["kernel"], p["bn1"], s["bn1"], 1,
                    depthwise=False, relu6=True)
  pooled, flat = g.name("pool"), g.name("flat")
  g.nodes.append(helper.make_node("GlobalAveragePool", [x], [pooled]))
  g.nodes.append(helper.make_node("Flatten", [pooled], [flat], axis=1))
  fc_w = np.asarray(p["fc"]["kernel"], np.float32)  # (in, classes)
  g.nodes.append(helper.make_node(
      "Gemm", [flat, g.const("fc_w", fc_w),
               g.const("fc_b", np.asarray(p["fc"]["bias"], np.float32))],
      ["logits"]))
  g.flops += 2 * fc_w.shape[0] * fc_w.shape[1]
  f = onnx.TensorProto.FLOAT
  graph = helper.make_graph(
      g.nodes, f"efficientnet_lite{variant}",
      [helper.make_tensor_value_info("images", f,
                                     ["batch", 3, height, width])],
      [helper.make_tensor_value_info("logits", f, ["batch", fc_w.shape[1]]),
       *[helper.make_tensor_value_info(n, f, ["batch", c, h, w])
         for n, (c, (h, w)) in outputs.items()]],
      g.inits)
  model = helper.make_model(graph,
                            opset_imports=[helper.make_opsetid("", OPSET)])
  model.ir_version = min(model.ir_version, 8)  # Readable by older runtimes.
  onnx.checker.check_model(model)
  return model, g.flops
