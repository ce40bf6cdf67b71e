"""dicofun.cpu: one JAX CPU device per core for the entry points."""

import os
import subprocess
import sys

from dicofun import cpu

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_default_count_is_a_power_of_two_up_to_eight():
  n = cpu.default_count()
  assert 1 <= n <= 8 and n & (n - 1) == 0


def _devices(env_extra):
  env = dict(os.environ, PYTHONPATH=_REPO, **env_extra)
  env.pop("XLA_FLAGS", None)
  code = ("from dicofun import cpu; cpu.configure_cpu_devices(); "
          "import jax; print(jax.device_count())")
  out = subprocess.run([sys.executable, "-c", code], env=env,
                       capture_output=True, text=True, timeout=120, check=True)
  return int(out.stdout.strip().splitlines()[-1])


def test_override_and_opt_out():
  assert _devices({"DICOFUN_CPU_DEVICES": "4"}) == 4
  assert _devices({"DICOFUN_CPU_DEVICES": "1"}) == 1
  assert _devices({}) == cpu.default_count()


def test_no_change_once_jax_is_imported(monkeypatch):
  import jax  # pylint: disable=g-import-not-at-top,unused-import
  monkeypatch.delenv("XLA_FLAGS", raising=False)
  assert cpu.configure_cpu_devices() == 0
  assert "XLA_FLAGS" not in os.environ
