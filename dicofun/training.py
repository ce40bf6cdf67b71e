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
  **{"test_<k>": v for the evaluation}}`` (and ``"step"``, the optimiser
  steps done, with ``step_of``), kept as
  ``<workdir>/checkpoints/history.json``;
* orbax checkpoints in ``<workdir>/checkpoints/train_ckpt`` every
  ``checkpoint_every`` epochs and after the last one, and automatic resume
  from them (the state is saved as its flat list of leaves and restored into
  the structure of the initial state);
* the test-selected *oracle* epoch: the evaluated epoch with the best
  (image AUROC + pixel AUROC) / 2 on the test set (METHODS §1; image AUROC
  alone when there is no pixel AUROC). It is labelled as test-selected: it is
  NOT a result (the last epoch is);
* resume with identity: a fingerprint of the config fields that affect
  training (``training_fingerprint``) is stored as
  ``<workdir>/checkpoints/fingerprint.json``; resuming under a different one
  raises ``ResumeMismatchError`` naming the differing keys. ``restart=True``
  (``--config.restart=True``) deletes the old checkpoints instead.

Live telemetry: with ``summary_dir`` the loop writes TensorBoard events
(``dicofun.summary``) as it trains, flushed after every epoch so
``tensorboard --logdir <workdir>/tensorboard`` follows the run: per epoch
``history/<k>`` for every scalar of the history row (the epoch's train metrics
and, on evaluated epochs, the evaluation's ``test_*`` values),
``speed/epoch_seconds`` and, with ``images_per_epoch``,
``speed/images_per_second``; on evaluated epochs the anomaly-map figure
(``FIGURE``, an (H, W, 3) uint8 image the evaluation may return; it does not
enter the history) as the image ``history/anomaly_maps``. Steps are the
completed epochs, or the optimiser steps with ``step_of``. Only the main
process writes.

An "epoch" of the loop is the method's round: one pass over the training set
(DiCo, FUN-AD's paper preset), or a fixed number of iterations drawn from a
stream of per-epoch permutations (FUN-AD's and DiCo's budget in steps,
``Budget``), as long as the round is a pure function of ``(state, round)``.

Crash safety: the history is written (atomically: temporary file +
``os.replace``) *before* each checkpoint, and only its rows up to the restored
epoch are kept on resume, so a run killed at any point (mid-epoch, mid-save)
resumes from its last complete checkpoint with a consistent history. The
latest 2 checkpoints are kept; a corrupted newest one is logged and the
previous one restored (``checkpoint.TrainCheckpointer.restore_or``).

Ctrl-C (``dicofun.interrupt``): the first one stops the loop at the next
safe point — between two steps of a method that calls
``interrupt.between_steps()`` when the last completed epoch is checkpointed,
else after the current epoch, which is then checkpointed — by raising
``interrupt.Interrupted`` (the command line exits 130); a second one stops at
once. Either way the run resumes from its last complete checkpoint.

Resumed runs are bit-identical to uninterrupted ones as long as
``epoch_fn`` is a pure function of ``(state, epoch)`` (its shuffling and PRNG
keys derived from the epoch number), which both methods guarantee.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
import time
from typing import Any, Callable, Mapping, Optional

from absl import logging
import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np
from sklearn import metrics as sk_metrics

from dicofun import checkpoint
from dicofun import fileio
from dicofun import interrupt
from dicofun import parallel
from dicofun import progress as progress_lib
from dicofun import summary as summary_lib
from dicofun import user_errors

PyTree = Any
EpochFn = Callable[[PyTree, int], tuple[PyTree, dict[str, Any]]]
EvaluateFn = Callable[[PyTree, int], Optional[dict[str, Any]]]

CHECKPOINT_DIR = "checkpoints"  # Under the workdir.
TRAIN_CKPT = "train_ckpt"  # Under CHECKPOINT_DIR: the orbax steps.
HISTORY_FILE = "history.json"  # Under CHECKPOINT_DIR.
FINGERPRINT_FILE = "fingerprint.json"  # Under CHECKPOINT_DIR.
KEEP_CHECKPOINTS = 2  # The latest and a previous one to fall back to.
# Where DiCo kept its training checkpoints before this loop (not resumed).
_LEGACY_CKPT = "train_ckpt"
EVAL_PREFIX = "test_"  # Evaluation values in a history row.
ORACLE_NOTE = ("TEST-SELECTED (oracle) epoch: chosen by (image AUROC + pixel "
               "AUROC) / 2 on the test set, as the reference code selects; "
               "not a valid result (the reported result is the last epoch)")
ORACLE_CRITERION = "(test image AUROC + test pixel AUROC) / 2"
# Key of the anomaly-map figure an evaluation may return: an (H, W, 3) uint8
# image, written to TensorBoard and kept out of the history.
FIGURE = "figure"
FIGURE_TAG = "history/anomaly_maps"


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


@dataclasses.dataclass(frozen=True)
class Budget:
  """The length of a run and the unit of ``run_loop``'s rounds.

  ``run_loop`` runs ``rounds`` rounds of ``round_steps`` iterations each;
  global iteration g is position ``g % iters_per_epoch`` of epoch
  ``g // iters_per_epoch`` (a fresh permutation of the training images per
  epoch), so a round is a pure function of (state, round) whatever its size.

  Attributes:
    iters_per_epoch: iterations per pass over the training images.
    total_steps: iterations of the whole run.
    round_steps: iterations per round of the loop (one history row).
    eval_every: evaluate every this many rounds (0: after the last only).
    checkpoint_every: checkpoint every this many rounds (0: the last only).
    in_steps: the budget is counted in steps; else in epochs, one round per
      epoch.
  """
  iters_per_epoch: int
  total_steps: int
  round_steps: int
  eval_every: int
  checkpoint_every: int
  in_steps: bool

  @property
  def rounds(self) -> int:
    return self.total_steps // self.round_steps


def budget(*, iters_per_epoch: int, epochs: int, steps: int = 0,
           min_epochs: int = 0, eval_every: int,
           checkpoint_every: int) -> Budget:
  """A run's ``Budget``: in epochs (``steps`` = 0) or in optimiser steps.

  Epochs: ``epochs`` passes, a round per epoch, ``eval_every`` and
  ``checkpoint_every`` in epochs. Steps: max(``steps``, ``min_epochs``
  passes) iterations, whatever the training-set size; a round is
  gcd(``eval_every``, ``checkpoint_every``) iterations (the whole run when
  both are 0) and the total is rounded up to whole rounds.
  """
  iters = max(int(iters_per_epoch), 1)
  every_e, every_c = int(eval_every), int(checkpoint_every)
  if int(steps) <= 0:
    return Budget(iters_per_epoch=iters, total_steps=int(epochs) * iters,
                  round_steps=iters, eval_every=every_e,
                  checkpoint_every=every_c, in_steps=False)
  total = max(int(steps), int(min_epochs) * iters)
  k = math.gcd(every_e, every_c) or total
  total = -(-total // k) * k
  return Budget(iters_per_epoch=iters, total_steps=total, round_steps=k,
                eval_every=every_e // k, checkpoint_every=every_c // k,
                in_steps=True)


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


def figure_indices(labels: np.ndarray, k: int = 2) -> np.ndarray:
  """The evaluation images of the live anomaly-map figure: the first ``k``
  anomalous and the first ``k`` normal ones (fixed, so epochs compare)."""
  labels = np.asarray(labels).reshape(-1)
  return np.concatenate([np.flatnonzero(labels == 1)[:k],
                         np.flatnonzero(labels == 0)[:k]]).astype(np.int64)


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
  if "step" in best:
    oracle["step"] = best["step"]
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


class ResumeMismatchError(user_errors.UserError, ValueError):
  """A workdir's checkpoint belongs to a run with a different training config."""


# Fields of the method block that do not change what is trained: the length
# of the run (a resumed run may extend it), schedules and scoring batch sizes.
# Fields that change how, not what, training computes (DiCo's target cache
# gives the same function) stay out of the fingerprint.
# DiCo's scoring settings (the image score, the blur, inference-time masks)
# only read the trained model, so a finished run can be re-scored with others.
_NOT_TRAINING = frozenset({"epochs", "steps", "min_epochs", "eval_every", "checkpoint_every",
                           "eval_batch_size", "transductive", "cache_targets",
                           "score_mode", "kappa",
                           "topk_fraction", "k_masks", "k_masks_combine",
                           "score_levels", "bank_weight", "bank_coreset",
                           "bank_denoise", "bank_trust"})
# Method-block fields added after runs were stored, with the value that
# reproduces the code before them: at that value they are left out, so those
# runs' checkpoints still resume (and can be re-scored).
# Keys are field names, or "<method>.<field>" where another method has a field
# of that name.
_ADDED_AT_DEFAULT = {"bottleneck_stride": 0, "dico.warmup_steps": 0}
# Method-block fields removed from the config, with the one value the code
# after their removal computes: a checkpoint that recorded them at it resumes.
_REMOVED_AT_DEFAULT = {"mask_fill": "zero", "flat_weight": 0.0,
                       "feature_masking": False}
_DATASET_FIELDS = ("name", "category", "root", "contamination",
                   "contamination_seed", "image_size", "crop_fraction",
                   "synthetic", "folder")
# Dataset blocks that count only for their own dataset, so adding one does not
# change the fingerprint of runs on the others.
_DATASET_OWN_FIELDS = {"elpv": ("elpv",)}
# The features a method trains on depend on these (vit_local_average only
# shapes the PatchCore layout, which no trained method uses).
_BACKBONE_FIELDS = ("name", "weights", "layer", "norm_intermediate")


def _plain(x: Any) -> Any:
  if isinstance(x, ml_collections.ConfigDict):
    x = x.to_dict()
  if isinstance(x, dict):
    return {str(k): _plain(v) for k, v in sorted(x.items())}
  if isinstance(x, (list, tuple)):
    return [_plain(v) for v in x]
  if isinstance(x, np.generic):
    return x.item()
  return x


def _flat_items(prefix: str, x: Any, out: dict[str, Any]) -> None:
  if isinstance(x, dict):
    for k, v in x.items():
      _flat_items(f"{prefix}.{k}", v, out)
  else:
    out[prefix] = x


def training_fingerprint(config: ml_collections.ConfigDict, method: str, *,
                         extra: Optional[Mapping[str, Any]] = None
                         ) -> dict[str, Any]:
  """The config fields that affect training, and their hash.

  Args:
    config: the run config.
    method: the name of the method block (``config.<method>``).
    extra: more values that affect training (name → JSON-able value), e.g.
      the run length of a learning-rate schedule that depends on it.

  Returns:
    ``{"hash": sha256 hex, "values": {"funad.lr": 2e-05, "dataset.name":
    ...}}`` over the method block (without its epoch count, schedules and
    scoring batch size), the dataset's identity (name, category, root,
    contamination and its seed, image size, crop, synthetic/folder settings,
    ELPV's settings on ELPV),
    the backbone (name, weights, layer, intermediate LayerNorm) and the
    seed. Eval and logging
    fields are not part of it. Missing fields are left out.
  """
  values: dict[str, Any] = {}
  block = _plain(config.get(method) or {})
  missing = object()

  def added_at_default(k, v):
    return any(_ADDED_AT_DEFAULT.get(name, missing) == v
               for name in (k, f"{method}.{k}"))

  _flat_items(method, {k: v for k, v in block.items()
                       if k not in _NOT_TRAINING
                       and not added_at_default(k, v)}, values)
  for name, fields in (("dataset", _DATASET_FIELDS),
                       ("backbone", _BACKBONE_FIELDS)):
    sub = config.get(name)
    if name == "dataset" and sub is not None:
      fields += _DATASET_OWN_FIELDS.get(sub.get("name"), ())
    for k in fields:
      if sub is not None and k in sub:
        _flat_items(f"{name}.{k}", _plain(sub[k]), values)
  if "seed" in config:
    values["seed"] = _plain(config.seed)
  values.update(extra or {})
  values = json.loads(json.dumps(values, sort_keys=True))
  digest = hashlib.sha256(
      json.dumps(values, sort_keys=True).encode()).hexdigest()
  return {"hash": digest, "values": values}


def _check_fingerprint(path: str, fingerprint: dict[str, Any], *,
                       epoch: int, ckpt_root: str) -> None:
  """Raises ResumeMismatchError when the stored fingerprint differs."""
  if not os.path.exists(path):
    logging.warning("%s holds a checkpoint but no %s; resuming without the "
                    "config check", ckpt_root, FINGERPRINT_FILE)
    return
  with open(path) as f:
    stored = json.load(f)
  if stored.get("hash") == fingerprint["hash"]:
    return
  old, new = stored.get("values", {}), fingerprint["values"]
  missing = object()
  # A field a checkpoint recorded that no longer counts for training (it
  # joined _NOT_TRAINING after the checkpoint was written), or that was
  # removed from the config at the value the code still computes, is no
  # difference.
  dropped = {k for k in set(old) - set(new)
             if k.rsplit(".", 1)[-1] in _NOT_TRAINING
             or _REMOVED_AT_DEFAULT.get(k.rsplit(".", 1)[-1], missing)
             == old[k]}
  diffs = [f"{k}: {old.get(k, '<absent>')!r} (checkpoint) vs "
           f"{new.get(k, '<absent>')!r} (now)"
           for k in sorted((set(old) | set(new)) - dropped)
           if old.get(k, missing) != new.get(k, missing)]
  if not diffs and stored.get("values") is not None:
    return
  raise ResumeMismatchError(
      f"{ckpt_root} holds a training checkpoint (epoch {epoch}) of a run with "
      f"a different config, so it cannot be resumed: "
      f"{'; '.join(diffs) or 'fingerprint hash differs'}. Either run in a "
      "new directory (--workdir=<new dir>), or delete these checkpoints and "
      "train from scratch with --config.restart=True.")


def _check_resumable(ckpt: checkpoint.TrainCheckpointer, fp_path: str,
                     fingerprint: Optional[dict[str, Any]], *, epochs: int,
                     ckpt_root: str) -> None:
  """Raises ResumeMismatchError when the checkpoint is not this run's."""
  latest = ckpt.latest_epoch()
  if latest is None:
    return
  if fingerprint is not None:
    _check_fingerprint(fp_path, fingerprint, epoch=latest,
                       ckpt_root=ckpt_root)
  if latest > epochs:
    raise ResumeMismatchError(
        f"{ckpt_root} holds a training checkpoint at epoch {latest}, past "
        f"the {epochs} epochs of this config. Either run in a new "
        "directory (--workdir=<new dir>), or delete these checkpoints and "
        "train from scratch with --config.restart=True.")


def _sync(name: str) -> None:
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def _due(epoch: int, every: int, last: bool) -> bool:
  """After epoch ``epoch`` (1-based): every ``every``-th and the last."""
  return last or (every > 0 and epoch % every == 0)


def run_loop(*, state: PyTree, epochs: int, epoch_fn: EpochFn,
             evaluate_fn: Optional[EvaluateFn] = None,
             workdir: Optional[str] = None, checkpoint_every: int = 1,
             eval_every: int = 0,
             place: Optional[Callable[[PyTree], PyTree]] = None,
             fingerprint: Optional[dict[str, Any]] = None,
             restart: bool = False,
             desc: str = "epochs",
             summary_dir: Optional[str] = None,
             images_per_epoch: Optional[int] = None,
             step_of: Optional[Callable[[int], int]] = None) -> LoopResult:
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
    fingerprint: ``training_fingerprint(config, method)``; stored beside
      the checkpoint and compared on resume (None: no check).
    restart: delete ``<workdir>/checkpoints`` first and train from scratch.
    desc: label of the progress lines and log messages.
    summary_dir: write live TensorBoard events there (module docstring;
      None: none).
    images_per_epoch: training images one epoch processes, for
      ``speed/images_per_second`` (None: not written).
    step_of: completed epochs → completed optimiser steps: every history
      row (and the oracle) then carries ``"step"``, TensorBoard's x axis.

  Returns:
    A ``LoopResult``.

  Raises:
    ResumeMismatchError: the workdir's checkpoint was written under a
      different ``fingerprint``, or is past ``epochs``.
    checkpoint.CheckpointRestoreError: no checkpoint step can be restored.
    interrupt.Interrupted: Ctrl-C; the checkpoints are complete (module
      docstring).
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
    if os.path.isdir(os.path.join(workdir, _LEGACY_CKPT)):
      logging.warning(
          "%s is a training checkpoint of the old layout; it is not resumed "
          "(checkpoints now live in %s)", os.path.join(workdir, _LEGACY_CKPT),
          ckpt_root)
    hist_path = os.path.join(ckpt_root, HISTORY_FILE)
    fp_path = os.path.join(ckpt_root, FINGERPRINT_FILE)
    if restart:
      if parallel.is_main_process() and os.path.exists(ckpt_root):
        logging.warning("restart: deleting the training checkpoints in %s",
                        ckpt_root)
        shutil.rmtree(ckpt_root)
      _sync("dicofun_training_restart")  # Every process: same config.
    ckpt = checkpoint.TrainCheckpointer(
        ckpt_root, every=int(checkpoint_every), keep_best=False,
        subdir=TRAIN_CKPT, keep_latest=KEEP_CHECKPOINTS)
    try:
      _check_resumable(ckpt, fp_path, fingerprint, epochs=epochs,
                       ckpt_root=ckpt_root)
      host_template = jax.tree_util.tree_map(
          np.asarray, parallel.tree_to_host(template))
      restored, start = ckpt.restore_or(flatten(host_template))
    except Exception:
      ckpt.close()
      raise
    if start:
      state = unflatten(template, restored)
      if os.path.exists(hist_path):
        with open(hist_path) as f:
          history = [r for r in json.load(f) if r["epoch"] <= start]
      logging.info("%s: resumed after epoch %d from %s", desc, start,
                   ckpt.directory)
    if fingerprint is not None and parallel.is_main_process() and (
        not start or not os.path.exists(fp_path)):
      fileio.write_json_atomic(fp_path, fingerprint)
  state = place(state)

  writer = None
  if summary_dir is not None:
    writer = summary_lib.SummaryWriter(
        summary_dir, enabled=parallel.is_main_process(),
        filename_suffix=".train")
  try:
    t_loop = time.time()
    # One process stopping on its own would leave the others in a collective.
    with interrupt.deferred(enabled=jax.process_count() == 1) as deferral:
      state, epoch_seconds = _epochs(
          state=state, start=start, epochs=epochs, epoch_fn=epoch_fn,
          evaluate_fn=evaluate_fn, eval_every=eval_every, history=history,
          ckpt=ckpt, hist_path=hist_path, writer=writer,
          images_per_epoch=images_per_epoch, desc=desc, deferral=deferral,
          step_of=step_of)
  finally:
    if writer is not None:
      writer.close()
    if ckpt is not None:
      ckpt.close()
  return LoopResult(state=state, history=history,
                    oracle=select_oracle(history), start_epoch=start,
                    epoch_seconds=epoch_seconds,
                    train_seconds=time.time() - t_loop)


def _write_epoch(writer: summary_lib.SummaryWriter, row: dict[str, Any],
                 figure: Optional[np.ndarray], seconds: float,
                 images_per_epoch: Optional[int]) -> None:
  """One epoch's TensorBoard events, flushed (see the module docstring)."""
  step = int(row.get("step", row["epoch"]))
  for k, v in row.items():
    numeric = isinstance(v, (int, float, np.number))
    if k not in ("epoch", "step") and numeric and not isinstance(v, (bool, np.bool_)):
      writer.scalar(f"history/{k}", float(v), step)
  writer.scalar("speed/epoch_seconds", seconds, step)
  if images_per_epoch:
    writer.scalar("speed/images_per_second",
                  images_per_epoch / max(seconds, 1e-9), step)
  if figure is not None:
    writer.image(FIGURE_TAG, figure, step)
  writer.flush()


def _epochs(*, state, start, epochs, epoch_fn, evaluate_fn, eval_every,
            history, ckpt, hist_path, writer, images_per_epoch, desc,
            deferral=None, step_of=None):
  """The epochs of ``run_loop``: ``(final state, each epoch's seconds)``."""
  epoch_seconds: list[float] = []
  saved = start  # Completed epochs the newest checkpoint holds (0: none).
  for epoch in progress_lib.progress(range(start, epochs),
                                     total=max(epochs - start, 0), desc=desc):
    if deferral is not None:
      # Stopping mid-epoch loses nothing when the epoch before is saved
      # (or there is nothing to save): resume runs this epoch again.
      deferral.steps_may_stop = ckpt is None or saved == epoch
    t0 = time.time()
    state, metrics = epoch_fn(state, epoch)
    epoch_seconds.append(time.time() - t0)
    if deferral is not None:
      deferral.steps_may_stop = False
    done = epoch + 1
    last = done == epochs
    row: dict[str, Any] = {"epoch": done}
    if step_of is not None:
      row["step"] = int(step_of(done))
    row.update({k: float(v) for k, v in metrics.items()})
    figure = None
    if evaluate_fn is not None and _due(done, eval_every, last):
      evaluation = dict(evaluate_fn(state, done) or {})
      figure = evaluation.pop(FIGURE, None)
      row.update({EVAL_PREFIX + k: v for k, v in evaluation.items()})
    history.append(row)
    if writer is not None:
      _write_epoch(writer, row, figure, epoch_seconds[-1], images_per_epoch)
    logging.info("%s %d/%d: %s", desc, done, epochs,
                 {k: (round(v, 5) if isinstance(v, float) else v)
                  for k, v in row.items() if _is_scalar(v)})
    stop = deferral is not None and interrupt.requested()
    if ckpt is not None and (_due(done, ckpt.every, last) or stop):
      # History first: a run killed between the two resumes from the previous
      # checkpoint and keeps only the history rows up to it.
      if parallel.is_main_process():
        fileio.write_json_atomic(hist_path, history)
      ckpt.maybe_save(done, flatten(parallel.tree_to_host(state)), force=True)
      saved = done
    if stop:
      interrupt.check(f"interrupted after epoch {done} of {epochs}"
                      + (" (checkpointed)" if ckpt is not None else ""))
  return state, epoch_seconds
