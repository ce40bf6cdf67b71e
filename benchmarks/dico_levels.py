r"""Which encoder levels carry DiCo's anomaly signal (issue 14): a trained run,
re-scored with the anomaly map summed over every subset of its levels.

For each run directory (a finished ``dicofun run`` / ``benchmarks/methods.py``
cell of DiCo, holding its ``model`` checkpoint), the test images of its own
protocol are scored once; each level's map ``1 − cos(T_k, R_k)`` is resized to
the input and kept, then every subset of levels is summed, blurred as the run
blurs and scored (``adaptive`` and ``max`` image scores; pixel AUROC / AUPRO on
the masked images). The subset of every level is the run's own map, so that
row reproduces the run's stored test metrics. Rows go to ``--results``:

  python benchmarks/dico_levels.py --run=/work/bench_dico/dico_cpu_contamination-0 \
      --results=benchmarks/results/dico_levels.json
"""

from __future__ import annotations

import itertools
import json
import os
import shlex
import sys
import tempfile

from absl import app
from absl import flags

from dicofun import cpu

cpu.configure_cpu_devices()

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

from dicofun import checkpoint  # pylint: disable=g-import-not-at-top,wrong-import-position
from dicofun import metrics  # pylint: disable=g-import-not-at-top,wrong-import-position
from dicofun import protocol  # pylint: disable=g-import-not-at-top,wrong-import-position
from dicofun import results as results_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from dicofun.data import pipeline  # pylint: disable=g-import-not-at-top,wrong-import-position
from dicofun.methods.dico import method as dico  # pylint: disable=g-import-not-at-top,wrong-import-position
from dicofun.methods.dico import scoring  # pylint: disable=g-import-not-at-top,wrong-import-position
from dicofun.methods.dico import step as step_lib  # pylint: disable=g-import-not-at-top,wrong-import-position

_RUN = flags.DEFINE_multi_string("run", [], "A finished DiCo run directory.")
_RESULTS = flags.DEFINE_string("results", "", "Write the rows to this JSON file.")
_BATCH = flags.DEFINE_integer("batch", 8, "Images per scoring call.")


def level_maps(run: str) -> tuple[dict[str, np.ndarray], dict, np.ndarray,
                                   np.ndarray, np.ndarray]:
  """Per-level maps of a run's test view (moved anomalies left out)."""
  state, config, _ = checkpoint.load_inference(run)
  cfg = config.dico
  with tempfile.TemporaryDirectory() as scratch:  # Leave the run as it is.
    data = protocol.prepare_data(config, scratch)
  keep = (np.ones(len(data.test), bool) if data.test_is_moved is None
          else ~np.asarray(data.test_is_moved, bool))
  records = [r for r, k in zip(data.test, keep) if k]
  encoder, bb = step_lib.encoder_from_backbone(
      config.backbone.name, weights=config.backbone.weights,
      levels=tuple(cfg.levels), image_size=int(config.dataset.image_size))
  pre = pipeline.preprocess_for(config, mean=bb.mean, std=bb.std)
  arrays = pipeline.load_arrays(records, pre, num_workers=2,
                                allow_missing_mask=True, desc="test images")
  net = dico.build_net(cfg, encoder.channels)
  variables = {"params": state["params"],
               "batch_stats": state.get("batch_stats", {})}
  size = arrays["image"].shape[1:3]

  @jax.jit
  def per_level(images):
    targets = encoder.apply(encoder.variables, images)
    recons, _ = net.apply(variables, targets, train=False)
    return {lv: scoring.anomaly_map(targets, recons, (lv,), size=size,
                                    sigma=0.0) for lv in cfg.levels}

  parts: dict[str, list] = {lv: [] for lv in cfg.levels}
  images = arrays["image"]
  for i in range(0, len(images), _BATCH.value):
    out = per_level(jnp.asarray(images[i:i + _BATCH.value], jnp.float32))
    for lv, m in out.items():
      parts[lv].append(np.asarray(m))
  maps = {lv: np.concatenate(v) for lv, v in parts.items()}
  labels = np.array([r.label for r in records])
  return maps, config, labels, arrays["mask"], arrays["has_mask"]


def rows_for(run: str) -> list[dict]:
  maps, config, labels, masks, has_mask = level_maps(run)
  cfg = config.dico
  rows = []
  for n in range(1, len(cfg.levels) + 1):
    for subset in itertools.combinations(tuple(cfg.levels), n):
      amap = np.asarray(scoring.gaussian_blur(
          jnp.asarray(sum(maps[lv] for lv in subset)), float(cfg.blur_sigma)))
      row = {"run": os.path.basename(os.path.normpath(run)),
             "contamination": float(config.dataset.contamination),
             "levels": "+".join(subset)}
      for mode in ("adaptive", "max"):
        scores = np.asarray(scoring.image_scores(
            jnp.asarray(amap), mode=mode, kappa=float(cfg.kappa),
            topk_fraction=float(cfg.topk_fraction)))
        row[f"test.image_auroc.{mode}"] = metrics.image_auroc(scores, labels)
      sel = np.asarray(has_mask, bool)
      pix = metrics.pixel_metrics(amap[sel], masks[sel])
      row["test.pixel_auroc"] = pix.get("pixel_auroc")
      row["test.aupro"] = pix.get("aupro")
      rows.append(row)
      print(json.dumps(row), flush=True)
  return rows


def main(argv):
  del argv
  if not _RUN.value:
    raise app.UsageError("give at least one --run=DIR")
  commit = results_lib.git_commit()
  command = "python " + " ".join(
      [os.path.relpath(sys.argv[0])] + [shlex.quote(a) for a in sys.argv[1:]])
  rows = []
  for run in _RUN.value:
    for row in rows_for(run):
      row.update(commit=commit, command=command)
      rows.append(row)
  if _RESULTS.value:
    old = []
    if os.path.exists(_RESULTS.value):
      with open(_RESULTS.value) as f:
        old = json.load(f)
    runs = {r["run"] for r in rows}
    rows = [r for r in old if r.get("run") not in runs] + rows
    with open(_RESULTS.value, "w") as f:
      json.dump(rows, f, indent=1)


if __name__ == "__main__":
  app.run(main)
