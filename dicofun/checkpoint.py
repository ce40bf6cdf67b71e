"""Checkpoints (orbax): training resume and self-contained inference state.

Two kinds of checkpoint live in a run's workdir:

* ``<workdir>/checkpoints/train_ckpt``: periodic training checkpoints of a
  method with a training loop (FUN-AD, DiCo; written by
  ``dicofun.training.run_loop``). ``TrainCheckpointer`` saves every
  ``every`` epochs, keeps the latest ``keep_latest`` and the best (by a
  metric when one is given), and restores the latest automatically, so a run
  started again with the same ``--workdir`` resumes where it stopped. A step
  that cannot be restored (truncated or corrupted files) is logged with its
  path and moved aside to ``train_ckpt.corrupt/``, and the previous step is
  restored instead.
* ``<workdir>/model``: the inference checkpoint written by the runner at the
  end of a run. It holds everything inference needs — the method's state
  (parameters, memory bank or items, normalisation statistics), the decision
  threshold and the config — so ``experiments/predict.py`` can score new
  images from it alone, without the training data.

All processes take part in saving (orbax coordinates multi-host saves);
orbax writes atomically (temporary directory + rename), so an interrupted save
never leaves a checkpoint that restores half-written; the temporary
directories such a save leaves behind are removed when the next run opens the
checkpoint directory.
"""

from __future__ import annotations

import os
from typing import Any, Optional

from absl import logging
import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as ocm

from dicofun import user_errors

PyTree = Any


class CheckpointRestoreError(user_errors.UserError, RuntimeError):
  """No step of a training-checkpoint directory can be restored."""


def _arrays(tree: PyTree) -> PyTree:
  """numpy / Python scalars → 0-d arrays (orbax saves arrays only)."""
  return jax.tree_util.tree_map(
      lambda x: np.asarray(x) if isinstance(x, (np.generic, int, float)) else x,
      tree)


def _to_host(tree: PyTree) -> PyTree:
  """Fully replicated / addressable arrays → numpy (what orbax restores)."""
  return jax.tree_util.tree_map(
      lambda x: np.asarray(x) if isinstance(x, (jax.Array, np.ndarray)) else x,
      tree)


class TrainCheckpointer:
  """Periodic training checkpoints with automatic resume.

  Usage::

    ckpt = TrainCheckpointer(workdir, every=10)
    state, start_epoch = ckpt.restore_or(state)
    for epoch in range(start_epoch, epochs):
      state = train_epoch(state)
      ckpt.maybe_save(epoch + 1, state, metrics={"score": s})
    ckpt.close()

  The saved epoch is the number of *completed* epochs, so resuming starts at
  that epoch. ``state`` is any pytree of arrays (train state, rng, carried
  scores); its structure is the restore template.
  """

  def __init__(self, workdir: str, *, every: int = 1, keep_best: bool = True,
               best_metric: str = "score", best_mode: str = "max",
               subdir: str = "train_ckpt", keep_latest: int = 1):
    self.every = max(int(every), 1)
    self.best_metric = best_metric
    policies = [ocm.LatestN(max(int(keep_latest), 1))]
    if keep_best:
      policies.append(ocm.BestN(
          get_metric_fn=lambda m: m[best_metric], reverse=best_mode == "min",
          n=1, keep_checkpoints_without_metrics=False))
    options = ocp.CheckpointManagerOptions(
        preservation_policy=ocm.AnyPreservationPolicy(policies),
        enable_async_checkpointing=False, create=True,
        # A save killed half-way leaves a temporary directory: remove it.
        cleanup_tmp_directories=True)
    self.directory = os.path.abspath(os.path.join(workdir, subdir))
    self._manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_epoch(self) -> Optional[int]:
    return self._manager.latest_step()

  def restore_or(self, state: PyTree) -> tuple[PyTree, int]:
    """Returns (restored state, completed epochs), or (state, 0) if none.

    The newest step is tried first; a step whose files are truncated or
    corrupted is logged (with its path), moved aside to
    ``<directory>.corrupt/`` and the previous step is tried.

    Raises:
      CheckpointRestoreError: naming the directory, when steps exist but
        none of them can be restored.
    """
    steps = sorted(self._manager.all_steps(), reverse=True)
    if not steps:
      return state, 0
    abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct,
                                      _arrays(state))
    failed = []
    for step in steps:
      path = os.path.join(self.directory, str(step))
      try:
        restored = self._manager.restore(
            step, args=ocp.args.StandardRestore(abstract))
      except Exception as e:  # pylint: disable=broad-except
        # Orbax / TensorStore raise many types for damaged files; all of
        # them mean "this step is unusable".
        logging.error(
            "Training checkpoint %s (epoch %d) cannot be restored: it is "
            "truncated or corrupted (%s: %s). Falling back to the previous "
            "checkpoint.", path, step, type(e).__name__,
            str(e).splitlines()[0] if str(e) else "")
        failed.append(step)
        continue
      self._set_aside(failed)
      logging.info("Resumed from %s at epoch %d", self.directory, step)
      return restored, int(step)
    raise CheckpointRestoreError(
        f"no step of the training checkpoint directory {self.directory} can "
        f"be restored (tried epochs {steps}; their files are truncated or "
        "corrupted). Start again with a new --workdir, or with "
        "--config.restart=True to delete these checkpoints.")

  def _set_aside(self, steps: list[int]) -> None:
    """Moves unrestorable steps out of the way, so they can be saved again."""
    if not steps:
      return
    if jax.process_index() == 0:
      aside = self.directory + ".corrupt"
      os.makedirs(aside, exist_ok=True)
      for step in steps:
        target = os.path.join(aside, str(step))
        n = 0
        while os.path.exists(target):
          n += 1
          target = os.path.join(aside, f"{step}.{n}")
        os.rename(os.path.join(self.directory, str(step)), target)
        logging.warning("Moved the corrupted checkpoint of epoch %d to %s",
                        step, target)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices("dicofun_ckpt_set_aside")
    self._manager.reload()

  def maybe_save(self, epoch: int, state: PyTree, *,
                 metrics: Optional[dict[str, float]] = None,
                 force: bool = False) -> bool:
    """Saves when ``epoch`` is a multiple of ``every`` (or ``force``)."""
    if not force and epoch % self.every:
      return False
    m = None
    if metrics is not None and self.best_metric in metrics:
      m = {k: float(v) for k, v in metrics.items()}
    saved = self._manager.save(epoch, args=ocp.args.StandardSave(_arrays(state)),
                               metrics=m, force=True)
    self._manager.wait_until_finished()
    return bool(saved)

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def save_inference(workdir: str, *, state: PyTree,
                   config: ml_collections.ConfigDict,
                   threshold: Optional[float], meta: Optional[dict[str, Any]] = None,
                   subdir: str = "model") -> str:
  """Writes the self-contained inference checkpoint of a finished run.

  Args:
    workdir: the run's directory.
    state: the method's inference pytree (arrays only).
    config: the run config (stored as JSON; reloaded by ``load_inference``).
    threshold: image-score decision threshold (None: none could be chosen).
    meta: extra JSON-able information (threshold rule, score statistics).
    subdir: checkpoint directory name under ``workdir``.

  Returns:
    The checkpoint directory.
  """
  path = os.path.abspath(os.path.join(workdir, subdir))
  manager = ocp.CheckpointManager(
      path, options=ocp.CheckpointManagerOptions(
          max_to_keep=1, enable_async_checkpointing=False, create=True))
  info = dict(meta or {})
  info.update(threshold=None if threshold is None else float(threshold), config=config.to_dict(),
              method=config.method)
  step = (manager.latest_step() or 0) + 1
  manager.save(step, args=ocp.args.Composite(
      state=ocp.args.StandardSave(_arrays(_to_host(state))),
      meta=ocp.args.JsonSave(_json_safe(info))), force=True)
  manager.wait_until_finished()
  manager.close()
  return path


def load_inference(workdir: str, *, subdir: str = "model"
                   ) -> tuple[PyTree, ml_collections.ConfigDict, dict[str, Any]]:
  """Loads (state, config, meta) written by ``save_inference``.

  Raises:
    FileNotFoundError: naming the directory when the run has no checkpoint.
  """
  path = os.path.abspath(os.path.join(workdir, subdir))
  if not os.path.isdir(path):
    raise FileNotFoundError(
        f"no inference checkpoint at {path}: expected the --out folder of "
        "`dicofun inspect` or the --workdir of a finished `dicofun run`")
  manager = ocp.CheckpointManager(
      # Not read_only=True: orbax then logs two warnings on every load.
      path, options=ocp.CheckpointManagerOptions(create=False))
  step = manager.latest_step()
  if step is None:
    raise FileNotFoundError(f"checkpoint directory {path} holds no checkpoint")
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore()))
  manager.close()
  meta = dict(restored["meta"])
  config = ml_collections.ConfigDict(meta.pop("config"))
  return restored["state"], config, meta


def _json_safe(x: Any) -> Any:
  if isinstance(x, dict):
    return {str(k): _json_safe(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_json_safe(v) for v in x]
  if isinstance(x, (np.floating, np.integer, np.bool_)):
    return x.item()
  if isinstance(x, np.ndarray):
    return x.tolist()
  return x
