"""DINO / DINOv2 Vision Transformers (ViT-S/14 by default) in Flax Linen.

Architecture of the Hugging Face ``Dinov2Model`` (pre-norm blocks with layer
scale, LayerNorm eps 1e-6, exact erf GELU, a class token and learned position
embeddings for a 37×37 grid, i.e. 518-pixel inputs). ``layer_scale=False``
gives DINO v1's blocks (facebookresearch/dino ``vision_transformer.py``: the
same blocks without ``ls1``/``ls2``). Any input whose sides are multiples of
the patch size works: the patch part of the position embedding is resized to
the token grid with torch-style bicubic interpolation (a = -0.75, half-pixel
centres, edge clamping, no antialias). ``pos_offset=0`` (DINOv2 here) resizes
straight to the target grid size — the ``size=`` form that recent HF versions
use and that the packaged ONNX graph (exported with torch 2.7, fixed at
224×224) contains; the facebookresearch hub code of DINOv2 uses the
``scale_factor`` form below instead, which we do not reproduce for DINOv2
**(ours)**. ``pos_offset=0.1`` (DINO v1) is DINO's ``interpolate_pos_encoding``:
``scale_factor=((h + 0.1) / M, (w + 0.1) / M)`` for an M×M trained grid, i.e.
source coordinates ``(i + 0.5) · M / (h + 0.1) - 0.5``, and no resize at all
on the trained square grid.

``__call__`` returns ``(final_tokens, {"block{i}": tokens})``: ``final_tokens``
(B, 1+P, D) are the last block's output after the final LayerNorm; the
intermediate ``block{i}`` entries (i counted 1..depth, the output of block i)
are raw residual-stream tokens unless ``norm_intermediate=True``, which applies
the final LayerNorm to them too **(ours; HF's ``hidden_states`` are raw)**.
"""

from __future__ import annotations

import functools
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


def _cubic_weights(t: np.ndarray, a: float) -> np.ndarray:
  """Keys cubic-convolution weights for taps at offsets -1, 0, 1, 2."""
  def near(x):  # |x| <= 1
    return ((a + 2) * x - (a + 3)) * x * x + 1
  def far(x):  # 1 < |x| < 2
    return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
  return np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=-1)


@functools.lru_cache(maxsize=64)
def bicubic_matrix(n_in: int, n_out: int, a: float = -0.75,
                   offset: float = 0.0) -> np.ndarray:
  """(n_out, n_in) matrix of torch ``upsample_bicubic2d`` along one axis.

  Matches ``F.interpolate(mode="bicubic", align_corners=False, size=...)``:
  source coordinate ``(i + 0.5) * n_in / n_out - 0.5``, four taps with
  out-of-range indices clamped to the edge, no antialiasing. With ``offset``
  > 0 it matches the ``scale_factor=(n_out + offset) / n_in`` form instead
  (torch then maps with ``1 / scale_factor``): source coordinate
  ``(i + 0.5) * n_in / (n_out + offset) - 0.5``.
  """
  scale = 1.0 / ((n_out + offset) / n_in) if offset else n_in / n_out
  src = (np.arange(n_out, dtype=np.float64) + 0.5) * scale - 0.5
  base = np.floor(src)
  w = _cubic_weights(src - base, a)
  m = np.zeros((n_out, n_in), np.float64)
  for tap in range(4):
    idx = np.clip(base.astype(np.int64) - 1 + tap, 0, n_in - 1)
    np.add.at(m, (np.arange(n_out), idx), w[:, tap])
  return m.astype(np.float32)


def resize_bicubic(grid: jax.Array, out_hw: Tuple[int, int], *,
                   a: float = -0.75, offset: float = 0.0) -> jax.Array:
  """Torch-style bicubic resize of a (H, W, C) array to ``out_hw``.

  ``offset`` as in ``bicubic_matrix``; an unchanged size returns ``grid``
  (DINO skips the interpolation there).
  """
  h, w = grid.shape[:2]
  if (h, w) == tuple(out_hw):
    return grid
  my = jnp.asarray(bicubic_matrix(h, out_hw[0], a, offset))
  mx = jnp.asarray(bicubic_matrix(w, out_hw[1], a, offset))
  hi = jax.lax.Precision.HIGHEST
  grid = jnp.einsum("oh,hwc->owc", my, grid, precision=hi)
  return jnp.einsum("pw,owc->opc", mx, grid, precision=hi)


def gelu(x: jax.Array) -> jax.Array:
  """Exact GELU, ``0.5·x·(1 + erf(x/√2))``: torch's ``nn.GELU()`` formula.

  The same function as ``jax.nn.gelu(x, approximate=False)``, which computes
  ``0.5·x·erfc(-x/√2)``; XLA's CPU erfc goes through an exponential and ran
  the MLP's activation 2.7x slower than erf at DINOv2-S sizes (issue 16).
  The two differ by float rounding only: < 1e-6 absolute, the largest where
  x < -4 and GELU is ~0 (there 1 + erf rounds to a multiple of 2^-24).
  """
  return 0.5 * x * (1 + jax.lax.erf(x * np.float32(np.sqrt(0.5)).astype(x.dtype)))


def attention(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
  """Softmax attention of (B, N, heads, hd) q, k, v; returns (B, N, heads, hd).

  Heads-major products (``bhqd,bhkd->bhqk`` and ``bhqk,bhkd->bhqd``) and the
  softmax normalisation applied after the weighted sum (one division of the
  (N, hd) output instead of the (N, N) weights): on the CPU backend the
  token-major einsum of the weighted sum ran 2.2x slower than the
  heads-major one, and the whole attention 1.16x slower at B=8, N=257
  (issue 16). The same function as ``jax.nn.softmax`` then ``einsum``, up to
  float rounding (~1e-7); ``jax.nn.dot_product_attention`` measured no
  faster than the original einsums here.
  """
  scale = np.float32(1.0 / np.sqrt(q.shape[-1])).astype(q.dtype)
  q, k, v = (t.transpose(0, 2, 1, 3) for t in (q, k, v))
  logits = jnp.einsum("bhqd,bhkd->bhqk", q, k) * scale
  weights = jnp.exp(logits - jax.lax.stop_gradient(
      logits.max(axis=-1, keepdims=True)))
  out = (jnp.einsum("bhqk,bhkd->bhqd", weights, v)
         / weights.sum(axis=-1, keepdims=True))
  return out.transpose(0, 2, 1, 3)


class Attention(nn.Module):
  dim: int
  heads: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b, n, _ = x.shape
    hd = self.dim // self.heads
    split = lambda t: t.reshape(b, n, self.heads, hd)
    q = split(nn.Dense(self.dim, name="query")(x))
    k = split(nn.Dense(self.dim, name="key")(x))
    v = split(nn.Dense(self.dim, name="value")(x))
    out = attention(q, k, v).reshape(b, n, self.dim)
    return nn.Dense(self.dim, name="out")(out)


class Block(nn.Module):
  """Pre-norm transformer block, with DINOv2 layer scale unless told not."""
  dim: int
  heads: int
  mlp_ratio: int
  eps: float
  layer_scale: bool = True

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    ln = functools.partial(nn.LayerNorm, epsilon=self.eps,
                           use_fast_variance=False)

    def scaled(name, y):
      if not self.layer_scale:
        return y
      return self.param(name, nn.initializers.ones, (self.dim,)) * y

    y = Attention(self.dim, self.heads, name="attn")(ln(name="norm1")(x))
    x = x + scaled("ls1", y)
    y = nn.Dense(self.dim * self.mlp_ratio, name="fc1")(ln(name="norm2")(x))
    y = nn.Dense(self.dim, name="fc2")(gelu(y))
    return x + scaled("ls2", y)


class VisionTransformer(nn.Module):
  """DINOv2 (or DINO v1) ViT; defaults are DINOv2 ViT-S/14.

  Attributes:
    dim: token width.
    depth: number of blocks.
    heads: attention heads.
    patch: patch size in pixels.
    mlp_ratio: MLP hidden width / dim.
    eps: LayerNorm epsilon.
    pos_grid: side of the square grid the position embedding was trained on.
    layer_scale: DINOv2's per-channel ``ls1``/``ls2`` (False: DINO v1).
    pos_offset: position-embedding resize form (module docstring): 0 for the
      ``size=`` form, 0.1 for DINO's ``scale_factor=(g + 0.1) / M``.
  """
  dim: int = 384
  depth: int = 12
  heads: int = 6
  patch: int = 14
  mlp_ratio: int = 4
  eps: float = 1e-6
  pos_grid: int = 37
  layer_scale: bool = True
  pos_offset: float = 0.0

  @nn.compact
  def __call__(self, images: jax.Array, *, layers: Sequence[int] = (),
               norm_intermediate: bool = False,
               stop_after: Optional[int] = None
               ) -> Tuple[Optional[jax.Array], Dict[str, jax.Array]]:
    """Encodes ImageNet-normalised NHWC images.

    Args:
      images: (B, H, W, 3), H and W multiples of ``patch``.
      layers: blocks (1..depth) whose output tokens to return.
      norm_intermediate: apply the final LayerNorm to the returned
        intermediate tokens.
      stop_after: skip the blocks after this one (saves compute when only
        intermediate layers are needed); the first output is then None.

    Returns:
      ``(final tokens (B, 1+P, D) or None, {"block{i}": (B, 1+P, D)})``.
    """
    b, h, w, _ = images.shape
    if h % self.patch or w % self.patch:
      raise ValueError(f"input {h}x{w} is not a multiple of the patch size "
                       f"{self.patch}")
    for i in layers:
      if not 1 <= i <= self.depth:
        raise ValueError(f"layer {i} is not in 1..{self.depth}")
    gh, gw = h // self.patch, w // self.patch
    x = nn.Conv(self.dim, (self.patch, self.patch),
                strides=(self.patch, self.patch), padding="VALID",
                name="patch_embed")(images)
    x = x.reshape(b, gh * gw, self.dim)
    cls = self.param("cls_token", nn.initializers.normal(1e-6),
                     (1, 1, self.dim))
    pos = self.param("pos_embed", nn.initializers.normal(0.02),
                     (1, 1 + self.pos_grid ** 2, self.dim))
    grid = pos[0, 1:].reshape(self.pos_grid, self.pos_grid, self.dim)
    grid = resize_bicubic(grid.astype(jnp.float32), (gh, gw),
                          offset=self.pos_offset)
    pos = jnp.concatenate(
        [pos[:, :1], grid.reshape(1, gh * gw, self.dim).astype(pos.dtype)], 1)
    x = jnp.concatenate([jnp.broadcast_to(cls, (b, 1, self.dim)), x], axis=1)
    x = x + pos
    norm = nn.LayerNorm(epsilon=self.eps, use_fast_variance=False, name="norm")
    last = self.depth if stop_after is None else min(stop_after, self.depth)
    if stop_after is not None and layers and max(layers) > last:
      raise ValueError(f"layers {tuple(layers)} need blocks after {last}")
    feats = {}
    for i in range(1, last + 1):
      x = Block(self.dim, self.heads, self.mlp_ratio, self.eps,
                self.layer_scale, name=f"block{i - 1}")(x)
      if i in layers:
        feats[f"block{i}"] = norm(x) if norm_intermediate else x
    final = norm(x) if last == self.depth else None
    return final, feats


_ORIGINAL_RENAMES = (
    ("norm1.", "norm1."), ("norm2.", "norm2."), ("attn.proj.", "attention.output.dense."),
    ("mlp.fc1.", "mlp.fc1."), ("mlp.fc2.", "mlp.fc2."),
)


def original_to_hf(sd: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
  """Facebook-research DINOv2 names (``blocks.i.attn.qkv``) -> HF names."""
  out = {}
  for k, v in sd.items():
    if k in ("cls_token", "pos_embed", "mask_token"):
      out[{"pos_embed": "embeddings.position_embeddings"}.get(
          k, f"embeddings.{k}")] = v
    elif k.startswith("patch_embed.proj."):
      out["embeddings.patch_embeddings.projection." + k.split(".")[-1]] = v
    elif k.startswith("norm."):
      out["layernorm." + k.split(".")[-1]] = v
    elif k.startswith("blocks."):
      _, i, rest = k.split(".", 2)
      pre = f"encoder.layer.{i}."
      if rest.startswith("attn.qkv."):
        kind = rest.split(".")[-1]
        for name, part in zip(("query", "key", "value"), np.split(v, 3, 0)):
          out[f"{pre}attention.attention.{name}.{kind}"] = part
      elif rest.startswith("ls1."):
        out[pre + "layer_scale1.lambda1"] = v
      elif rest.startswith("ls2."):
        out[pre + "layer_scale2.lambda1"] = v
      else:
        for src, dst in _ORIGINAL_RENAMES:
          if rest.startswith(src):
            out[pre + dst + rest[len(src):]] = v
  return out


# HF ``Dinov2Model`` name parts -> facebookresearch ones (``hf_to_original``).
_HF_TOP = {"embeddings.cls_token": "cls_token",
           "embeddings.mask_token": "mask_token",
           "embeddings.position_embeddings": "pos_embed"}
_HF_BLOCK = (("attention.output.dense.", "attn.proj."),
             ("layer_scale1.lambda1", "ls1.gamma"),
             ("layer_scale2.lambda1", "ls2.gamma"),
             ("norm1.", "norm1."), ("norm2.", "norm2."),
             ("mlp.fc1.", "mlp.fc1."), ("mlp.fc2.", "mlp.fc2."))

# Keys of a facebookresearch checkpoint the backbone does not use: DINOv2's
# mask token (masked-image training) and a classifier head.
ORIGINAL_IGNORED = ("mask_token", "head")


def is_hf_naming(state_dict: Mapping[str, Any]) -> bool:
  """Whether ``state_dict`` uses HF ``Dinov2Model`` names."""
  return any(k.startswith(("embeddings.", "encoder.layer.", "layernorm."))
             for k in state_dict)


def hf_to_original(sd: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
  """HF ``Dinov2Model`` names -> facebookresearch names (``original_to_hf``'s
  inverse: ``query``/``key``/``value`` stacked into ``attn.qkv``). Names it
  does not know are kept, so that a strict check reports them."""
  out: Dict[str, np.ndarray] = {}
  qkv: Dict[str, Dict[str, np.ndarray]] = {}
  proj = "embeddings.patch_embeddings.projection."
  for k, v in sd.items():
    if k in _HF_TOP:
      out[_HF_TOP[k]] = v
    elif k.startswith(proj):
      out["patch_embed.proj." + k[len(proj):]] = v
    elif k.startswith("layernorm."):
      out["norm." + k[len("layernorm."):]] = v
    elif k.startswith("encoder.layer."):
      i, rest = k[len("encoder.layer."):].split(".", 1)
      pre = f"blocks.{i}."
      if rest.startswith("attention.attention."):
        part, kind = rest[len("attention.attention."):].split(".", 1)
        qkv.setdefault(f"{pre}attn.qkv.{kind}", {})[part] = v
        continue
      for src, dst in _HF_BLOCK:
        if rest.startswith(src):
          out[pre + dst + rest[len(src):]] = v
          break
      else:
        out[k] = v
    else:
      out[k] = v
  for key, parts in qkv.items():
    if set(parts) == {"query", "key", "value"}:
      out[key] = np.concatenate([parts["query"], parts["key"],
                                 parts["value"]], 0)
    else:  # Reported by the strict check as a missing attn.qkv key.
      for part, v in parts.items():
        out[f"{key}.{part}"] = v
  return out


def original_shapes(module: "VisionTransformer") -> Dict[str, Tuple[int, ...]]:
  """Every facebookresearch (DINO / DINOv2) key of ``module`` and its shape.

  The layout of ``dino_vitb8_pretrain.pth`` and ``dinov2_vitb14_pretrain.pth``:
  ``cls_token``, ``pos_embed``, ``patch_embed.proj``, ``blocks.i.{norm1,
  attn.qkv, attn.proj, ls1.gamma, norm2, mlp.fc1, mlp.fc2, ls2.gamma}``
  (``ls*`` with layer scale only), ``norm``; Linear weights ``(out, in)``.
  """
  d, hid, p = module.dim, module.dim * module.mlp_ratio, module.patch
  out: Dict[str, Tuple[int, ...]] = {
      "cls_token": (1, 1, d), "pos_embed": (1, 1 + module.pos_grid ** 2, d),
      "patch_embed.proj.weight": (d, 3, p, p), "patch_embed.proj.bias": (d,)}
  for i in range(module.depth):
    pre = f"blocks.{i}."
    for name, w, b in (("norm1", None, (d,)), ("attn.qkv", (3 * d, d),
                                                 (3 * d,)),
                       ("attn.proj", (d, d), (d,)), ("norm2", None, (d,)),
                       ("mlp.fc1", (hid, d), (hid,)),
                       ("mlp.fc2", (d, hid), (d,))):
      out[f"{pre}{name}.weight"] = w or b
      out[f"{pre}{name}.bias"] = b
    if module.layer_scale:
      out[pre + "ls1.gamma"] = (d,)
      out[pre + "ls2.gamma"] = (d,)
  out["norm.weight"] = out["norm.bias"] = (d,)
  return out


def convert_original_weights(sd: Mapping[str, np.ndarray],
                             module: "VisionTransformer") -> Dict[str, Any]:
  """Flax variables of ``module`` from facebookresearch-named weights.

  Args:
    sd: the keys of ``original_shapes(module)`` (checked by the caller).
    module: the ``VisionTransformer`` they are for.

  Returns:
    ``{"params": ...}``.
  """
  f = lambda k: np.asarray(sd[k], np.float32)
  c = np.ascontiguousarray
  dense = lambda w, b: {"kernel": c(w.T), "bias": b}
  lnorm = lambda p: {"scale": f(p + ".weight"), "bias": f(p + ".bias")}
  params: Dict[str, Any] = {
      "patch_embed": {"kernel": c(f("patch_embed.proj.weight")
                                  .transpose(2, 3, 1, 0)),
                      "bias": f("patch_embed.proj.bias")},
      "cls_token": f("cls_token").reshape(1, 1, -1),
      "pos_embed": f("pos_embed"),
      "norm": lnorm("norm"),
  }
  for i in range(module.depth):
    pre = f"blocks.{i}."
    qw = np.split(f(pre + "attn.qkv.weight"), 3, 0)
    qb = np.split(f(pre + "attn.qkv.bias"), 3, 0)
    block = {
        "norm1": lnorm(pre + "norm1"),
        "attn": {name: dense(w, b) for name, w, b in
                 zip(("query", "key", "value"), qw, qb)},
        "norm2": lnorm(pre + "norm2"),
        "fc1": dense(f(pre + "mlp.fc1.weight"), f(pre + "mlp.fc1.bias")),
        "fc2": dense(f(pre + "mlp.fc2.weight"), f(pre + "mlp.fc2.bias")),
    }
    block["attn"]["out"] = dense(f(pre + "attn.proj.weight"),
                                 f(pre + "attn.proj.bias"))
    if module.layer_scale:
      block["ls1"] = f(pre + "ls1.gamma")
      block["ls2"] = f(pre + "ls2.gamma")
    params[f"block{i}"] = block
  return {"params": params}


def convert_hf_weights(state_dict: Mapping[str, np.ndarray], *,
                       depth: Optional[int] = None) -> Dict[str, Any]:
  """Flax variables from HF ``Dinov2Model`` (or original DINOv2) weights.

  Args:
    state_dict: torch-convention arrays (Linear weights ``(out, in)``), HF
      names with or without a ``backbone.``/``dinov2.`` prefix, or the
      facebook-research names (``blocks.i.attn.qkv.weight``, ...).
    depth: number of blocks (inferred when None).

  Returns:
    ``{"params": ...}`` for ``VisionTransformer``.
  """
  sd = {}
  for k, v in state_dict.items():
    for prefix in ("backbone.", "dinov2."):
      if k.startswith(prefix):
        k = k[len(prefix):]
    sd[k] = np.asarray(v, np.float32)
  if "pos_embed" in sd or any(k.startswith("blocks.") for k in sd):
    sd = original_to_hf(sd)
  if depth is None:
    depth = 1 + max(int(k.split(".")[2]) for k in sd
                    if k.startswith("encoder.layer."))
  c = np.ascontiguousarray
  dense = lambda p: {"kernel": c(sd[p + ".weight"].T), "bias": sd[p + ".bias"]}
  lnorm = lambda p: {"scale": sd[p + ".weight"], "bias": sd[p + ".bias"]}
  proj = "embeddings.patch_embeddings.projection"
  params: Dict[str, Any] = {
      "patch_embed": {"kernel": c(sd[proj + ".weight"].transpose(2, 3, 1, 0)),
                      "bias": sd[proj + ".bias"]},
      "cls_token": sd["embeddings.cls_token"].reshape(1, 1, -1),
      "pos_embed": sd["embeddings.position_embeddings"],
      "norm": lnorm("layernorm"),
  }
  for i in range(depth):
    pre = f"encoder.layer.{i}"
    att = f"{pre}.attention.attention"
    params[f"block{i}"] = {
        "norm1": lnorm(pre + ".norm1"),
        "attn": {"query": dense(att + ".query"), "key": dense(att + ".key"),
                 "value": dense(att + ".value"),
                 "out": dense(pre + ".attention.output.dense")},
        "ls1": sd[pre + ".layer_scale1.lambda1"],
        "norm2": lnorm(pre + ".norm2"),
        "fc1": dense(pre + ".mlp.fc1"),
        "fc2": dense(pre + ".mlp.fc2"),
        "ls2": sd[pre + ".layer_scale2.lambda1"],
    }
  return {"params": params}
