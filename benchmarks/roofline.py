r"""This machine's limits: float32 GEMM rate (BLAS and XLA) and memory bandwidth.

Every speed row in ``benchmarks/results/speed.json`` states its kernel's
fraction of the GEMM rate measured here (the larger of numpy/BLAS and XLA, in
the same run), so a ratio against a peer can be read next to what the
machine allows.

* numpy: ``a @ b`` of two (n, n) float32 arrays (the BLAS numpy links,
  OpenBLAS in the wheels; all cores).
* XLA: the same product in one jitted function on one JAX CPU device, and
  split by rows of ``a`` over the ``data`` devices when dicofun's default
  gives more than one (``dicofun/cpu.py``).
* Memory: ``np.copyto`` of a 512 MiB float32 array (read + write bytes) and
  a STREAM-style triad ``a = b + s·c`` in two in-place passes (5 array
  passes counted).

Medians of ``--repeats`` after a warm-up. Run:
  python benchmarks/roofline.py            # 4096³, median of 5
  python benchmarks/roofline.py --n 1024 --repeats 3 --no_write   # quick
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, _HERE)  # benchmarks/_speed.py, when run as a script.

import _speed  # pylint: disable=g-import-not-at-top,wrong-import-position

from dicofun import cpu  # pylint: disable=g-import-not-at-top,wrong-import-position

cpu.configure_cpu_devices()

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

from dicofun import parallel  # pylint: disable=g-import-not-at-top,wrong-import-position


def _median_time(fn, repeats: int) -> float:
  fn()  # Warm-up (compilation, page faults).
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t)
  return statistics.median(times)


def interleaved_times(fns: dict, repeats: int,
                      loads: list | None = None,
                      settle_s: float = 0.5) -> dict[str, list[float]]:
  """Seconds of each call of each function, timed in turns (a, b, a, b, ...).

  On a machine shared with other jobs, turns make load changes hit every
  contender alike instead of whichever ran during a busy minute. With
  ``loads``, the 1-minute load average after each call is appended to it.
  Each call starts ``settle_s`` after the previous one ended: the thread
  pools of OpenBLAS and onnxruntime spin for a while after their work, and
  would otherwise take cores from whichever contender runs next (measured:
  the Lite0 forward timed right after the GEMM probe ran 0.8× as fast).
  """
  for fn in fns.values():
    fn()  # Warm-up (compilation, page faults).
  times = {k: [] for k in fns}
  for _ in range(repeats):
    for k, fn in fns.items():
      time.sleep(settle_s)
      t = time.perf_counter()
      fn()
      times[k].append(time.perf_counter() - t)
      if loads is not None:
        loads.append(os.getloadavg()[0])
  return times


def interleaved_medians(fns: dict, repeats: int,
                        loads: list | None = None,
                        settle_s: float = 0.5) -> dict[str, float]:
  """Median seconds of each function over ``interleaved_times``' turns."""
  return medians(interleaved_times(fns, repeats, loads, settle_s))


def medians(times: dict[str, list[float]]) -> dict[str, float]:
  """Median of each contender's ``interleaved_times`` calls."""
  return {k: float(statistics.median(v)) for k, v in times.items()}


def turn_ratio_quartiles(times: dict[str, list[float]], slow: str,
                         fast: str) -> list[float]:
  """25th, 50th and 75th percentile of ``times[slow][i] / times[fast][i]``.

  The ratio of two contenders' calls in the same turn (seconds apart), so
  the spread shows how far this machine's speed swings between turns move
  a speed ratio; a ratio > 1 means ``fast`` was faster.
  """
  r = np.asarray(times[slow]) / np.asarray(times[fast])
  return [round(float(v), 3) for v in np.percentile(r, [25, 50, 75])]


def gemm_rates(n: int, repeats: int) -> dict[str, float]:
  """GFLOP/s of an (n, n) × (n, n) float32 product: numpy, XLA 1 device, XLA split."""
  rng = np.random.default_rng(0)
  a = rng.standard_normal((n, n), dtype=np.float32)
  b = rng.standard_normal((n, n), dtype=np.float32)
  flops = 2.0 * n ** 3
  mm = jax.jit(lambda x, y: jnp.dot(x, y,
                                    precision=jax.lax.Precision.HIGHEST))
  dev0 = jax.devices()[0]
  ja, jb = jax.device_put(a, dev0), jax.device_put(b, dev0)
  fns = {"numpy_gflops": lambda: a @ b,
         "xla_1device_gflops": lambda: mm(ja, jb).block_until_ready()}
  ndev = jax.device_count()
  if ndev > 1 and n % ndev == 0:
    mesh = parallel.make_mesh()
    sa = jax.device_put(a, parallel.data_sharding(mesh, 2))
    sb = jax.device_put(b, parallel.replicated(mesh))
    fns[f"xla_{ndev}devices_gflops"] = (
        lambda: mm(sa, sb).block_until_ready())
  return {k: flops / t / 1e9
          for k, t in interleaved_medians(fns, repeats).items()}


def bandwidth(mib: int, repeats: int) -> dict[str, float]:
  """GB/s of a large copy (2 passes) and an in-place triad (5 passes)."""
  n = mib * 1024 * 1024 // 4
  b = np.ones(n, np.float32)
  c = np.full(n, 2.0, np.float32)
  a = np.empty_like(b)
  nbytes = b.nbytes

  def triad():
    np.multiply(c, np.float32(3.0), out=a)
    np.add(a, b, out=a)

  return {
      "copy_gbs": 2 * nbytes / _median_time(lambda: np.copyto(a, b),
                                            repeats) / 1e9,
      "triad_gbs": 5 * nbytes / _median_time(triad, repeats) / 1e9,
  }


def measure(n: int = 4096, repeats: int = 5, mib: int = 512) -> dict:
  """The roofline row (not yet stamped with commit/command)."""
  m = _speed.machine()
  rates = gemm_rates(n, repeats)
  bw = bandwidth(mib, repeats)
  xla = max(v for k, v in rates.items() if k.startswith("xla"))
  roof = max(rates.values())
  row = {
      "benchmark": "roofline",
      "peer": "numpy/BLAS sgemm",
      # XLA's best GEMM over the BLAS one: < 1 means a host-BLAS path could
      # beat XLA on this CPU.
      "ours_over_peer": round(xla / rates["numpy_gflops"], 3),
      "roofline_fraction": round(xla / roof, 3),
      "gemm_n": n,
      "roofline_gflops": round(roof, 1),
      **{k: round(v, 1) for k, v in rates.items()},
      **{k: round(v, 2) for k, v in bw.items()},
      "jax_devices": jax.device_count(),
      **m,
  }
  row["load"] = round(max(m["load"], os.getloadavg()[0]), 2)
  return row


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--n", type=int, default=4096)
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--mib", type=int, default=512)
  p.add_argument("--no_write", action="store_true")
  args = p.parse_args()
  row = measure(args.n, args.repeats, args.mib)
  for k, v in row.items():
    print(f"{k}: {v}")
  if not args.no_write:
    _speed.add_rows([row])


if __name__ == "__main__":
  main()
