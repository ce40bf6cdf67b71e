r"""Input pipeline alone (decode + resize + normalise) vs feature extraction.

On real images of a dataset (magnetic tile by default), in one run:

* decode + resize images/s of ``pipeline._load_one`` (what
  ``load_arrays``/feature extraction run per image) with 1 thread, with a
  thread pool and with a process pool of ``--workers``;
* the extraction rate of the backbone on the same images (features of
  ``--extract`` images through ``features.extract_records`` without the
  cache, after a compiling warm-up) and the forward alone on the decoded
  batch.

Target (issue 16): decode + resize ≥ 2× the extraction rate, so the
pipeline never bounds extraction. The row's ratio is the best pool's
images/s over extraction's; the roofline fraction is the forward's achieved
GFLOP/s (XLA's cost analysis) over ``roofline.py``'s GEMM rate.

Run:
  python benchmarks/decode_resize.py
  python benchmarks/decode_resize.py --images 64 --extract 16 --no_write
"""

from __future__ import annotations

import argparse
import concurrent.futures
import importlib.util
import os
import sys
import tempfile
import time

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, _HERE)

import _shared  # pylint: disable=g-import-not-at-top,wrong-import-position
import _speed  # pylint: disable=g-import-not-at-top,wrong-import-position

from dicofun import cpu  # pylint: disable=g-import-not-at-top,wrong-import-position

cpu.configure_cpu_devices()

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

from dicofun import features as features_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from dicofun import parallel  # pylint: disable=g-import-not-at-top,wrong-import-position
from dicofun import protocol  # pylint: disable=g-import-not-at-top,wrong-import-position
from dicofun.data import pipeline  # pylint: disable=g-import-not-at-top,wrong-import-position

DEFAULT_CONFIG = "configs/patchcore_magnetic_tile.py:backbone=dinov2_vits14"


def _decode(args):
  record, pre = args
  return pipeline._load_one(record, pre, True, False)[0]  # pylint: disable=protected-access


def _rate(records, pre, pool_cls, workers: int, repeats: int) -> float:
  """Median images/s of decoding ``records`` with a pool (None: serial)."""
  times = []
  items = [(r, pre) for r in records]
  for _ in range(repeats + 1):  # The first pass warms the page cache/pool.
    t = time.perf_counter()
    if pool_cls is None:
      for it in items:
        _decode(it)
    else:
      with pool_cls(workers) as pool:
        for _ in pool.map(_decode, items, chunksize=8
                          if pool_cls is concurrent.futures.ProcessPoolExecutor
                          else 1):
          pass
    times.append(time.perf_counter() - t)
  return len(records) / float(np.median(times[1:]))


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--config", default=DEFAULT_CONFIG)
  p.add_argument("--images", type=int, default=400)
  p.add_argument("--extract", type=int, default=64)
  p.add_argument("--workers", type=int, default=0,
                 help="pool size (default: the config's num_workers)")
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--no_write", action="store_true")
  args = p.parse_args()
  _shared.use_shared_data()
  path, _, arg = args.config.partition(":")
  spec = importlib.util.spec_from_file_location(
      "cfg", os.path.join(_speed.ROOT, path))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(arg or None)
  with tempfile.TemporaryDirectory() as workdir:
    data = protocol.prepare_data(config, workdir)
  records = (list(data.train) + list(data.test))[:args.images]
  backbone = features_lib.backbone_for(config)
  pre = pipeline.preprocess_for(config, mean=backbone.mean, std=backbone.std)
  workers = args.workers or int(config.dataset.num_workers)
  m = _speed.machine()
  sizes = [pipeline.read_image(r.image_path).shape[:2] for r in records[:50]]

  rates = {
      "serial": _rate(records, pre, None, 1, args.repeats),
      f"threads{workers}": _rate(records, pre,
                                 concurrent.futures.ThreadPoolExecutor,
                                 workers, args.repeats),
      f"processes{workers}": _rate(records, pre,
                                   concurrent.futures.ProcessPoolExecutor,
                                   workers, args.repeats),
  }

  ext = records[:args.extract]
  kw = dict(layout="patchcore", batch_size=config.backbone.batch_size,
            num_workers=workers, use_cache=False, desc="extract")
  features_lib.extract_records(backbone, ext, pre, **kw)  # Compile.
  t = time.perf_counter()
  features_lib.extract_records(backbone, ext, pre, **kw)
  extract_rate = len(ext) / (time.perf_counter() - t)

  # The forward alone on one decoded batch (no decoding).
  mesh = parallel.make_mesh()
  gbs = int(np.ceil(config.backbone.batch_size / mesh.devices.size)
            * mesh.devices.size)
  x = np.stack([_decode((r, pre)) for r in ext[:gbs]])
  fn = features_lib._compiled(backbone, "patchcore",  # pylint: disable=protected-access
                              int(config.backbone.vit_local_average))
  variables = jax.device_put(backbone.variables, parallel.replicated(mesh))
  xs = parallel.shard_batch(mesh, x)
  jax.block_until_ready(fn(variables, xs))
  times = []
  for _ in range(args.repeats):
    t = time.perf_counter()
    jax.block_until_ready(fn(variables, xs))
    times.append(time.perf_counter() - t)
  forward_rate = gbs / float(np.median(times))
  flops = None
  try:
    cost = fn.lower(variables, xs).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops = float(cost["flops"])
  except Exception:  # pylint: disable=broad-except
    pass
  roof = _speed.stored_roofline()  # This CPU's (roofline.py).
  gflops = flops * forward_rate / gbs / 1e9 if flops else None
  best_name = max((k for k in rates if k != "serial"), key=rates.get)
  ratio = rates[best_name] / extract_rate
  load = max(m["load"], os.getloadavg()[0])
  row = {
      "benchmark": "decode_resize",
      "peer": f"extraction ({backbone.name}, {config.dataset.image_size} px)",
      "ours_over_peer": round(ratio, 3),
      "target": "decode+resize ≥ 2× extraction images/s",
      "met": bool(ratio >= 2.0),
      "roofline_fraction": (round(gflops / roof, 3) if gflops and roof
                            else None),
      "images": f"{config.dataset.name}, {len(records)} files, "
                f"{min(s[1] for s in sizes)}–{max(s[1] for s in sizes)} px wide",
      **{f"decode_{k}_ips": round(v, 1) for k, v in rates.items()},
      "best_pool": best_name,
      "extract_ips": round(extract_rate, 2),
      "forward_ips": round(forward_rate, 2),
      "forward_gflops": round(gflops, 1) if gflops else None,
      "jax_devices": jax.device_count(),
      **m, "load": round(load, 2),
  }
  for k, v in row.items():
    print(f"{k}: {v}")
  if not args.no_write:
    _speed.add_rows([row])


if __name__ == "__main__":
  main()
