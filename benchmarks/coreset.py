r"""Coreset speed: today's loop vs the one before issue 16, same features, same run.

The features are PatchCore's training patches of a real run config (cached
by ``dicofun.features``; magnetic tile, DINOv2-S by default). Timed in turns
(old, new, approximate, old, ...; medians), so machine load hits all alike:

* ``old``: the loop as it was at commit a687557 (one jitted ``fori_loop`` on
  one device, copied below verbatim);
* ``loop``: ``greedy_coreset(impl="loop")``, the jitted loop in segments
  with progress, rows split over the ``data`` devices when there are several
  (the default before the rounds);
* ``new``: ``greedy_coreset`` as ``patchcore.fit`` calls it (``impl="auto"``:
  the exact greedy in rounds over the farthest rows on a CPU-only run);
* ``approximate``: ``method="approximate"`` (official PatchCore start), as
  ``new``.

Reported: seconds, the coverage radius of each selection in the full feature
space (``coreset.coverage_radius``), whether old and new picked the same
rows (they may part at a float near-tie; the radius is the criterion), and
the roofline fraction: the exact greedy's N × M distance work (2 N M d FLOP)
per second of ``new`` over ``roofline.py``'s measured GEMM rate — the rounds
turn the loop's memory-bound row reads into GEMMs, so their limit is the
GEMM rate (the loop's achieved bandwidth is reported as ``loop_gbs``).

Run:
  python benchmarks/coreset.py                      # magnetic tile, 1 %
  python benchmarks/coreset.py --synthetic 20000 --no_write   # quick
  python benchmarks/coreset.py --benchmark coreset_lite0_256 --repeats 1 \
      --config configs/patchcore_magnetic_tile.py:image_size=256 \
      --fraction 0.02                               # PatchCore's 256-px bank
"""

from __future__ import annotations

import argparse
import functools
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
from jax import lax  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

from dicofun import features as features_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from dicofun import parallel  # pylint: disable=g-import-not-at-top,wrong-import-position
from dicofun import protocol  # pylint: disable=g-import-not-at-top,wrong-import-position
from dicofun.ops import coreset  # pylint: disable=g-import-not-at-top,wrong-import-position

DEFAULT_CONFIG = ("configs/patchcore_magnetic_tile.py:backbone=dinov2_vits14,"
                  "norm=1,local_average=1")


# ---- The implementation before issue 16 (commit a687557), verbatim. ----
@functools.partial(jax.jit, static_argnames=("num",))
def _old_greedy(z: jax.Array, first: jax.Array, *, num: int) -> jax.Array:
  sq = jnp.sum(z * z, axis=1)

  def dist_to(i):
    c = z[i]
    d = sq - 2.0 * jnp.dot(z, c, precision=lax.Precision.HIGHEST) + sq[i]
    return jnp.maximum(d, 0.0)

  def body(t, carry):
    min_d, sel, cur = carry
    sel = sel.at[t].set(cur)
    min_d = jnp.minimum(min_d, dist_to(cur))
    min_d = min_d.at[cur].set(-1.0)
    return min_d, sel, jnp.argmax(min_d).astype(jnp.int32)

  init = (jnp.full(z.shape[:1], jnp.inf, jnp.float32),
          jnp.zeros((num,), jnp.int32), first.astype(jnp.int32))
  _, sel, _ = lax.fori_loop(0, num, body, init)
  return sel


def old_greedy_coreset(x, *, num, projection_dim, seed):
  first = int(np.random.default_rng(seed).integers(x.shape[0]))
  z = coreset.project(x, projection_dim=projection_dim, seed=seed)
  return np.asarray(_old_greedy(z, jnp.asarray(first, jnp.int32),
                                num=num)).astype(np.int64)
# ----


def _features(spec: str, synthetic: int) -> tuple[np.ndarray, str]:
  if synthetic:
    # Clustered data of a bank's shape (not for the reported row).
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(64, 384)).astype(np.float32) * 4
    x = centres[rng.integers(64, size=synthetic)] + rng.normal(
        size=(synthetic, 384)).astype(np.float32)
    return x, f"synthetic clustered {synthetic} × 384"
  _shared.use_shared_data()
  path, _, arg = spec.partition(":")
  mod_spec = importlib.util.spec_from_file_location(
      "cfg", os.path.join(_speed.ROOT, path))
  module = importlib.util.module_from_spec(mod_spec)
  mod_spec.loader.exec_module(module)
  config = module.get_config(arg or None)
  with tempfile.TemporaryDirectory() as workdir:
    data = protocol.prepare_data(config, workdir)
    feats = features_lib.load_features(config, data.train, layout="patchcore")
  n, h, w, c = feats.shape
  return (feats.reshape(n * h * w, c).astype(np.float32),
          f"{config.dataset.name} train, {config.backbone.name} patches "
          f"({n} images × {h}×{w})")


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--config", default=DEFAULT_CONFIG)
  p.add_argument("--fraction", type=float, default=0.01)
  p.add_argument("--projection_dim", type=int, default=128)
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--synthetic", type=int, default=0,
                 help="rows of clustered random data instead of --config")
  p.add_argument("--benchmark", default="coreset",
                 help="row name in speed.json")
  p.add_argument("--skip_old", action="store_true",
                 help="leave out the pre-issue-16 loop (same code as loop "
                      "on one device)")
  p.add_argument("--no_write", action="store_true")
  args = p.parse_args()
  x, what = _features(args.config, args.synthetic)
  n, dim = x.shape
  num = max(1, int(n * args.fraction))
  mesh = parallel.make_mesh() if jax.device_count() > 1 else None
  kw = dict(num=num, projection_dim=args.projection_dim, seed=0)
  runs = {
      "old": lambda: old_greedy_coreset(x, **kw),
      "loop": lambda: coreset.greedy_coreset(x, mesh=mesh, impl="loop", **kw),
      "new": lambda: coreset.greedy_coreset(x, mesh=mesh, **kw),
      "approximate": lambda: coreset.greedy_coreset(
          x, mesh=mesh, method="approximate", **kw),
  }
  if args.skip_old:
    del runs["old"]
  base = "loop" if args.skip_old else "old"
  m = _speed.machine()
  sel = {}
  if args.repeats > 1:
    sel = {k: fn() for k, fn in runs.items()}  # Warm-up: compilation.
  # (One turn, for a long case: the ~1 s of compilation is in its time.)
  times = {k: [] for k in runs}
  for _ in range(args.repeats):
    for k, fn in runs.items():
      t = time.perf_counter()
      sel[k] = fn()
      times[k].append(time.perf_counter() - t)
      print(f"{k}: {times[k][-1]:.1f} s", flush=True)
  load = max(m["load"], os.getloadavg()[0])
  med = {k: float(np.median(v)) for k, v in times.items()}
  radius = {k: coreset.coverage_radius(x, s, mesh=mesh) for k, s in sel.items()}
  zdim = args.projection_dim if 0 < args.projection_dim < dim else dim
  gbs = n * zdim * 4 * num / med["loop"] / 1e9
  gflops = 2.0 * n * num * zdim / med["new"] / 1e9
  roof = _speed.stored_roofline()  # This CPU's (roofline.py).
  ratio = med[base] / med["new"]
  same = bool(np.array_equal(sel[base], sel["new"]))
  first_diff = (None if same else
                int(np.argmax(np.asarray(sel[base]) != np.asarray(sel["new"]))))
  peer = ("ours before issue 16 (one device, one loop)" if base == "old" else
          "ours, impl=loop (the jitted loop, rows over the data devices)")
  row = {
      "benchmark": args.benchmark,
      "peer": peer,
      "ours_over_peer": round(ratio, 3),
      "target": "≥ 2× at equal coverage radius",
      "met": bool(ratio >= 2.0 and radius["new"] <= radius[base] * 1.0001),
      "roofline_fraction": round(gflops / roof, 3) if roof else None,
      "features": what, "rows": n, "dim": dim, "picks": num,
      **{f"{k}_s": round(v, 2) for k, v in med.items()},
      **{f"{k}_over_{base}": round(med[base] / v, 3)
         for k, v in med.items() if k != base},
      **{f"radius_{k}": round(v, 4) for k, v in radius.items()},
      f"same_picks_{base}_new": same,
      "first_different_pick": first_diff,
      "distance_gflops_new": round(gflops, 1),
      "loop_gbs": round(gbs, 2),
      "jax_devices": jax.device_count(),
      **m, "load": round(load, 2),
  }
  for k, v in row.items():
    print(f"{k}: {v}")
  if not args.no_write:
    _speed.add_rows([row])


if __name__ == "__main__":
  main()
