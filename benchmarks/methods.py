r"""Method comparison on one dataset: every method on the same features, one run.

Each cell is an ordinary run (``runner.train_and_evaluate``) in its own workdir
under ``--workdir``; features are cached on disk, so the methods that share a
backbone and layout extract them once. Prints a markdown table and writes
``<workdir>/table.md`` and ``<workdir>/rows.json``.

Example (the BENCHMARKS.md magnetic-tile table):
  python benchmarks/methods.py --dataset=magnetic_tile \
      --runs="patchcore:backbone=dinov2_vits14" \
      --runs="softpatch:backbone=dinov2_vits14" \
      --contamination=0,0.1 --workdir=runs/bench_mt
A cell whose results.json exists is not run again (delete it to re-measure).
"""

import json
import os
import shlex
import sys
import time

from absl import app
from absl import flags
from absl import logging

import _shared  # pylint: disable=g-import-not-at-top,wrong-import-position
_shared.use_shared_data()

from dicofun import cpu  # pylint: disable=g-import-not-at-top,wrong-import-position
cpu.configure_cpu_devices()  # Before anything imports jax.

from dicofun import runner  # pylint: disable=g-import-not-at-top,wrong-import-position
import _rows  # pylint: disable=g-import-not-at-top,wrong-import-position

_DATASET = flags.DEFINE_string("dataset", "magnetic_tile", "Dataset config suffix.")
_RUNS = flags.DEFINE_multi_string(
    "runs", [], "method:config-args, e.g. 'funad:backbone=dinov2_vits14,epochs=5'.")
_CONTAMINATION = flags.DEFINE_list("contamination", ["0", "0.1"],
                                   "Contamination ratios.")
_WORKDIR = flags.DEFINE_string("workdir", "runs/bench_methods", "Output root.")
_RESULTS = flags.DEFINE_string(
    "results", "", "Also write the rows to this JSON file (e.g. "
    "benchmarks/results/funad_magnetic_tile.json): one row per (method, args, "
    "contamination) with the commit that measured it and this command.")

_MERGE = flags.DEFINE_bool(
    "merge", False, "With --results: keep the file's rows of cells not in "
    "this invocation (each row keeps the command that measured it).")

_COLS = ("image_auroc", "pixel_auroc", "aupro")


def _load_config(method: str, dataset: str, arg: str):
  import importlib.util  # pylint: disable=g-import-not-at-top
  path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                      "configs", f"{method}_{dataset}.py")
  spec = importlib.util.spec_from_file_location(f"cfg_{method}_{dataset}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg or None)


def _fmt(v) -> str:
  return "—" if v is None else (f"{v:.4f}" if isinstance(v, float) else str(v))


def main(argv):
  del argv
  rows = []
  for run in _RUNS.value:
    method, _, arg = run.partition(":")
    for c in _CONTAMINATION.value:
      full_arg = ",".join(x for x in (arg, f"contamination={c}") if x)
      config = _load_config(method, _DATASET.value, full_arg)
      cell = os.path.join(_WORKDIR.value,
                          f"{method}_{full_arg}".replace("=", "-").replace(",", "_"))
      results_path = os.path.join(cell, "results.json")
      if not os.path.exists(results_path):
        t0 = time.time()
        runner.train_and_evaluate(config, cell)
        logging.info("%s done in %.0fs", cell, time.time() - t0)
      with open(results_path) as f:
        res = json.load(f)
      m, extra = res["metrics"], res.get("extra", {})
      # FUN-AD names its preset (preset=...); DiCo's is the bare flag "cpu".
      flags_given = arg.split(",")
      preset = next((kv.split("=", 1)[1] for kv in flags_given
                     if kv.startswith("preset=")),
                    "cpu" if "cpu" in flags_given else None)
      epochs = extra.get("epochs") or extra.get("result_epoch") or extra.get(
          "last_epoch")
      row = {"method": method, "args": arg, "contamination": float(c),
             "preset": preset, "dataset": _DATASET.value,
             "commit": res.get("commit"),
             "backbone": config.backbone.name, "layer": config.backbone.layer,
             "norm": config.backbone.norm_intermediate,
             "local_average": config.backbone.vit_local_average,
             "image_size": config.dataset.image_size,
             "seconds": res.get("seconds")}
      for view in ("test", "test_overlap", "transductive"):
        for k in _COLS:
          row[f"{view}.{k}"] = m.get(view, {}).get(k)
        # Per defect type (its anomalies against every normal of the view).
        for d, v in sorted((m.get(view, {}).get("by_defect") or {}).items()):
          row[f"{view}.image_auroc.{d}"] = v["image_auroc"]
      for k in ("fit_seconds", "inference_images_per_s", "seconds_per_iteration",
                "train_seconds", "train_images_per_s", "last_epoch",
                "result_epoch"):
        if k in extra:
          row[k] = extra[k]
      if epochs and extra.get("fit_seconds") is not None:
        row["seconds_per_epoch"] = extra["fit_seconds"] / epochs
      elif epochs and extra.get("train_seconds") is not None:
        row["seconds_per_epoch"] = extra["train_seconds"] / epochs
      if row.get("train_images_per_s") is None:
        row["train_images_per_s"] = _rows.tensorboard_images_per_s(cell)
      oracle = extra.get("oracle") or {}
      for k in _COLS:
        if k in oracle:
          row[f"oracle.{k}"] = oracle[k]
      rows.append(row)
  cols = ["method", "args", "contamination", "layer", "norm",
          "local_average", "test.image_auroc",
          "test.pixel_auroc", "test.aupro", "test_overlap.image_auroc",
          "transductive.image_auroc", "oracle.image_auroc", "fit_seconds",
          "seconds_per_iteration", "train_seconds", "train_images_per_s",
          "inference_images_per_s",
          "seconds"]
  lines = ["| " + " | ".join(cols) + " |", "|---" * len(cols) + "|"]
  for r in rows:
    lines.append("| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |")
  table = "\n".join(lines) + "\n"
  print(table)
  os.makedirs(_WORKDIR.value, exist_ok=True)
  with open(os.path.join(_WORKDIR.value, "table.md"), "w") as f:
    f.write(table)
  with open(os.path.join(_WORKDIR.value, "rows.json"), "w") as f:
    json.dump(rows, f, indent=1)
  if _RESULTS.value:
    command = "python " + " ".join(
        [os.path.relpath(sys.argv[0])] + [shlex.quote(a) for a in sys.argv[1:]])
    for r in rows:
      r["command"] = command
    if _MERGE.value and os.path.exists(_RESULTS.value):
      with open(_RESULTS.value) as f:
        rows = _rows.merge_rows(json.load(f), rows)
    os.makedirs(os.path.dirname(os.path.abspath(_RESULTS.value)), exist_ok=True)
    tmp = _RESULTS.value + ".tmp"
    with open(tmp, "w") as f:
      json.dump(rows, f, indent=1)
    os.replace(tmp, _RESULTS.value)


if __name__ == "__main__":
  app.run(main)
