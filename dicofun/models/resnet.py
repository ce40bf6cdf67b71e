"""torchvision's bottleneck ResNets (Wide ResNet-50-2) in Flax Linen.

The architecture of ``torchvision.models.wide_resnet50_2`` (ResNet v1.5: the
stride sits on each stage's first 3×3 convolution): a 7×7 stride-2 stem with
BatchNorm and ReLU, a 3×3 stride-2 max pool, then four stages of bottleneck
blocks (1×1 → 3×3 → 1×1, ×4 expansion, a 1×1 projection shortcut on
each stage's first block). Convolutions pad symmetrically as torch does;
BatchNorm uses its running statistics with eps 1e-5. The classifier
(``fc``) is not built: the backbone gives features.

``__call__`` returns ``(pooled, features)``: ``pooled`` the global average of
the last stage (B, 2048 for WRN-50-2) and the stage outputs named by stride,
as ``efficientnet_lite`` names its own so that the PatchCore layout
(``features.layout_fn``: ``stride8`` and ``stride16``) and DiCo's levels work
unchanged:

* ``stride4``: ``layer1`` (WRN-50-2: 256 channels),
* ``stride8``: ``layer2`` (512) — PatchCore's first feature,
* ``stride16``: ``layer3`` (1024) — PatchCore's second feature,
* ``stride32``: ``layer4`` (2048).

Weights: ``convert_torch_weights`` reads torchvision's state dict names
(``conv1``, ``bn1``, ``layer{1..4}.N.{conv1, bn1, conv2, bn2, conv3, bn3,
downsample.0, downsample.1}``); ``torch_shapes`` lists them with their shapes.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

BN_EPS = 1e-5
_EXPANSION = 4
_STRIDES = ("stride4", "stride8", "stride16", "stride32")
# Keys of a torchvision checkpoint the backbone does not use: the classifier
# and BatchNorm's step counter.
TORCH_IGNORED = ("fc", "num_batches_tracked")


def _bn(name: str) -> nn.BatchNorm:
  return nn.BatchNorm(use_running_average=True, epsilon=BN_EPS, name=name)


def _conv(features: int, kernel: int, stride: int, name: str) -> nn.Conv:
  pad = kernel // 2
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                 padding=((pad, pad), (pad, pad)), use_bias=False, name=name)


class Bottleneck(nn.Module):
  """torchvision's ``Bottleneck`` (stride on the 3×3 convolution)."""
  mid: int
  out: int
  stride: int
  project: bool

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    y = jax.nn.relu(_bn("bn1")(_conv(self.mid, 1, 1, "conv1")(x)))
    y = jax.nn.relu(_bn("bn2")(_conv(self.mid, 3, self.stride, "conv2")(y)))
    y = _bn("bn3")(_conv(self.out, 1, 1, "conv3")(y))
    if self.project:
      x = _bn("downsample_1")(_conv(self.out, 1, self.stride,
                                    "downsample_0")(x))
    return jax.nn.relu(x + y)


def stage_widths(stem: int, width_factor: int, stage: int) -> Tuple[int, int]:
  """(bottleneck width, output channels) of stage ``stage`` (0..3)."""
  planes = stem * 2 ** stage
  return planes * width_factor, planes * _EXPANSION


class ResNet(nn.Module):
  """Bottleneck ResNet; the defaults are Wide ResNet-50-2.

  Attributes:
    blocks: bottleneck blocks per stage (ResNet-50: 3, 4, 6, 3).
    stem: stem channels (64); stage i has ``stem·2^i`` planes.
    width_factor: bottleneck width / planes (2 for the wide variant, as
      torchvision's ``width_per_group=128``).
  """
  blocks: Tuple[int, ...] = (3, 4, 6, 3)
  stem: int = 64
  width_factor: int = 2

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool = False
               ) -> Tuple[jax.Array, Dict[str, jax.Array]]:
    """Args: images NHWC, ImageNet-normalised; ``train`` must be False.

    Returns:
      ``(pooled (B, C), {"stride4", ..., "stride32"} -> NHWC)``.
    """
    if train:
      raise ValueError("the ResNet backbone is frozen: train=False only")
    x = jax.nn.relu(_bn("bn1")(_conv(self.stem, 7, 2, "conv1")(images)))
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    feats = {}
    for stage, n in enumerate(self.blocks):
      mid, out = stage_widths(self.stem, self.width_factor, stage)
      for j in range(n):
        x = Bottleneck(mid, out, 2 if (j == 0 and stage) else 1, j == 0,
                       name=f"layer{stage + 1}_{j}")(x)
      feats[_STRIDES[stage]] = x
    return jnp.mean(x, axis=(1, 2)), feats


def torch_shapes(module: ResNet) -> Dict[str, Tuple[int, ...]]:
  """Every torchvision key of ``module`` and its shape (BatchNorm: weight,
  bias, running_mean, running_var)."""
  out: Dict[str, Tuple[int, ...]] = {}

  def conv_bn(conv: str, bn: str, cout: int, cin: int, k: int):
    out[f"{conv}.weight"] = (cout, cin, k, k)
    for leaf in ("weight", "bias", "running_mean", "running_var"):
      out[f"{bn}.{leaf}"] = (cout,)

  conv_bn("conv1", "bn1", module.stem, 3, 7)
  cin = module.stem
  for stage, n in enumerate(module.blocks):
    mid, cout = stage_widths(module.stem, module.width_factor, stage)
    for j in range(n):
      pre = f"layer{stage + 1}.{j}."
      conv_bn(pre + "conv1", pre + "bn1", mid, cin, 1)
      conv_bn(pre + "conv2", pre + "bn2", mid, mid, 3)
      conv_bn(pre + "conv3", pre + "bn3", cout, mid, 1)
      if j == 0:
        conv_bn(pre + "downsample.0", pre + "downsample.1", cout, cin, 1)
      cin = cout
  return out


def convert_torch_weights(sd: Mapping[str, np.ndarray], module: ResNet
                          ) -> Dict[str, Any]:
  """Flax variables of ``module`` from torchvision-named weights.

  Args:
    sd: the keys of ``torch_shapes(module)`` (checked by the caller).
    module: the ``ResNet`` they are for.

  Returns:
    ``{"params": ..., "batch_stats": ...}``.
  """
  f = lambda k: np.asarray(sd[k], np.float32)
  kernel = lambda k: {"kernel": np.ascontiguousarray(
      f(k + ".weight").transpose(2, 3, 1, 0))}  # OIHW -> HWIO.

  def bn(k):
    return ({"scale": f(k + ".weight"), "bias": f(k + ".bias")},
            {"mean": f(k + ".running_mean"), "var": f(k + ".running_var")})

  params: Dict[str, Any] = {"conv1": kernel("conv1")}
  stats: Dict[str, Any] = {}
  params["bn1"], stats["bn1"] = bn("bn1")
  for stage, n in enumerate(module.blocks):
    for j in range(n):
      pre = f"layer{stage + 1}.{j}."
      p: Dict[str, Any] = {}
      s: Dict[str, Any] = {}
      convs = [("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3")]
      if j == 0:
        convs.append(("downsample_0", "downsample_1"))
      for conv, norm in convs:
        src_conv = pre + conv.replace("_", ".")
        src_bn = pre + norm.replace("_", ".")
        p[conv] = kernel(src_conv)
        p[norm], s[norm] = bn(src_bn)
      params[f"layer{stage + 1}_{j}"] = p
      stats[f"layer{stage + 1}_{j}"] = s
  return {"params": params, "batch_stats": stats}
