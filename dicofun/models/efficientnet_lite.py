"""EfficientNet-Lite0..4 in Flax Linen, with a converter for torch weights.

The Lite variants (Tan & Le's EfficientNet adapted for edge accelerators)
differ from EfficientNet-B*: ReLU6 instead of swish, no squeeze-excite, the
stem (32 channels) and head (1280 channels) are not width-scaled, and the
first and last block stacks are not depth-scaled. Convolutions use TensorFlow
"SAME" padding (asymmetric for stride 2, identical to JAX's ``"SAME"``) and
BatchNorm eps 1e-3, so converted TF-trained weights reproduce the reference
outputs.

``__call__`` returns ``(logits, features)`` with features named by stride:

* ``stride4``: output of the last block of stage 2 (lite0: 24 channels),
* ``stride8``: stage 3 (lite0: 40),
* ``stride16``: stage 5, the last stride-16 stage (lite0: 112),
* ``stride32``: stage 7, the last block before the 1×1 head conv (lite0: 320).
"""

from __future__ import annotations

import math
from typing import Any, Dict, Mapping, Tuple

import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

# (width multiplier, depth multiplier, native input size) per variant.
VARIANTS = {
    0: (1.0, 1.0, 224),
    1: (1.0, 1.1, 240),
    2: (1.1, 1.2, 260),
    3: (1.2, 1.4, 280),
    4: (1.4, 1.8, 300),
}

# EfficientNet-B0 stages: (repeats, kernel, stride, expand ratio, in, out).
_STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
# Index of the stage whose output is each named feature.
_FEATURE_STAGES = {1: "stride4", 2: "stride8", 4: "stride16", 6: "stride32"}
_STEM = 32
_HEAD = 1280
_BN_EPS = 1e-3
_BN_MOMENTUM = 0.99


def round_filters(filters: int, width: float, divisor: int = 8) -> int:
  """Channels scaled by ``width``, rounded to a multiple of ``divisor``."""
  scaled = filters * width
  new = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
  if new < 0.9 * scaled:  # Never round down by more than 10%.
    new += divisor
  return int(new)


def block_settings(variant: int) -> Tuple[Tuple[int, int, int, int, int, int],
                                          ...]:
  """Per-stage (repeats, kernel, stride, expand, in, out) of a Lite variant."""
  width, depth, _ = VARIANTS[variant]
  out = []
  last = len(_STAGES) - 1
  for i, (r, k, s, e, cin, cout) in enumerate(_STAGES):
    cin = cin if i == 0 else round_filters(cin, width)  # Stem is unscaled.
    cout = round_filters(cout, width)
    if 0 < i < last:  # Lite keeps the first and last stacks at one block.
      r = int(math.ceil(r * depth))
    out.append((r, k, s, e, cin, cout))
  return tuple(out)


def depthwise_conv(x: jax.Array, kernel: jax.Array, stride: int,
                   impl: str = "auto") -> jax.Array:
  """Depthwise 2-D convolution with TensorFlow "SAME" padding, no bias.

  Args:
    x: NHWC input.
    kernel: (k, k, 1, C), flax's HWIO layout for ``feature_group_count=C``.
    stride: the same in both spatial dimensions.
    impl: ``"xla"`` (``conv_general_dilated`` with one group per channel),
      ``"shifted"`` (the sum over the k*k taps of a strided slice of the padded
      input times that tap's per-channel weight) or ``"auto"``: shifted on
      the CPU backend, where XLA's grouped convolution runs 8-60x slower
      than the fused elementwise sum (benchmarks/backbones.py), XLA's
      convolution elsewhere (cuDNN/TPU kernels). Both compute the same sum;
      they differ only in float rounding (~1e-6 relative).

  Returns:
    NHWC output of shape (B, ceil(H/stride), ceil(W/stride), C).
  """
  if impl == "auto":
    impl = "shifted" if jax.default_backend() == "cpu" else "xla"
  if impl == "xla":
    return jax.lax.conv_general_dilated(
        x, kernel.astype(x.dtype), (stride, stride), "SAME",
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=x.shape[-1])
  if impl != "shifted":
    raise ValueError(f"depthwise impl must be auto|xla|shifted, got {impl!r}")
  k = kernel.shape[0]
  h, w = x.shape[1], x.shape[2]
  ho, wo = -(-h // stride), -(-w // stride)
  pad_h = max((ho - 1) * stride + k - h, 0)  # "SAME": the extra row goes last.
  pad_w = max((wo - 1) * stride + k - w, 0)
  xp = jnp.pad(x, ((0, 0), (pad_h // 2, pad_h - pad_h // 2),
                   (pad_w // 2, pad_w - pad_w // 2), (0, 0)))
  kernel = kernel.astype(x.dtype)
  out = None
  for i in range(k):
    for j in range(k):
      tap = jax.lax.slice(
          xp, (0, i, j, 0),
          (xp.shape[0], i + (ho - 1) * stride + 1, j + (wo - 1) * stride + 1,
           xp.shape[3]), (1, stride, stride, 1)) * kernel[i, j, 0]
      out = tap if out is None else out + tap
  return out


class DepthwiseConv(nn.Module):
  """``nn.Conv(C, (k, k), feature_group_count=C, use_bias=False)``'s
  parameters (``kernel`` of shape (k, k, 1, C)) with ``depthwise_conv``."""
  kernel_size: int
  stride: int = 1
  impl: str = "auto"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = x.shape[-1]
    kernel = self.param("kernel", nn.initializers.lecun_normal(),
                        (self.kernel_size, self.kernel_size, 1, c), jnp.float32)
    return depthwise_conv(x, kernel, self.stride, self.impl)


class PointwiseConv(nn.Module):
  """``nn.Conv(cout, (1, 1), use_bias=False)``'s parameters (``kernel`` of
  shape (1, 1, Cin, Cout)) as one matrix product over all pixels **(ours)**:
  on the CPU backend XLA runs the 2-D dot faster than the same 1 × 1
  convolution (BENCHMARKS.md, ``lite0_full`` vs ``lite0_full_conv1x1``),
  same outputs up to rounding; ``impl="conv"`` keeps the convolution."""
  features: int
  impl: str = "dot"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    cin = x.shape[-1]
    kernel = self.param("kernel", nn.initializers.lecun_normal(),
                        (1, 1, cin, self.features), jnp.float32)
    if self.impl not in ("dot", "conv"):
      raise ValueError(f"pointwise impl must be dot or conv, got {self.impl!r}")
    if self.impl == "conv":
      return lax.conv_general_dilated(
          x, kernel, (1, 1), "VALID",
          dimension_numbers=("NHWC", "HWIO", "NHWC"))
    out = jnp.dot(x.reshape(-1, cin), kernel.reshape(cin, self.features))
    return out.reshape(*x.shape[:-1], self.features)


def _bn(train: bool, name: str) -> nn.BatchNorm:
  return nn.BatchNorm(use_running_average=not train, momentum=_BN_MOMENTUM,
                      epsilon=_BN_EPS, name=name)


class MBConv(nn.Module):
  """Inverted-residual block without squeeze-excite (ReLU6)."""
  cin: int
  cout: int
  kernel: int
  stride: int
  expand: int
  depthwise_impl: str = "auto"
  pointwise_impl: str = "dot"

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    inputs = x
    hidden = self.cin * self.expand
    if self.expand != 1:
      x = PointwiseConv(hidden, self.pointwise_impl, name="expand_conv")(x)
      x = jax.nn.relu6(_bn(train, "bn0")(x))
    x = DepthwiseConv(self.kernel, self.stride, self.depthwise_impl,
                      name="depthwise_conv")(x)
    x = jax.nn.relu6(_bn(train, "bn1")(x))
    x = PointwiseConv(self.cout, self.pointwise_impl,
                      name="project_conv")(x)
    x = _bn(train, "bn2")(x)
    if self.stride == 1 and self.cin == self.cout:
      x = x + inputs  # Drop-connect is a training regulariser; not used here.
    return x


class EfficientNetLite(nn.Module):
  """EfficientNet-Lite classifier returning named multi-scale features.

  Attributes:
    variant: 0..4.
    num_classes: classifier outputs (1000 for the ImageNet weights).
    depthwise_impl: how the depthwise convolutions run (``depthwise_conv``).
    pointwise_impl: how the 1 × 1 convolutions run (``PointwiseConv``).
  """
  variant: int = 0
  num_classes: int = 1000
  depthwise_impl: str = "auto"  # See ``depthwise_conv``.
  pointwise_impl: str = "dot"  # See ``PointwiseConv``.

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool = False
               ) -> Tuple[jax.Array, Dict[str, jax.Array]]:
    """Args: images NHWC float, normalised as (x/255 - 0.5)/0.5.

    Returns:
      ``(logits (B, num_classes), {"stride4", "stride8", "stride16",
      "stride32"} -> NHWC)``.
    """
    if self.variant not in VARIANTS:
      raise ValueError(f"EfficientNet-Lite variant must be 0..4, got "
                       f"{self.variant}")
    x = nn.Conv(_STEM, (3, 3), strides=(2, 2), padding="SAME", use_bias=False,
                name="conv_stem")(images)
    x = jax.nn.relu6(_bn(train, "bn0")(x))
    feats = {}
    idx = 0
    for stage, (r, k, s, e, cin, cout) in enumerate(
        block_settings(self.variant)):
      for j in range(r):
        x = MBConv(cin if j == 0 else cout, cout, k, s if j == 0 else 1, e,
                   self.depthwise_impl, self.pointwise_impl,
                   name=f"blocks_{idx}")(x, train=train)
        idx += 1
      if stage in _FEATURE_STAGES:
        feats[_FEATURE_STAGES[stage]] = x
    x = PointwiseConv(_HEAD, self.pointwise_impl, name="conv_head")(x)
    x = jax.nn.relu6(_bn(train, "bn1")(x))
    x = jnp.mean(x, axis=(1, 2))
    logits = nn.Dense(self.num_classes, name="fc")(x)
    return logits, feats


def _conv(w: np.ndarray) -> np.ndarray:
  # torch OIHW (depthwise: C,1,k,k) -> flax HWIO (depthwise: k,k,1,C).
  return np.ascontiguousarray(np.transpose(w, (2, 3, 1, 0)), np.float32)


def _bn_vars(sd: Mapping[str, np.ndarray], prefix: str):
  f = lambda k: np.asarray(sd[f"{prefix}.{k}"], np.float32)
  return ({"scale": f("weight"), "bias": f("bias")},
          {"mean": f("running_mean"), "var": f("running_var")})


def convert_torch_weights(state_dict: Mapping[str, np.ndarray]
                          ) -> Dict[str, Any]:
  """Flax variables from an ``efficientnet_pytorch``-named state dict.

  Args:
    state_dict: ``_conv_stem``, ``_bn0``, ``_blocks.N.{_expand_conv, _bn0,
      _depthwise_conv, _bn1, _project_conv, _bn2}``, ``_conv_head``, ``_bn1``,
      ``_fc`` tensors as numpy arrays.

  Returns:
    ``{"params": ..., "batch_stats": ...}`` for ``EfficientNetLite``.
  """
  sd = state_dict
  params: Dict[str, Any] = {}
  stats: Dict[str, Any] = {}
  params["conv_stem"] = {"kernel": _conv(sd["_conv_stem.weight"])}
  params["bn0"], stats["bn0"] = _bn_vars(sd, "_bn0")
  blocks = sorted({int(k.split(".")[1]) for k in sd if k.startswith("_blocks.")})
  for b in blocks:
    pre = f"_blocks.{b}"
    p: Dict[str, Any] = {}
    s: Dict[str, Any] = {}
    if f"{pre}._expand_conv.weight" in sd:
      p["expand_conv"] = {"kernel": _conv(sd[f"{pre}._expand_conv.weight"])}
      p["bn0"], s["bn0"] = _bn_vars(sd, f"{pre}._bn0")
    p["depthwise_conv"] = {"kernel": _conv(sd[f"{pre}._depthwise_conv.weight"])}
    p["bn1"], s["bn1"] = _bn_vars(sd, f"{pre}._bn1")
    p["project_conv"] = {"kernel": _conv(sd[f"{pre}._project_conv.weight"])}
    p["bn2"], s["bn2"] = _bn_vars(sd, f"{pre}._bn2")
    params[f"blocks_{b}"] = p
    stats[f"blocks_{b}"] = s
  params["conv_head"] = {"kernel": _conv(sd["_conv_head.weight"])}
  params["bn1"], stats["bn1"] = _bn_vars(sd, "_bn1")
  params["fc"] = {"kernel": np.ascontiguousarray(sd["_fc.weight"].T, np.float32),
                  "bias": np.asarray(sd["_fc.bias"], np.float32)}
  return {"params": params, "batch_stats": stats}
