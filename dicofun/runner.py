"""The runner: data → method → metrics → results, for every method.

``train_and_evaluate(config, workdir)`` is what ``dicofun run`` (and
``experiments/main.py``) calls. It prepares the data (``dicofun.protocol``),
loads the evaluation masks (so a missing or corrupt mask fails before any
training), hands a ``RunData`` to the method registered under ``config.method``
(``dicofun.methods.METHODS``), evaluates the returned ``Predictions`` in the
three views of METHODS §4, saves the inference checkpoint and writes the
run's results (``dicofun.results``).
"""

from __future__ import annotations

import os
import time
from typing import Any, Optional

from absl import logging
import ml_collections
import numpy as np

from dicofun import api
from dicofun import checkpoint
from dicofun import locking
from dicofun import metrics as metrics_lib
from dicofun import methods
from dicofun import parallel
from dicofun import predict as predict_lib
from dicofun import protocol
from dicofun import results as results_lib
from dicofun import user_errors


def choose_threshold(config: ml_collections.ConfigDict, method, data: api.RunData,
                     preds: api.Predictions) -> tuple[Optional[float], str]:
  """The decision threshold stored with the model, and how it was chosen."""
  if data.validation and preds.state is not None:
    scores, _ = method.predict(config, preds.state, data.validation)
    labels = np.array([r.label for r in data.validation])
    if len(np.unique(labels)) == 2:
      return (float(metrics_lib.f1_optimal_threshold(np.asarray(scores), labels)),
              f"F1-optimal on {len(labels)} held-out validation images")
  if preds.train_scores is not None:
    q = config.eval.threshold_percentile
    return (metrics_lib.percentile_threshold(np.asarray(preds.train_scores), q),
            f"{q}th percentile of the training-image scores")
  logging.warning("No threshold: neither a validation split nor training "
                  "scores; predict.py will need --threshold")
  return None, "none"


def train_and_evaluate(config: ml_collections.ConfigDict,
                       workdir: str) -> dict[str, Any]:
  """Runs ``config.method`` on ``config.dataset`` and writes the results.

  Process 0 holds the workdir's lock (``dicofun.locking``) from before any
  work to the end: a second run into the same workdir stops at once.

  Args:
    config: a run config (see ``configs/``).
    workdir: output directory (created); results.json, metrics.md and PNG
      figures are written there by process 0.

  Returns:
    The metrics dict (views → metric → value).

  Raises:
    locking.FolderInUseError: another process runs in ``workdir``.
    user_errors.OutputPathError: ``workdir`` is a file.
  """
  method = methods.get_method(config.method)
  parallel.maybe_initialize_distributed()
  main_process = parallel.is_main_process()
  user_errors.check_not_a_file(workdir, flag="--workdir")
  if not main_process:
    return _train_and_evaluate(config, workdir, method, main_process)
  with locking.folder_lock(workdir, flag="--workdir"):
    return _train_and_evaluate(config, workdir, method, main_process)


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                        method, main_process: bool) -> dict[str, Any]:
  """``train_and_evaluate`` after the setup and the lock."""
  os.makedirs(workdir, exist_ok=True)
  commit = results_lib.git_commit()  # Now: the code this process runs.
  t0 = time.time()
  phases: dict[str, float] = {}
  clock = [t0]

  def lap(name: str) -> None:
    now = time.time()
    phases[name] = round(now - clock[0], 3)
    clock[0] = now

  data = parallel.main_process_first(
      lambda: protocol.prepare_data(config, workdir), name="dicofun_data")
  lap("data")
  methods.check_train_count(config, len(data.train))  # Before any work.
  # Everything the evaluation reads (test masks: present unless
  # config.dataset.allow_missing_masks, decodable) is loaded before the
  # method runs, so a bad input fails in seconds, not after training.
  eval_arrays = protocol.load_eval_arrays(config, data.test)
  lap("masks")
  preds = method.run(config, data, workdir)
  lap("method")
  metrics = protocol.evaluate_predictions(preds, data, eval_arrays)
  lap("metrics")
  threshold, threshold_how = choose_threshold(config, method, data, preds)
  lap("threshold")
  if preds.state is not None:
    checkpoint.save_inference(
        workdir, state=preds.state, config=config, threshold=threshold,
        meta={"threshold_rule": threshold_how, "method": config.method,
              # What dicofun predict compares new images with.
              predict_lib.TRAINING_STATS: predict_lib.sample_training_stats(
                  config, [r.image_path for r in data.train])})
  lap("checkpoint")
  elapsed = time.time() - t0
  table = results_lib.metrics_table(
      metrics, title=f"{config.method} on {config.dataset.name}/{data.category}"
      f" (contamination {config.dataset.contamination})")
  # The command line prints the table once, on stdout; the log keeps it at
  # DEBUG (``--verbosity=1``).
  logging.debug("Results:\n%s", table)
  if main_process:
    figures = results_lib.write_figures(workdir, config, data, preds, eval_arrays)
    lap("figures")
    results = {
        "method": config.method,
        "dataset": config.dataset.name,
        "category": data.category,
        "seed": config.seed,
        "commit": commit,
        "config": config.to_dict(),
        "metrics": metrics,
        "counts": {
            "train": len(data.train),
            "train_anomalous": int(sum(r.label for r in data.train)),
            "test": int(len(data.test) - len(data.moved)),
            "moved": len(data.moved),
        },
        "moved_files": [r.image_path for r in data.moved],
        "validation_files": [r.image_path for r in data.validation],
        "threshold": threshold,
        "threshold_rule": threshold_how,
        "figures": figures,
        "seconds": elapsed,
        # Wall seconds of each runner phase in order (the method's own split,
        # e.g. feature_seconds / fit_seconds / train_seconds, is in extra);
        # "results" is the writing of the files before results.json.
        "phases": phases,
        "extra": preds.extra,
    }
    results_lib.write_metrics_md(os.path.join(workdir, "metrics.md"), table)
    results_lib.write_scores_csv(os.path.join(workdir, "test_scores.csv"), data, preds)
    if config.eval.tensorboard:
      results_lib.write_summaries(workdir, metrics, preds.extra, enabled=True)
    lap("results")
    logging.info("Phases (s): %s", ", ".join(f"{k} {v:.1f}"
                                             for k, v in phases.items()))
    # Written last and atomically: its presence marks a finished run (sweeps
    # skip such cells).
    results_lib.write_json_atomic(os.path.join(workdir, "results.json"), results)
    logging.info("Process %d wrote results to %s", parallel.process_index(),
                 workdir)
  return metrics
