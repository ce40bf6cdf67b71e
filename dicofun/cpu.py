"""One JAX CPU device per core, set before JAX starts.

XLA's CPU backend runs one computation on few threads at the sizes dicofun
uses (batched convolutions, attention, kNN tiles), so a 2-core machine ran
DINOv2-S feature extraction at 8.9 images/s with one CPU device and 14.0 with
two (benchmarks/backbones.py, BENCHMARKS.md). Giving XLA one host device per
core and letting the ``data`` mesh axis split every batch over them uses the
cores the same way several GPUs are used — same code path, no special case.

``configure_cpu_devices()`` must run before the first ``import jax``; the
entry points (experiments/*.py, benchmarks) call it first thing. The count is
the largest power of two ≤ min(cores, 8) **(ours)** — powers of two keep
default batch sizes divisible — and ``DICOFUN_CPU_DEVICES=n`` overrides it
(``1`` restores JAX's default). It only adds host devices: on a GPU/TPU
machine the accelerators stay the default backend and nothing changes.
"""

from __future__ import annotations

import os
import sys

_FLAG = "--xla_force_host_platform_device_count"


def default_count() -> int:
  """Largest power of two ≤ min(usable cores, 8)."""
  try:
    cores = len(os.sched_getaffinity(0))
  except AttributeError:  # Not on Linux.
    cores = os.cpu_count() or 1
  n = 1
  while n * 2 <= min(cores, 8):
    n *= 2
  return n


def configure_cpu_devices() -> int:
  """Sets the host device count in ``XLA_FLAGS`` unless already decided.

  Returns:
    The count now requested (0 when JAX is already imported or the user set
    the flag, so this call changed nothing).
  """
  flags = os.environ.get("XLA_FLAGS", "")
  if "jax" in sys.modules or _FLAG in flags:
    return 0
  want = os.environ.get("DICOFUN_CPU_DEVICES", "")
  n = int(want) if want else default_count()
  if n > 1:
    os.environ["XLA_FLAGS"] = f"{flags} {_FLAG}={n}".strip()
  return n
