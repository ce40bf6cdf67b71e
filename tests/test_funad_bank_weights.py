"""benchmarks/funad_bank_weights.py: the trusted-bank weight table from the
suite cells' own sweeps, and the marker block it writes into a markdown file."""

import importlib.util
import json
import os
import sys

import pytest

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def mod():
  sys.path.insert(0, os.path.join(_ROOT, "benchmarks"))
  try:
    spec = importlib.util.spec_from_file_location(
        "funad_bank_weights",
        os.path.join(_ROOT, "benchmarks", "funad_bank_weights.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield module
  finally:
    sys.path.remove(os.path.join(_ROOT, "benchmarks"))


def _cell(tmp_path, name, sweep):
  os.makedirs(tmp_path / name)
  with open(tmp_path / name / "results.json", "w") as f:
    json.dump({"extra": {"trusted_bank": {"weights": sweep}}}, f)


def test_seed_then_category_means_per_round_and_weight(mod, tmp_path):
  rows = []
  for cat, seed, t in [("a", 0, 0.6), ("a", 1, 0.8), ("b", 0, 0.9)]:
    name = f"{cat}{seed}"
    _cell(tmp_path, name, [
        {"round": 2, "weight": 0.0, "test_image_auroc": t,
         "transductive_image_auroc": 0.5, "anomalous_trusted": 3},
        {"round": 2, "weight": 1.0, "test_image_auroc": t + 0.1,
         "transductive_image_auroc": 0.7, "anomalous_trusted": 3}])
    rows.append({"method": "funad", "args": "", "contamination": 0.1,
                 "category": cat, "seed": seed, "cell": name})
  rows.append({"method": "funad", "args": "bank_weight=1", "contamination":
               0.1, "category": "a", "seed": 0, "cell": "missing"})
  per_category = mod.collect(rows, "", str(tmp_path))
  a0 = [r for r in per_category if r["category"] == "a" and r["weight"] == 0]
  assert a0[0]["seeds"] == 2 and a0[0]["test_image_auroc"] == pytest.approx(
      0.7)
  means = {(m["weight"], m["view"]): m["mean"] for m in mod.means(per_category)}
  # Category a's seed mean 0.7, b 0.9: the suite mean is 0.8, not 0.767.
  assert means[(0.0, "test_image_auroc")] == pytest.approx(0.8)
  assert means[(1.0, "test_image_auroc")] == pytest.approx(0.9)
  table = mod.markdown(mod.means(per_category), per_category)
  assert "| 0.1 | test I-AUROC (2) | rebuilt | 0.800 | **0.900** |" in table


def test_replace_block_rewrites_between_markers_or_appends(mod, tmp_path):
  import _rows  # benchmarks/ is on the path (the fixture)
  path = tmp_path / "B.md"
  path.write_text("head\n<!-- x:begin -->\nold\n<!-- x:end -->\ntail\n")
  _rows.replace_block(str(path), "<!-- x:begin -->", "<!-- x:end -->",
                      "new\n")
  assert path.read_text() == ("head\n<!-- x:begin -->\nnew\n<!-- x:end -->"
                              "\ntail\n")
  _rows.replace_block(str(path), "<!-- y:begin -->", "<!-- y:end -->", "t\n")
  assert path.read_text().endswith(
      "tail\n\n<!-- y:begin -->\nt\n<!-- y:end -->\n")
