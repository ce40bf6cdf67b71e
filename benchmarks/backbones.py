"""Feature-extraction throughput and peak memory of the frozen backbones.

Each measurement runs in its own child process so that ``ru_maxrss`` (peak
resident memory, which XLA allocations count towards) belongs to one model.
Throughput is the median over ``--repeats`` timed batches after a warm-up
(compile) call; DINOv2 is also timed with onnxruntime on the packaged ONNX
graph cut at the backbone's final LayerNorm, in the same run, and the ratio
ours / onnxruntime is reported.

Run:
  python benchmarks/backbones.py --batch 16 --repeats 5
Prints a markdown table.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags

# Runnable from a source checkout without installing the package.

FLAGS = flags.FLAGS
flags.DEFINE_integer("batch", 16, "Images per batch.")
flags.DEFINE_integer("size", 224, "Input side.")
flags.DEFINE_integer("repeats", 5, "Timed batches (median reported).")
flags.DEFINE_string("one", "", "Internal: run one measurement and print JSON.")

# (row label, backbone name or "onnxruntime", ViT layer, DICOFUN_CPU_DEVICES)
# "" = dicofun's default (one CPU device per core, batch split over them,
# dicofun/cpu.py); "1" = JAX's default single CPU device.
_RUNS = (
    ("efficientnet_lite0", "efficientnet_lite0", None, ""),
    ("efficientnet_lite0, 1 CPU device", "efficientnet_lite0", None, "1"),
    ("efficientnet_lite2", "efficientnet_lite2", None, ""),
    ("dinov2_vits14 layer 8", "dinov2_vits14", 8, ""),
    ("dinov2_vits14 layer 12", "dinov2_vits14", 12, ""),
    ("dinov2_vits14 layer 12, 1 CPU device", "dinov2_vits14", 12, "1"),
    ("onnxruntime dinov2 (to final LN)", "onnxruntime", 12, ""),
)


def _peak_mib() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _measure(fn, x, repeats: int) -> float:
  fn(x)  # Warm-up: compile / session init.
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    fn(x)
    times.append(time.perf_counter() - t)
  return x.shape[0] / statistics.median(times)


def _run_one(spec: str) -> dict:
  import numpy as np  # pylint: disable=g-import-not-at-top
  name, layer = spec.split(":")
  layer = int(layer) if layer != "None" else None
  rng = np.random.default_rng(0)
  b, s = FLAGS.batch, FLAGS.size
  if name == "onnxruntime":
    import onnx  # pylint: disable=g-import-not-at-top
    import onnxruntime as ort  # pylint: disable=g-import-not-at-top
    from dicofun.models import weights  # pylint: disable=g-import-not-at-top
    src = weights.packaged_weights_path("dinov2_vits14")
    with tempfile.TemporaryDirectory() as tmp:
      cut = os.path.join(tmp, "backbone.onnx")
      onnx.utils.extract_model(src, cut, ["input_image"],
                               ["/backbone/layernorm/Add_1_output_0"])
      sess = ort.InferenceSession(cut, providers=["CPUExecutionProvider"])
    x = rng.normal(size=(b, 3, s, s)).astype(np.float32)
    ips = _measure(lambda a: sess.run(None, {"input_image": a}), x,
                   FLAGS.repeats)
  else:
    from dicofun import cpu  # pylint: disable=g-import-not-at-top
    cpu.configure_cpu_devices()  # Before jax is imported.
    import jax  # pylint: disable=g-import-not-at-top
    from dicofun import parallel  # pylint: disable=g-import-not-at-top
    from dicofun.models import registry  # pylint: disable=g-import-not-at-top
    bb = registry.get_backbone(name, layer=layer)
    mesh = parallel.make_mesh()
    fn = jax.jit(bb.apply_features)
    variables = jax.device_put(bb.variables, parallel.replicated(mesh))
    x = rng.normal(size=(b, s, s, 3)).astype(np.float32)
    # The batch split over the mesh's data axis, as features.py does it.
    ips = _measure(lambda a: jax.block_until_ready(
        fn(variables, parallel.shard_batch(mesh, a))), x, FLAGS.repeats)
    return {"images_per_s": ips, "peak_rss_mib": _peak_mib(),
            "devices": jax.device_count()}
  return {"images_per_s": ips, "peak_rss_mib": _peak_mib()}


def main(argv):
  del argv
  if FLAGS.one:
    print(json.dumps(_run_one(FLAGS.one)))
    return
  rows = []
  for label, name, layer, devices in _RUNS:
    cmd = [sys.executable, os.path.abspath(__file__), f"--one={name}:{layer}",
           f"--batch={FLAGS.batch}", f"--size={FLAGS.size}",
           f"--repeats={FLAGS.repeats}"]
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)
    if devices:
      env["DICOFUN_CPU_DEVICES"] = devices
    else:
      env.pop("DICOFUN_CPU_DEVICES", None)
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode:
      raise RuntimeError(f"{label} failed:\n{out.stderr[-3000:]}")
    rows.append((label, name, layer, json.loads(out.stdout.splitlines()[-1])))
  ort_ips = next(r[3]["images_per_s"] for r in rows if r[1] == "onnxruntime")
  lines = [f"batch {FLAGS.batch}, {FLAGS.size}×{FLAGS.size}, median of "
           f"{FLAGS.repeats} batches after warm-up; peak RSS per child process",
           "",
           "| backbone | JAX devices | images/s | vs onnxruntime (DINOv2) | peak RSS (MiB) |",
           "|---|---|---|---|---|"]
  for label, name, _, r in rows:
    ratio = (f"{r['images_per_s'] / ort_ips:.2f}"
             if name in ("dinov2_vits14", "onnxruntime") else "")
    lines.append(f"| {label} | {r.get('devices', '—')} | "
                 f"{r['images_per_s']:.1f} | {ratio} | "
                 f"{r['peak_rss_mib']:.0f} |")
  sys.stdout.write("\n".join(lines) + "\n")


if __name__ == "__main__":
  app.run(main)
