"""The contract between the runner (``dicofun.train``) and the methods.

A method is a module in ``dicofun/methods/<name>`` exposing::

    def run(config: ml_collections.ConfigDict, data: RunData,
            workdir: str) -> Predictions
    def predict(config: ml_collections.ConfigDict, state: dict,
                records: list[Record]) -> tuple[np.ndarray, np.ndarray]

``predict`` loads and preprocesses the records' images through the same code
path ``run`` used for the test set, so it returns the same image scores and
anomaly maps for the same images; ``state`` is ``Predictions.state`` as
restored from the run's inference checkpoint (no training data needed).

The runner prepares the data (readers, contamination protocol), calls the
method, then computes every metric from the returned predictions and writes the
run's results. Methods never compute the reported metrics themselves (they may
call ``dicofun.evaluate`` for intermediate, clearly labelled evaluations).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import numpy as np

from dicofun.data.records import Record


@dataclasses.dataclass
class RunData:
  """Inputs of one run.

  Attributes:
    train: training records as the method sees them (true labels are kept in
      the records for the transductive view; methods must not read them).
    test: test records (labels and masks used for evaluation only).
    moved: records moved from test into train by the contamination protocol.
    category: dataset category name.
    test_is_moved: optional (len(test),) bool array. The runner appends the
      moved anomalies to ``test`` so one run yields both the no-overlap view
      (rows where this is False) and the overlap view (all rows) of METHODS §4.
      Methods just score every record of ``test``.
    validation: labelled images held out of the test set
      (``config.eval.validation_fraction``) on which the runner picks the
      F1-optimal decision threshold; methods do not see them.
  """

  train: list[Record]
  test: list[Record]
  moved: list[Record] = dataclasses.field(default_factory=list)
  category: str = ""
  test_is_moved: Optional[np.ndarray] = None
  validation: list[Record] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class Predictions:
  """What a method returns.

  Attributes:
    test_scores: (num_test,) image anomaly scores, higher = more anomalous.
    test_maps: (num_test, S, S) float32 anomaly maps at the evaluation size.
    train_scores: (num_train,) image scores on the method's own (possibly
      contaminated) training set, for the transductive view; None if the
      method cannot score its training set.
    train_maps: (num_train, S, S) float32 anomaly maps of the training
      images, scored as ``train_scores`` are; only when the run asks for them
      (``config.eval.train_maps``, set by ``dicofun inspect``), else None.
    extra: method-specific results (training history, oracle epoch, timings);
      must be JSON-serialisable.
    state: the method's inference pytree (arrays only): everything its
      ``predict(config, state, records) -> (scores, maps)`` needs besides the
      config. The runner stores it in the run's inference checkpoint.
  """

  test_scores: np.ndarray
  test_maps: Optional[np.ndarray]
  train_scores: Optional[np.ndarray] = None
  train_maps: Optional[np.ndarray] = None
  extra: dict[str, Any] = dataclasses.field(default_factory=dict)
  state: Optional[dict[str, Any]] = None
