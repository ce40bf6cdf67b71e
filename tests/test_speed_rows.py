"""benchmarks/_speed.py: speed.json rows and the generated BENCHMARKS.md block."""

import importlib.util
import json
import os

import pytest

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _bench(name: str, file: str = ""):
  """benchmarks/<file or name>.py loaded as module ``name``."""
  spec = importlib.util.spec_from_file_location(
      name, os.path.join(_REPO, "benchmarks", (file or name) + ".py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def _speed():
  return _bench("_speed")


def test_add_rows_replaces_same_benchmark_and_stamps(tmp_path, monkeypatch):
  speed = _speed()
  monkeypatch.setattr(speed, "commit", lambda: "abc1234")
  monkeypatch.setattr(speed, "command", lambda: "python benchmarks/x.py")
  path = str(tmp_path / "speed.json")
  md = tmp_path / "B.md"
  md.write_text("# B\n\n## Not measured yet\n")
  row = dict(benchmark="knn_big_k1", peer="faiss", ours_over_peer=1.5,
             roofline_fraction=0.8, cpu="Xeon", load=2.0)
  speed.add_rows([row, dict(row, benchmark="coreset")], path=path,
                 md_path=str(md))
  speed.add_rows([dict(row, ours_over_peer=2.0)], path=path, md_path=str(md))
  rows = json.load(open(path))
  assert [r["benchmark"] for r in rows] == ["coreset", "knn_big_k1"]
  assert rows[1]["ours_over_peer"] == 2.0
  assert rows[1]["commit"] == "abc1234"
  assert rows[1]["command"] == "python benchmarks/x.py"
  text = md.read_text()
  assert text.count(speed.BEGIN) == 1 and text.count(speed.END) == 1
  assert "| knn_big_k1 | faiss | 2 |" in text
  assert "| coreset | faiss | 1.5 |" in text
  with pytest.raises(ValueError, match="roofline_fraction"):
    speed.add_rows([{"benchmark": "x", "peer": "p", "ours_over_peer": 1}],
                   path=path, md_path=None)


def test_add_rows_keeps_other_machines_rows(tmp_path, monkeypatch):
  speed = _speed()
  monkeypatch.setattr(speed, "commit", lambda: "abc1234")
  path = str(tmp_path / "speed.json")
  row = dict(benchmark="roofline", peer="numpy", ours_over_peer=0.8,
             roofline_fraction=0.8, roofline_gflops=190.0, cpu="Xeon")
  speed.add_rows([row], path=path, md_path=None)
  speed.add_rows([dict(row, cpu="EPYC", roofline_gflops=170.0)], path=path,
                 md_path=None)
  speed.add_rows([dict(row, cpu="EPYC", roofline_gflops=160.0)], path=path,
                 md_path=None)
  rows = json.load(open(path))
  assert [(r["cpu"], r["roofline_gflops"]) for r in rows] == [
      ("Xeon", 190.0), ("EPYC", 160.0)]
  # A fraction is only ever taken of the same CPU's roofline.
  assert speed.stored_roofline(path, cpu="Xeon") == 190.0
  assert speed.stored_roofline(path, cpu="EPYC") == 160.0
  assert speed.stored_roofline(path, cpu="Graviton") is None


def test_stored_rows_have_the_required_keys():
  rows = _speed().load_rows()
  assert rows, "benchmarks/results/speed.json is missing"
  for r in rows:
    for key in ("benchmark", "peer", "ours_over_peer", "roofline_fraction",
                "commit", "command", "cpu", "load"):
      assert key in r, (r["benchmark"], key)


def test_command_names_the_environment_that_changes_a_row():
  speed = _speed()
  assert speed.env_prefix({}) == ""
  assert speed.env_prefix({"DICOFUN_CPU_DEVICES": "1"}) == (
      "DICOFUN_CPU_DEVICES=1 ")
  # The device count cpu.configure_cpu_devices adds is not the user's flag.
  assert speed.env_prefix({
      "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}) == ""
  assert speed.env_prefix({
      "XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type= "
                   "--xla_force_host_platform_device_count=2"}) == (
      "XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type= ")


def _roofline():
  import sys  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, os.path.join(_REPO, "benchmarks"))  # Its _speed import.
  return _bench("roofline")


def test_turn_ratios_pair_calls_of_the_same_turn():
  roofline = _roofline()
  # Turn i: peer took peer[i] s, ours ours[i] s; ratios 2, 1, 4, 0.5, 3.
  times = {"peer": [2.0, 3.0, 8.0, 1.0, 9.0], "ours": [1.0, 3.0, 2.0, 2.0, 3.0]}
  assert roofline.turn_ratio_quartiles(times, "peer", "ours") == [1.0, 2.0, 3.0]
  calls = []
  got = roofline.interleaved_times(
      {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
      repeats=2, settle_s=0.0)
  assert calls == ["a", "b", "a", "b", "a", "b"]  # Warm-up, then turns.
  assert sorted(got) == ["a", "b"] and all(len(v) == 2 for v in got.values())


def test_near_tie_gap_separates_ties_from_wrong_neighbours():
  bench = _bench("knn_bench", "knn")
  import numpy as np  # pylint: disable=g-import-not-at-top
  bank = np.array([[1.0, 0.0], [0.0, 1.0], [3.0, 0.0]], np.float32)
  queries = np.zeros((2, 2), np.float32)
  ref = np.array([[0], [0]])
  # Query 0 agrees; query 1 took the other point at the same distance 1.
  assert bench.near_tie_gap(queries, bank, np.array([[0], [1]]), ref) == 0.0
  # A farther point (distance 9 vs 1) is a real difference: gap 8.
  assert bench.near_tie_gap(queries, bank, np.array([[0], [2]]), ref) == 8.0
  assert bench.near_tie_gap(queries, bank, ref, ref) == 0.0
