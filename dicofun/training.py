"""The training loop shared by the trained methods (FUN-AD, DiCo, ...).

A method supplies only what is its own: the initial train state (a pytree of
arrays), ``epoch_fn(state, epoch) -> (state, metrics)`` that runs one epoch of
its jitted step(s), and optionally ``evaluate_fn(state, epoch) -> dict`` that
scores the test set for the history. ``run_loop`` owns everything else:

* the epoch loop with progress (rate and ETA through ``dicofun.progress``)
  and per-epoch timing;
* periodic evaluation: after every ``eval_every``-th epoch and after the last
  one (``eval_every=0``: after the last one only);
* the history: one row per epoch, ``{"epoch", **train metrics,
  **{"test_<k>": v for the evaluation}}``, kept as
  ``<workdir>/checkpoints/history.json``;
* orbax checkpoints in ``<workdir>/checkpoints/train_ckpt`` every
  ``checkpoint_every`` epochs and after the last one, and automatic resume
  from them (the state is saved as its flat list of leaves and restored into
  the structure of the initial state);
* the test-selected *oracle* epoch: the evaluated epoch with the best
  (image AUROC + pixel AUROC) / 2 on the test set (METHODS §1; image AUROC
  alone when there is no pixel AUROC). It is labelled as test-selected: it is
  NOT a result (the last epoch is).

Resumed runs are bit-identical to uninterrupted ones as long as
``epoch_fn`` is a pure function of ``(state, epoch)`` (its shuffling and PRNG
keys derived from the epoch number), which both methods guarantee.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any, Callable, Optional

from absl import logging
import jax
import numpy as np
from sklearn import metrics as sk_metrics

from dicofun import checkpoint
from dicofun import parallel
from dicofun import progress as progress_lib

PyTree = Any
EpochFn = Callable[[PyTree, int], tuple[PyTree, dict[str, Any]]]
EvaluateFn = Callable[[PyTree, int], Optional[dict[str, Any]]]

CHECKPOINT_DIR = "checkpoints"  # Under the workdir.
TRAIN_CKPT = "train_ckpt"  # Under CHECKPOINT_DIR: the orbax steps.
HISTORY_FILE = "history.json"  # Under CHECKPOINT_DIR.
EVAL_PREFIX = "test_"  # Evaluation values in a history row.
ORACLE_NOTE = ("TEST-SELECTED (oracle) epoch: chosen by (image AUROC + pixel "
               "AUROC) / 2 on the test set, as the reference code selects; "
               "not a valid result (the reported result is the last epoch)")
ORACLE_CRITERION = "(test image AUROC + test pixel AUROC) / 2"


@dataclasses.dataclass
class LoopResult:
  """What ``run_loop`` returns.

  Attributes:
    state: the train state after the last epoch (as ``epoch_fn`` left it).
    history: one row per epoch (``epoch``, the train metrics, the
      evaluation's values as ``test_<name>`` on evaluated epochs), including
      the epochs restored from a checkpoint.
    oracle: the test-selected epoch (see ``select_oracle``), or None.
    start_epoch: completed epochs restored from the checkpoint (0: fresh).
    epoch_seconds: wall time of each epoch run by this process (training
      only, without evaluation and checkpointing).
    train_seconds: wall time of the whole loop (training, evaluations,
      checkpoints).
  """
  state: PyTree
  history: list[dict[str, Any]]
  oracle: Optional[dict[str, Any]]
  start_epoch: int
  epoch_seconds: list[float]
  train_seconds: float

  @property
  def seconds_per_epoch(self) -> Optional[float]:
    """Mean epoch time; the first epoch (compilation) is left out if others ran."""
    times = self.epoch_seconds[1:] or self.epoch_seconds
    return float(np.mean(times)) if times else None

  def scalar_history(self) -> list[dict[str, Any]]:
    """The history without its non-scalar values (e.g. per-image scores)."""
    return [{k: v for k, v in row.items() if _is_scalar(v)}
            for row in self.history]


def _is_scalar(v: Any) -> bool:
  return v is None or isinstance(v, (bool, int, float, str, np.generic))


def history_metrics(scores: np.ndarray, maps: Optional[np.ndarray],
                    labels: np.ndarray, masks: Optional[np.ndarray], *,
                    stride: int = 4) -> dict[str, float]:
  """Image AUROC and a subsampled pixel AUROC, for the training history.

  Args:
    scores: (N,) image scores.
    maps: (N, S, S) anomaly maps, or None (no pixel AUROC).
    labels: (N,) 0/1 image labels.
    masks: (N, S, S) ground-truth masks, or None.
    stride: every ``stride``-th pixel per axis enters the pixel AUROC.

  Returns:
    ``image_auroc`` (when both classes are present) and ``pixel_auroc``
    (when the subsampled masks hold both classes).
  """
  out = {}
  labels = np.asarray(labels)
  if len(np.unique(labels)) == 2:
    out["image_auroc"] = float(sk_metrics.roc_auc_score(labels, scores))
  if maps is None or masks is None:
    return out
  # Subsampled pixels bound the cost of this intermediate evaluation
  # **(ours)**; the reported pixel metrics are the runner's, on all pixels.
  m = (np.asarray(masks)[:, ::stride, ::stride] > 0.5).reshape(-1)
  if m.any() and not m.all():
    out["pixel_auroc"] = float(sk_metrics.roc_auc_score(
        m, np.asarray(maps)[:, ::stride, ::stride].reshape(-1)))
  return out


def oracle_value(row: dict[str, Any]) -> Optional[float]:
  """(image AUROC + pixel AUROC) / 2 of a history row (image alone without pixel)."""
  image = row.get(EVAL_PREFIX + "image_auroc")
  if image is None:
    return None
  pixel = row.get(EVAL_PREFIX + "pixel_auroc")
  return float(image) if pixel is None else (float(image) + float(pixel)) / 2


def select_oracle(history: list[dict[str, Any]]) -> Optional[dict[str, Any]]:
  """The test-selected epoch of a history, labelled as such (not a result).

  Returns:
    None when no row has a test image AUROC; else ``{"note", "criterion",
    "epoch", "selection_value"}`` and the evaluation's values of that epoch
    without their ``test_`` prefix (``image_auroc``, ``pixel_auroc``, ...).
    Ties go to the earliest epoch.
  """
  scored = [(oracle_value(r), r) for r in history]
  scored = [(v, r) for v, r in scored if v is not None]
  if not scored:
    return None
  value, best = max(scored, key=lambda vr: vr[0])  # First maximum wins.
  oracle = {"note": ORACLE_NOTE, "criterion": ORACLE_CRITERION,
            "epoch": best["epoch"], "selection_value": value}
  oracle.update({k[len(EVAL_PREFIX):]: v for k, v in best.items()
                 if k.startswith(EVAL_PREFIX)})
  return oracle


def flatten(tree: PyTree) -> dict[str, Any]:
  """Pytree → ``{"00000": leaf, ...}``: a structure orbax restores exactly."""
  return {f"{i:05d}": x for i, x in enumerate(jax.tree_util.tree_leaves(tree))}


def unflatten(template: PyTree, flat: dict[str, Any]) -> PyTree:
  """Inverse of ``flatten`` into the structure of ``template``."""
  leaves = [flat[k] for k in sorted(flat)]
  return jax.tree_util.tree_unflatten(
      jax.tree_util.tree_structure(template), leaves)


def _to_host(tree: PyTree) -> PyTree:
  return jax.tree_util.tree_map(parallel.gather_to_host, tree)


def write_json_atomic(path: str, obj: Any) -> None:
  """Writes JSON to a temporary file and renames it over ``path``."""
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "w") as f:
    json.dump(obj, f)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def _due(epoch: int, every: int, last: bool) -> bool:
  """After epoch ``epoch`` (1-based): every ``every``-th and the last."""
  return last or (every > 0 and epoch % every == 0)


def run_loop(*, state: PyTree, epochs: int, epoch_fn: EpochFn,
             evaluate_fn: Optional[EvaluateFn] = None,
             workdir: Optional[str] = None, checkpoint_every: int = 1,
             eval_every: int = 0,
             place: Optional[Callable[[PyTree], PyTree]] = None,
             desc: str = "epochs") -> LoopResult:
  """Trains for ``epochs`` epochs with evaluation, history and checkpoints.

  Args:
    state: the initial train state (a pytree of arrays); its structure is the
      checkpoint's restore template.
    epochs: total number of epochs (a resumed run runs the remaining ones).
    epoch_fn: ``(state, epoch) -> (state, metrics)`` runs epoch ``epoch``
      (0-based); ``metrics`` is a dict of floats (epoch means) for the
      history. It must depend on ``epoch`` only, not on how many epochs this
      process ran, so resumed runs equal uninterrupted ones.
    evaluate_fn: optional ``(state, epoch) -> dict`` (``epoch`` 1-based, the
      completed epochs) run after every ``eval_every``-th and the last
      epoch; its values enter the history row as ``test_<name>``
      (``image_auroc`` and ``pixel_auroc`` select the oracle).
    workdir: the run's directory; checkpoints and history go to
      ``<workdir>/checkpoints`` (None: no checkpoints, no resume).
    checkpoint_every: save every this many epochs (and after the last).
    eval_every: evaluate every this many epochs (0: after the last only).
    place: puts a state on the devices (mesh shardings); applied to the
      initial or restored state before the first epoch.
    desc: label of the progress lines and log messages.

  Returns:
    A ``LoopResult``.
  """
  epochs = int(epochs)
  eval_every = int(eval_every)
  place = place or (lambda s: s)
  template = state
  history: list[dict[str, Any]] = []
  start = 0
  ckpt = None
  hist_path = None
  if workdir is not None:
    ckpt_root = os.path.join(workdir, CHECKPOINT_DIR)
    hist_path = os.path.join(ckpt_root, HISTORY_FILE)
    ckpt = checkpoint.TrainCheckpointer(
        ckpt_root, every=int(checkpoint_every), keep_best=False,
        subdir=TRAIN_CKPT)
    host_template = jax.tree_util.tree_map(np.asarray, _to_host(template))
    restored, start = ckpt.restore_or(flatten(host_template))
    if start:
      state = unflatten(template, restored)
      if os.path.exists(hist_path):
        with open(hist_path) as f:
          history = [r for r in json.load(f) if r["epoch"] <= start]
  state = place(state)

  t_loop = time.time()
  epoch_seconds: list[float] = []
  for epoch in progress_lib.progress(range(start, epochs),
                                     total=max(epochs - start, 0), desc=desc):
    t0 = time.time()
    state, metrics = epoch_fn(state, epoch)
    epoch_seconds.append(time.time() - t0)
    done = epoch + 1
    last = done == epochs
    row: dict[str, Any] = {"epoch": done}
    row.update({k: float(v) for k, v in metrics.items()})
    if evaluate_fn is not None and _due(done, eval_every, last):
      evaluation = evaluate_fn(state, done) or {}
      row.update({EVAL_PREFIX + k: v for k, v in evaluation.items()})
    history.append(row)
    logging.info("%s %d/%d: %s", desc, done, epochs,
                 {k: (round(v, 5) if isinstance(v, float) else v)
                  for k, v in row.items() if _is_scalar(v)})
    if ckpt is not None and _due(done, ckpt.every, last):
      saved = ckpt.maybe_save(done, flatten(_to_host(state)), force=True)
      if saved and parallel.is_main_process():
        write_json_atomic(hist_path, history)
  if ckpt is not None:
    ckpt.close()
  return LoopResult(state=state, history=history,
                    oracle=select_oracle(history), start_epoch=start,
                    epoch_seconds=epoch_seconds,
                    train_seconds=time.time() - t_loop)
