"""Backbone names and ViT patch sizes, importable without JAX.

Config parsing (``dicofun.configlib``) checks ``config.backbone.name`` and the
input size against this table without building a network; ``registry``
builds the backbones and takes its patch sizes from here.
"""

from __future__ import annotations

# Backbone name → ViT patch size (0 for a CNN, whose input size is free).
PATCH_SIZES: dict[str, int] = {
    **{f"efficientnet_lite{v}": 0 for v in range(5)},
    "dinov2_vits14": 14,
    "dinov2_vitb14": 14,
    "dinov2_vitl14": 14,
    "dino_vits8": 8,
    "dino_vitb8": 8,
    "wide_resnet50_2": 0,
}

BACKBONE_NAMES: tuple[str, ...] = tuple(PATCH_SIZES)

# The backbones whose ``weights="pretrained"`` works (a pip package ships the
# file, ``models/weights.py``); every other needs ``weights=<file>``.
PACKAGED_WEIGHTS: frozenset[str] = frozenset(
    {"efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2",
     "dinov2_vits14"})

# ViT block whose tokens are used when none is named (METHODS §1 note):
# ``config.backbone.layer``'s default and ``registry.get_backbone``'s.
DEFAULT_VIT_LAYER = 8

# Intermediate ViT tokens (CLS too) pass through the final LayerNorm, as
# DINOv2's ``get_intermediate_layers(norm=True)`` (METHODS §1):
# ``config.backbone.norm_intermediate``'s default and ``get_backbone``'s.
DEFAULT_NORM_INTERMEDIATE = True

# Side of the local average of ViT patch tokens in the PatchCore layout
# (1 = none; METHODS §1: bank methods on ViT tokens use no local average by
# default): ``config.backbone.vit_local_average``'s default.
DEFAULT_VIT_LOCAL_AVERAGE = 1
