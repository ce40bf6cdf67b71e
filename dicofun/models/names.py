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
}

BACKBONE_NAMES: tuple[str, ...] = tuple(PATCH_SIZES)

# ViT block whose tokens are used when none is named (METHODS §1 note):
# ``config.backbone.layer``'s default and ``registry.get_backbone``'s.
DEFAULT_VIT_LAYER = 8
