"""Sharded-bank kNN and batch placement on 8 fake CPU devices.

The device count is fixed when JAX starts, so the check runs in a child
process with ``--xla_force_host_platform_device_count=8`` set before JAX is
imported.
"""

import os
import subprocess
import sys
import textwrap

import pytest

from dicofun import parallel

_SCRIPT = textwrap.dedent("""
    import os
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               " --xla_force_host_platform_device_count=8")
    os.environ["JAX_PLATFORMS"] = "cpu"
    import jax
    import numpy as np
    from jax.sharding import PartitionSpec as P
    from dicofun import parallel
    from dicofun.ops import knn

    assert jax.device_count() == 8, jax.devices()
    mesh = parallel.make_mesh()
    assert mesh.axis_names == ("data",) and mesh.devices.size == 8

    rng = np.random.default_rng(0)
    for n_q, m, k, metric in [(70, 1001, 1, "l2"), (33, 250, 4, "cosine"),
                              (20, 9, 3, "l2")]:
      q = rng.normal(size=(n_q, 12)).astype(np.float32)
      b = rng.normal(size=(m, 12)).astype(np.float32)
      d1, i1 = knn.knn(q, b, k=k, metric=metric, bank_chunk=64,
                       query_chunk=32)
      # The sharded XLA path (a CPU-only run would otherwise take the
      # host-BLAS path, which ignores the mesh) against the default.
      d8, i8 = knn.knn(q, b, k=k, metric=metric, bank_chunk=64,
                       query_chunk=32, mesh=mesh, backend="xla")
      np.testing.assert_array_equal(i1, i8)
      np.testing.assert_allclose(d1, d8, rtol=1e-5, atol=1e-6)
      dd = ((q[:, None].astype(np.float64) - b[None]) ** 2).sum(-1)
      if metric == "l2":
        np.testing.assert_array_equal(
            i8, np.argsort(dd, axis=1, kind="stable")[:, :k])
    # Exact ties spread over shards: lower index must win, as on 1 device.
    base = rng.integers(-2, 3, size=(5, 3)).astype(np.float32)
    bank = np.tile(base, (40, 1))
    q = rng.integers(-2, 3, size=(16, 3)).astype(np.float32)
    _, i1 = knn.knn(q, bank, k=3, bank_chunk=8)
    _, i8 = knn.knn(q, bank, k=3, bank_chunk=8, mesh=mesh, backend="xla")
    np.testing.assert_array_equal(i1, i8)
    assert (i8 < 15).all()

    # shard_batch: a host batch split over the 8 devices along axis 0.
    x = np.arange(16 * 3, dtype=np.float32).reshape(16, 3)
    batch = parallel.shard_batch(mesh, {"x": x, "y": np.arange(16)})
    assert batch["x"].shape == (16, 3)
    assert batch["x"].sharding.spec == P("data", None)
    assert len(batch["x"].addressable_shards) == 8
    assert batch["x"].addressable_shards[1].data.shape == (2, 3)
    np.testing.assert_array_equal(parallel.gather_to_host(batch["x"]), x)
    np.testing.assert_array_equal(parallel.gather_to_host(batch["y"]),
                                  np.arange(16))
    s = jax.jit(lambda v: (v * 2).sum())(batch["x"])
    assert float(s) == float(x.sum() * 2)
    padded, n = parallel.pad_to_multiple(np.ones((13, 2)), 8)
    assert padded.shape == (16, 2) and n == 13
    r = jax.device_put(np.ones(4), parallel.replicated(mesh))
    assert r.sharding.is_fully_replicated
    assert parallel.is_main_process()
    assert parallel.maybe_initialize_distributed() is False
    print("MULTIDEVICE_OK")
""")


def test_sharded_knn_and_shard_batch_on_8_devices():
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ)
  env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
  for var in ("DICOFUN_COORDINATOR", "DICOFUN_NUM_PROCESSES",
              "DICOFUN_PROCESS_ID", "DICOFUN_DISTRIBUTED"):
    env.pop(var, None)
  proc = subprocess.run([sys.executable, "-c", _SCRIPT], env=env, cwd=root,
                        capture_output=True, text=True, timeout=300,
                        check=False)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  assert "MULTIDEVICE_OK" in proc.stdout


def test_maybe_initialize_distributed_config(monkeypatch):
  for var in ("DICOFUN_COORDINATOR", "DICOFUN_NUM_PROCESSES",
              "DICOFUN_PROCESS_ID", "DICOFUN_DISTRIBUTED"):
    monkeypatch.delenv(var, raising=False)
  assert parallel.maybe_initialize_distributed() is False  # nothing set
  monkeypatch.setenv("DICOFUN_COORDINATOR", "localhost:1234")
  with pytest.raises(ValueError, match="NUM_PROCESSES"):
    parallel.maybe_initialize_distributed()
  assert parallel.is_main_process()
