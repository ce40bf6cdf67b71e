r"""Benchmark: exact kNN of dicofun.ops.knn vs faiss and scikit-learn.

Each method runs in its own child process (so its peak RSS can be measured
in isolation) on the same random data (seeded, float32, N(0, 1)). Reported:
median wall time of ``--runs`` runs (ours: after one warm-up call that
compiles), queries/s, peak RSS of the child and its growth over the data
alone, and the fraction of queries whose k neighbour indices are identical to
faiss IndexFlatL2 (exact ties and float rounding may differ rarely).
``ours`` is dicofun's default on CPU (one JAX device per core, bank split by
rows over them, ``dicofun/cpu.py``); ``ours_1device`` is JAX's default single
CPU device; ``ours_sharded8`` forces 8 host devices.

Usage:
  python benchmarks/knn.py --case small            # 5,000 × 20,000, d=512
  python benchmarks/knn.py --case big              # 50,000 × 200,000
  python benchmarks/knn.py --case small --sharded8 # + bank on 8 fake devices

Prints a markdown table.

Speed rows (issue 16): ``--speed`` runs ours (the entry points' default:
``cpu.configure_cpu_devices()``, bank mesh when several devices; on CPU the
host-BLAS path) and faiss ``IndexFlatL2`` in ONE process, in turns (ours,
a 4096³ numpy GEMM probe — median of 5 —, faiss, ours, ...; medians), and writes rows
``knn_<case>_k<k>`` to benchmarks/results/speed.json with the achieved
GFLOP/s of the distance GEMM (2·Q·M·d over the whole search time) as a
fraction of the GEMM probe's rate measured in the same turns:
  python benchmarks/knn.py --case big --speed --ks 1,5 --runs 1
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

CASES = {"small": (5_000, 20_000, 512), "mid": (20_000, 100_000, 512),
         "big": (50_000, 200_000, 512)}
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _data(n_q: int, m: int, d: int, seed: int = 0):
  rng = np.random.default_rng(seed)
  bank = rng.standard_normal((m, d), dtype=np.float32)
  queries = rng.standard_normal((n_q, d), dtype=np.float32)
  return queries, bank


def _rss_mb() -> float:
  # ru_maxrss is in KiB on Linux.
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _child(args) -> None:
  """Runs one method and writes times, RSS and neighbours to ``args.out``."""
  n_q, m, d = args.n_q, args.m, args.d
  queries, bank = _data(n_q, m, d)
  base_rss = _rss_mb()
  method, k = args.child, args.k
  if method.startswith("ours"):
    if method == "ours":
      from dicofun import cpu  # pylint: disable=g-import-not-at-top
      cpu.configure_cpu_devices()  # dicofun's default: a device per core.
    import jax  # pylint: disable=g-import-not-at-top
    from dicofun import parallel  # pylint: disable=g-import-not-at-top
    from dicofun.ops import knn  # pylint: disable=g-import-not-at-top
    # The bank is split by rows over the devices whenever there are several.
    mesh = parallel.make_mesh() if jax.device_count() > 1 else None
    if method == "ours_sharded8":
      assert jax.device_count() == 8, jax.devices()
    if method == "ours_1device":
      assert jax.device_count() == 1, jax.devices()

    def run():
      return knn.knn(queries, bank, k=k, mesh=mesh)
    run()  # warm-up: compilation
  elif method == "faiss":
    import faiss  # pylint: disable=g-import-not-at-top

    def run():
      index = faiss.IndexFlatL2(d)
      index.add(bank)
      dist, idx = index.search(queries, k)
      return dist, idx
  elif method == "sklearn":
    from sklearn.neighbors import NearestNeighbors  # pylint: disable=g-import-not-at-top

    def run():
      nn = NearestNeighbors(n_neighbors=k, algorithm="brute").fit(bank)
      dist, idx = nn.kneighbors(queries)
      return dist ** 2, idx
  else:
    raise ValueError(method)
  times = []
  for _ in range(args.runs):
    t0 = time.perf_counter()
    dist, idx = run()
    times.append(time.perf_counter() - t0)
  np.save(args.out + ".idx.npy", np.asarray(idx, np.int64))
  with open(args.out, "w") as f:
    json.dump({"times": times, "rss_mb": _rss_mb(), "base_rss_mb": base_rss},
              f)


def _run_child(method: str, n_q: int, m: int, d: int, k: int, runs: int,
               tmp: str) -> dict:
  out = os.path.join(tmp, f"{method}_k{k}.json")
  env = dict(os.environ)
  env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
  env.pop("XLA_FLAGS", None)
  env.pop("DICOFUN_CPU_DEVICES", None)
  if method == "ours_sharded8":
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") +
                        " --xla_force_host_platform_device_count=8")
  cmd = [sys.executable, os.path.abspath(__file__), "--child", method,
         "--n_q", str(n_q), "--m", str(m), "--d", str(d), "--k", str(k),
         "--runs", str(runs), "--out", out]
  subprocess.run(cmd, env=env, check=True)
  with open(out) as f:
    res = json.load(f)
  res["idx"] = np.load(out + ".idx.npy")
  return res


def near_tie_gap(queries: np.ndarray, bank: np.ndarray, ours: np.ndarray,
                 ref: np.ndarray) -> float:
  """Largest relative gap between two answers' distances where they differ.

  For each query whose k neighbour indices differ, both answers' exact
  (float64) squared distances are sorted and compared position by position;
  the result is the largest ``|d_ours − d_ref| / d_ref``. A gap far below
  float32's resolution of the expanded distance (~1e-6 relative) means the
  two answers differ only in how near-ties were rounded, not in which
  points are nearest; 0.0 when every query agrees.
  """
  rows = np.flatnonzero(np.any(ours != ref, axis=1))
  gap = 0.0
  for i in rows:
    q = queries[i].astype(np.float64)
    d_o = np.sort(((bank[ours[i]].astype(np.float64) - q) ** 2).sum(-1))
    d_r = np.sort(((bank[ref[i]].astype(np.float64) - q) ** 2).sum(-1))
    gap = max(gap, float(np.max(np.abs(d_o - d_r) / np.maximum(d_r, 1e-30))))
  return gap


def _speed_rows(case: str, ks: list[int], runs: int,
                write: bool) -> list[dict]:
  """Ours vs faiss in this process, interleaved; rows for speed.json."""
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  import _speed  # pylint: disable=g-import-not-at-top
  from dicofun import cpu  # pylint: disable=g-import-not-at-top
  cpu.configure_cpu_devices()
  import faiss  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  from dicofun import parallel  # pylint: disable=g-import-not-at-top
  from dicofun.ops import knn  # pylint: disable=g-import-not-at-top
  n_q, m, d = CASES[case]
  queries, bank = _data(n_q, m, d)
  mesh = parallel.make_mesh() if jax.device_count() > 1 else None
  rng = np.random.default_rng(1)
  ga = rng.standard_normal((4096, 4096), dtype=np.float32)
  gb = rng.standard_normal((4096, 4096), dtype=np.float32)
  machine = _speed.machine()
  loads = [machine["load"]]
  rows = []
  flops = 2.0 * n_q * m * d
  for k in ks:
    def ours():
      return knn.knn(queries, bank, k=k, mesh=mesh)

    def peer():
      index = faiss.IndexFlatL2(d)
      index.add(bank)
      return index.search(queries, k)

    def gemm():
      # The median of 5 products: ours is one long call, i.e. an average
      # over this machine's minute-to-minute speed swings (±15 % on the
      # shared 2-core VMs here), so the probe it is compared with is a
      # typical product too, not the fastest of a few. Before faiss, so its
      # OpenMP threads' spin-wait after a search cannot slow the probe.
      ts = []
      for _ in range(5):
        t = time.perf_counter()
        _ = ga @ gb
        ts.append(time.perf_counter() - t)
      return float(np.median(ts))

    fns = {"ours": ours, "gemm": gemm, "faiss": peer}
    out = {}
    times = {n: [] for n in fns}
    for n, fn in fns.items():  # Warm-up (compilation; faiss/BLAS threads).
      if n == "ours" and case != "big":
        fn()
      elif n == "gemm":
        fn()
    for _ in range(runs):
      for n, fn in fns.items():
        t = time.perf_counter()
        res = fn()
        times[n].append(res if n == "gemm" else time.perf_counter() - t)
        if n != "gemm":
          out[n] = res
        loads.append(os.getloadavg()[0])
    med = {n: float(np.median(v)) for n, v in times.items()}
    gemm_gflops = 2.0 * 4096 ** 3 / med["gemm"] / 1e9
    ours_gflops = flops / med["ours"] / 1e9
    faiss_gflops = flops / med["faiss"] / 1e9
    i_o, i_f = np.asarray(out["ours"][1]), np.asarray(out["faiss"][1])
    differing = np.any(i_o != i_f, axis=1)
    identical = 1.0 - float(np.mean(differing))
    tie_gap = near_tie_gap(queries, bank, i_o, i_f)
    ratio = med["faiss"] / med["ours"]
    frac = ours_gflops / gemm_gflops
    rows.append({
        "benchmark": f"knn_{case}_k{k}",
        "peer": f"faiss {faiss.__version__} IndexFlatL2",
        "ours_over_peer": round(ratio, 3),
        "target": "≥ 1.0× faiss and ≥ 0.9 of the GEMM roofline",
        "met": bool(ratio >= 1.0 and frac >= 0.9),
        "roofline_fraction": round(frac, 3),
        "shape": f"{n_q}×{m}×{d}", "k": k, "runs": runs,
        "ours_s": round(med["ours"], 2), "faiss_s": round(med["faiss"], 2),
        "ours_gflops": round(ours_gflops, 1),
        "faiss_gflops": round(faiss_gflops, 1),
        "gemm_probe_gflops": round(gemm_gflops, 1),
        "identical_to_faiss": round(identical, 5),
        "queries_differing": int(np.sum(differing)),
        "max_rel_gap_where_differing": float(f"{tie_gap:.3g}"),
        "ours_backend": "host" if knn.use_host_blas(mesh) else "xla",
        "jax_devices": jax.device_count(),
        **machine, "load": round(max(loads), 2),
    })
    print(rows[-1], flush=True)
    if write:  # Row by row: a long run keeps what it measured.
      _speed.add_rows(rows[-1:])
  return rows


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--case", choices=sorted(CASES), default="small")
  p.add_argument("--ks", default=None,
                 help="comma-separated k values (default: small 1,5; big 1)")
  p.add_argument("--runs", type=int, default=3)
  p.add_argument("--methods", default="ours,ours_1device,faiss,sklearn")
  p.add_argument("--speed", action="store_true",
                 help="ours vs faiss interleaved in this process; write "
                      "speed.json rows")
  p.add_argument("--no_write", action="store_true")
  p.add_argument("--sharded8", action="store_true",
                 help="also run ours with the bank on 8 fake CPU devices")
  # Internal: child-process mode.
  p.add_argument("--child", default=None)
  p.add_argument("--n_q", type=int)
  p.add_argument("--m", type=int)
  p.add_argument("--d", type=int)
  p.add_argument("--k", type=int)
  p.add_argument("--out")
  args = p.parse_args()
  if args.child:
    _child(args)
    return
  if args.speed:
    ks = [int(v) for v in (args.ks or "1,5").split(",")]
    _speed_rows(args.case, ks, args.runs, write=not args.no_write)
    return
  n_q, m, d = CASES[args.case]
  ks = [int(v) for v in (args.ks or ("1,5" if args.case == "small" else "1")
                         ).split(",")]
  methods = args.methods.split(",")
  if args.sharded8 and "ours_sharded8" not in methods:
    methods.append("ours_sharded8")
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    for k in ks:
      res = {mth: _run_child(mth, n_q, m, d, k, args.runs, tmp)
             for mth in methods}
      ref_name = "faiss" if "faiss" in res else methods[0]
      ref = res[ref_name]["idx"]
      for mth in methods:
        r = res[mth]
        med = float(np.median(r["times"]))
        same = float(np.mean(np.all(r["idx"] == ref, axis=1)))
        rows.append((mth, k, med, n_q / med, r["rss_mb"],
                     r["rss_mb"] - r["base_rss_mb"], same))
  print(f"\n### Exact kNN: {n_q:,} queries × {m:,} bank rows, d={d} "
        f"(median of {args.runs} runs; identical = fraction of queries whose "
        f"k indices equal {ref_name}'s)\n")
  print("| method | k | median s | queries/s | peak RSS MB | RSS over data MB "
        "| identical |")
  print("|---|---|---|---|---|---|---|")
  for mth, k, med, qps, rss, extra, same in rows:
    print(f"| {mth} | {k} | {med:.3f} | {qps:,.0f} | {rss:,.0f} | "
          f"{extra:,.0f} | {same:.4f} |")


if __name__ == "__main__":
  main()
