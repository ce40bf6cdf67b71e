"""Device meshes, batch placement and multi-process setup.

dicofun parallelises over one mesh axis, ``data``, that spans every device of
every process. Batches are split over that axis (each process supplies its
host-local shard), parameters and memory banks are either replicated or, for
large banks, split by rows over the same axis (see ``dicofun.ops.knn``).
There is no ``pmap``: everything is ``jax.jit`` / ``shard_map`` with
``NamedSharding``.

Multi-process runs are configured by environment variables (so the same
command line works on one machine and on a cluster):

* ``DICOFUN_COORDINATOR`` (``host:port``), ``DICOFUN_NUM_PROCESSES``,
  ``DICOFUN_PROCESS_ID``: explicit ``jax.distributed.initialize`` arguments.
* ``DICOFUN_DISTRIBUTED=1``: call ``jax.distributed.initialize()`` with no
  arguments and let JAX detect the cluster (Cloud TPU, SLURM, ...).

With none of them set, ``maybe_initialize_distributed`` does nothing and the
run is single-process.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Optional, Sequence, TypeVar, Union

from absl import logging
import jax
from jax.experimental import multihost_utils
import numpy as np

Mesh = jax.sharding.Mesh
NamedSharding = jax.sharding.NamedSharding
P = jax.sharding.PartitionSpec

DATA_AXIS = "data"
T = TypeVar("T")

_initialized = False


def maybe_initialize_distributed(
    *, coordinator_address: Optional[str] = None,
    num_processes: Optional[int] = None,
    process_id: Optional[int] = None) -> bool:
  """Initialises multi-process JAX when configured; otherwise does nothing.

  Arguments win over the environment variables ``DICOFUN_COORDINATOR``,
  ``DICOFUN_NUM_PROCESSES`` and ``DICOFUN_PROCESS_ID``. With
  ``DICOFUN_DISTRIBUTED=1`` and no explicit coordinator, JAX's own cluster
  detection is used (``jax.distributed.initialize()`` without arguments).
  Safe to call more than once: later calls are no-ops.

  Args:
    coordinator_address: ``host:port`` of process 0.
    num_processes: total number of processes.
    process_id: this process's index.

  Returns:
    True if the distributed runtime is (now) initialised.
  """
  global _initialized
  if _initialized or _jax_distributed_initialized():
    _initialized = True
    return True
  env = os.environ
  coordinator_address = coordinator_address or env.get("DICOFUN_COORDINATOR")
  if num_processes is None and env.get("DICOFUN_NUM_PROCESSES"):
    num_processes = int(env["DICOFUN_NUM_PROCESSES"])
  if process_id is None and env.get("DICOFUN_PROCESS_ID"):
    process_id = int(env["DICOFUN_PROCESS_ID"])
  auto = env.get("DICOFUN_DISTRIBUTED", "").strip().lower() in (
      "1", "true", "yes")
  if coordinator_address or auto:
    _enable_cpu_collectives()
  if coordinator_address:
    if num_processes is None or process_id is None:
      raise ValueError(
          "DICOFUN_COORDINATOR is set but DICOFUN_NUM_PROCESSES / "
          "DICOFUN_PROCESS_ID are not (or pass them as arguments).")
    logging.info("Initialising JAX distributed: coordinator %s, process "
                 "%d of %d", coordinator_address, process_id, num_processes)
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes,
                               process_id=process_id)
  elif auto:
    logging.info("Initialising JAX distributed with cluster auto-detection")
    jax.distributed.initialize()
  else:
    return False
  _initialized = True
  logging.info("Process %d of %d; %d local / %d global devices",
               jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count())
  return True


def _enable_cpu_collectives() -> None:
  """Cross-process collectives on CPU devices go through gloo.

  Without it a multi-process CPU run (tests, a CPU cluster) fails on the
  first all-gather; GPU/TPU backends ignore the setting.
  """
  try:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  except (AttributeError, ValueError) as e:  # Older/newer jax without it.
    logging.warning("Could not select gloo CPU collectives: %s", e)


def _jax_distributed_initialized() -> bool:
  fn = getattr(jax.distributed, "is_initialized", None)
  try:
    return bool(fn()) if fn is not None else False
  except Exception:  # pylint: disable=broad-except
    return False


def process_index() -> int:
  """This process's index (0 on a single machine)."""
  return jax.process_index()


def is_main_process() -> bool:
  """True on process 0 (the one that writes files and logs results)."""
  return jax.process_index() == 0


def main_process_first(fn: Callable[[], T], *, name: str) -> T:
  """Runs ``fn`` on process 0 first, then on the others.

  For work that writes files every process then reads (generating the
  synthetic dataset): process 0 writes, the others wait at a barrier and then
  find its output on a shared filesystem (or, without one, write their own
  identical copy). With one process this is just ``fn()``.
  """
  if jax.process_count() == 1:
    return fn()
  if jax.process_index() == 0:
    out = fn()
    multihost_utils.sync_global_devices(name)
    return out
  multihost_utils.sync_global_devices(name)
  return fn()


def make_mesh(axis: str = DATA_AXIS,
              devices: Optional[Sequence[Any]] = None) -> Mesh:
  """A 1-D mesh over ``devices`` (default: all devices of all processes).

  Args:
    axis: the mesh axis name.
    devices: devices to use, in order; default ``jax.devices()``.

  Returns:
    A ``Mesh`` with one axis named ``axis``.
  """
  devs = list(jax.devices() if devices is None else devices)
  if not devs:
    raise ValueError("make_mesh needs at least one device")
  return Mesh(np.asarray(devs, dtype=object), (axis,))


def data_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
  """Sharding that splits axis 0 over ``data`` and replicates the rest."""
  if ndim < 1:
    raise ValueError(f"data_sharding needs ndim >= 1, got {ndim}")
  return NamedSharding(mesh, P(mesh.axis_names[0], *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
  """Sharding that keeps a full copy on every device of ``mesh``."""
  return NamedSharding(mesh, P())


Batch = Union[np.ndarray, jax.Array, dict]


def shard_batch(mesh: Mesh, batch: Batch, *,
                global_batch: Optional[int] = None) -> Batch:
  """Places host-local batch shards into global arrays split over ``data``.

  Each process passes its own slice of the global batch (the rows it loaded).
  The global batch is the concatenation of the process shards in process
  order. Leading dimensions must be divisible by the number of devices
  that hold them: pad first (``pad_to_multiple``) if needed.

  Args:
    mesh: a mesh from ``make_mesh``.
    batch: an array or a (nested) dict of arrays, leading axis = examples.
    global_batch: global leading size; default ``local size × process
      count`` (every process supplies the same number of rows).

  Returns:
    The same structure of ``jax.Array``s sharded along axis 0.
  """

  def place(x):
    x = np.asarray(x)
    sharding = data_sharding(mesh, max(x.ndim, 1))
    if x.ndim == 0:
      raise ValueError("shard_batch needs arrays with a leading batch axis")
    n_global = (global_batch if global_batch is not None
                else x.shape[0] * jax.process_count())
    shape = (n_global,) + x.shape[1:]
    return jax.make_array_from_process_local_data(sharding, x, shape)

  return jax.tree_util.tree_map(place, batch)


def global_batch(mesh: Mesh, x: Union[np.ndarray, jax.Array]) -> jax.Array:
  """A host array that every process holds whole, split over ``data``.

  Unlike ``shard_batch`` (each process passes its own rows), every process
  passes the same full array and keeps the rows of its own devices
  (``jax.make_array_from_callback``), so a numpy batch can go to a jit whose
  ``in_shardings`` split the batch axis in a multi-process run. A
  ``jax.Array`` is returned unchanged.

  Args:
    mesh: a mesh from ``make_mesh``.
    x: the global array (identical on every process), leading axis divisible
      by the mesh size.

  Returns:
    A ``jax.Array`` of shape ``x.shape`` sharded along axis 0.
  """
  if isinstance(x, jax.Array):
    return x
  x = np.asarray(x)
  if x.ndim == 0:
    raise ValueError("global_batch needs an array with a leading batch axis")
  return jax.make_array_from_callback(x.shape, data_sharding(mesh, x.ndim),
                                      lambda idx: x[idx])


def pad_to_multiple(x: Union[np.ndarray, jax.Array], m: int, *,
                    axis: int = 0) -> tuple[Any, int]:
  """Pads ``x`` with zeros along ``axis`` up to a multiple of ``m``.

  Args:
    x: numpy or jax array.
    m: the multiple (> 0).
    axis: the axis to pad.

  Returns:
    ``(padded, n_valid)`` where ``n_valid`` is the original length; the
    padded array has the same type family (numpy stays numpy).
  """
  if m <= 0:
    raise ValueError(f"m must be positive, got {m}")
  n = x.shape[axis]
  extra = (-n) % m
  if extra == 0:
    return x, n
  widths = [(0, 0)] * x.ndim
  widths[axis] = (0, extra)
  if isinstance(x, np.ndarray):
    return np.pad(x, widths), n
  return jax.numpy.pad(x, widths), n


def gather_to_host(x: Any) -> np.ndarray:
  """The full value of a (possibly multi-process sharded) array as numpy.

  Args:
    x: a jax.Array (any sharding) or array-like.

  Returns:
    A numpy array with the global value, on every process.
  """
  if isinstance(x, jax.Array) and jax.process_count() > 1 and (
      not x.is_fully_addressable):
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(jax.device_get(x))


def tree_to_host(tree: Any) -> Any:
  """``gather_to_host`` of every leaf of a pytree."""
  return jax.tree_util.tree_map(gather_to_host, tree)


def replicated_to_host(x: jax.Array) -> np.ndarray:
  """The value of a replicated array as numpy, from this process's own
  copy (no collective: every process holds all of it)."""
  if x.is_fully_addressable:
    return np.asarray(x)
  return np.asarray(x.addressable_data(0))
