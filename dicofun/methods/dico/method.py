"""DiCo: discrepancy constraint learning (METHODS §2).

A frozen pretrained encoder gives multi-level targets T_k of the clean image;
the masked image goes through the same encoder, a trainable bottleneck, a
dynamic memory and a decoder that reconstructs R_k. Training minimises the
hierarchical cosine discrepancy plus the memory losses; at test time the
discrepancy map of the unmasked image is the anomaly map and the adaptive
score (mean of the pixels above μ + κσ) the image score.

Modules: ``model`` (networks, momentum update), ``masking``, ``losses``,
``scoring`` (maps, adaptive score), ``step`` (state, jitted train step and
scoring), ``config`` (config files' helper).

Entry points for the runner: ``default_config()``, ``run(config, data,
workdir)`` and ``predict(config, state, records)``.

Run (see configs/dico_*.py)::

  python experiments/main.py --config=configs/dico_synthetic.py:runlocal \
      --workdir=runs/dico_synthetic
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable, Iterator, Optional

from absl import logging
import jax
import ml_collections
import numpy as np

from dicofun import api
from dicofun import interrupt
from dicofun import parallel
from dicofun import summary
from dicofun import training
from dicofun import viz
from dicofun.data import pipeline
from dicofun.methods.dico import config as dico_config
from dicofun.methods.dico import model as model_lib
from dicofun.methods.dico import scoring
from dicofun.methods.dico import step as step_lib


def step_config(cfg: ml_collections.ConfigDict) -> step_lib.StepConfig:
  """The static ``StepConfig`` of ``config.dico``."""
  return step_lib.StepConfig(
      levels=tuple(cfg.levels), masking=bool(cfg.masking),
      mask_ratio=float(cfg.mask_ratio), mask_patch=int(cfg.mask_patch),
      compact_weight=float(cfg.compact_weight),
      entropy_weight=float(cfg.entropy_weight), momentum=float(cfg.momentum),
      blur_sigma=float(cfg.blur_sigma), score_mode=str(cfg.score_mode),
      kappa=float(cfg.kappa), topk_fraction=float(cfg.topk_fraction),
      k_masks=int(cfg.k_masks),
      k_masks_combine=str(cfg.k_masks_combine),
      score_levels=dico_config.score_levels(cfg))


def build_net(cfg: ml_collections.ConfigDict,
              channels: dict[str, int]) -> model_lib.DiCoNet:
  """The trainable network of ``config.dico`` for an encoder's channels."""
  levels = tuple(cfg.levels)
  return model_lib.DiCoNet(
      levels=levels, enc_channels={k: int(channels[k]) for k in levels},
      bottleneck_channels=int(cfg.bottleneck_channels),
      bottleneck_stride=int(cfg.get("bottleneck_stride", 0)),
      memory_size=int(cfg.memory_size), temperature=float(cfg.temperature),
      shrink=float(cfg.shrink) if cfg.shrink else None)


def _place_global(mesh, x: np.ndarray):
  """Puts a global batch (the same on every process) on the data axis."""
  return parallel.global_batch(mesh, x)


def epoch_batch_indices(n: int, batch_size: int, seed: int
                        ) -> list[np.ndarray]:
  """The global batches of one epoch: sorted training-set indices.

  ``permutation(n)`` of ``default_rng(seed)`` cut into ``n // batch_size``
  batches (the remainder is dropped), each sorted. The in-memory and the
  streaming path, on any number of processes, train on these batches.
  """
  order = np.random.default_rng(seed).permutation(n)
  return [np.sort(order[b * batch_size:(b + 1) * batch_size])
          for b in range(n // batch_size)]


def budget(cfg: ml_collections.ConfigDict,
           steps_per_epoch: int) -> training.Budget:
  """The run length of ``config.dico`` (``training.budget``)."""
  return training.budget(
      iters_per_epoch=steps_per_epoch, epochs=int(cfg.epochs),
      steps=int(cfg.get("steps", 0)), min_epochs=int(cfg.get("min_epochs", 0)),
      eval_every=int(cfg.eval_every),
      checkpoint_every=int(cfg.checkpoint_every))


def fingerprint_extra(cfg: ml_collections.ConfigDict,
                      plan: training.Budget) -> Optional[dict[str, int]]:
  """What of the budget changes training (``training_fingerprint``'s extra).

  The round count is not part of the fingerprint (a run may be extended),
  but a cosine schedule's length is, and so is the size of a round of a step
  budget (a checkpoint counts rounds) (ours).
  """
  extra = {}
  if str(cfg.get("lr_schedule", "constant")) != "constant":
    extra["dico.total_steps"] = plan.total_steps
  if plan.in_steps:
    extra["dico.round_steps"] = plan.round_steps
  return extra or None


def train(cfg: ml_collections.ConfigDict, *, encoder: step_lib.Encoder,
          epoch_batches: Callable[[int, int, int], Iterator[np.ndarray]],
          first_batch: np.ndarray, seed: int = 0,
          workdir: Optional[str] = None,
          evaluate: Optional[Callable[[Any, int], dict[str, float]]] = None,
          mesh: Optional[jax.sharding.Mesh] = None,
          place: Optional[Callable[[np.ndarray], Any]] = None,
          fingerprint: Optional[dict[str, Any]] = None,
          restart: bool = False,
          steps_per_epoch: int,
          summary_dir: Optional[str] = None,
          images_per_epoch: Optional[int] = None
          ) -> tuple[dict[str, Any], dict[str, Any]]:
  """Trains DiCo with ``training.run_loop`` (resumes from ``<workdir>/checkpoints``).

  The run length is ``training.budget``'s: ``cfg.epochs`` passes, a round of
  the loop per epoch (the paper), or ``cfg.steps`` optimiser steps (at least
  ``cfg.min_epochs`` passes) in rounds of gcd(``eval_every``,
  ``checkpoint_every``) steps **(ours)**. Global step g is batch
  ``g % steps_per_epoch`` of epoch ``g // steps_per_epoch`` with the masks of
  that (epoch, batch), so a round is a pure function of (state, round).

  Args:
    cfg: ``config.dico``.
    encoder: the frozen encoder.
    epoch_batches: ``(epoch, start, stop) -> iterator`` over batches
      ``start .. stop - 1`` of that epoch: (B, H, W, 3) normalised batches
      of a fixed size (the global batch, or this process's part when
      ``place`` assembles global arrays), or ``(images, targets)`` pairs
      whose cached targets ``{level: (B, h, w, C)}`` replace the clean
      encoder pass (``step_lib.compute_targets``).
    first_batch: a batch used to initialise the parameters and memory items.
    seed: PRNG seed.
    workdir: the run's directory (None: no checkpoints).
    evaluate: optional ``(variables, epoch) -> metrics`` run every
      ``cfg.eval_every`` epochs and after the last one.
    mesh: optional ``data`` mesh.
    place: puts a batch on devices (default: as is / on the mesh).
    fingerprint: ``training.training_fingerprint(config, "dico",
      extra=fingerprint_extra(...))``, checked against the checkpoint's on
      resume (None: no check).
    restart: delete the workdir's training checkpoints first.
    steps_per_epoch: batches per epoch.
    summary_dir: live TensorBoard events go there (``training.run_loop``;
      an ``evaluate`` result may carry ``training.FIGURE``).
    images_per_epoch: training images per epoch (``steps_per_epoch`` full
      batches), for the images/s scalar.

  Returns:
    ``(variables, info)``: ``{"params", "batch_stats"}`` on the host and a
    dict with ``history`` (one row per round: ``step``, losses and, on
    evaluated rounds, ``test_*`` values), ``oracle``, ``losses``,
    ``budget`` (the ``training.Budget``), ``epochs``, ``steps``,
    ``train_seconds``, ``compilations``.
  """
  net = build_net(cfg, encoder.channels)
  schedule = str(cfg.get("lr_schedule", "constant"))
  plan = budget(cfg, int(steps_per_epoch))
  spe, k = plan.iters_per_epoch, plan.round_steps
  warmup = (int(cfg.get("warmup_steps", 0))
            + int(cfg.get("warmup_epochs", 0)) * plan.iters_per_epoch)
  tx = step_lib.make_optimizer(
      lr=cfg.lr, b1=cfg.b1, b2=cfg.b2, schedule=schedule,
      total_steps=plan.total_steps, warmup_steps=warmup)
  logging.info("DiCo: %d steps (%.1f passes of %d batches) in %d rounds of "
               "%d", plan.total_steps, plan.total_steps / plan.iters_per_epoch,
               plan.iters_per_epoch, plan.rounds, k)
  scfg = step_config(cfg)
  key = jax.random.PRNGKey(seed)
  k_init, k_steps = jax.random.split(key)
  state = step_lib.init_state(net, encoder, tx, k_init,
                              np.asarray(first_batch, np.float32))
  if place is None:
    place = ((lambda x: _place_global(mesh, x)) if mesh is not None
             else (lambda x: x))
  train_step = step_lib.make_train_step(net, encoder, tx, scfg, mesh=mesh)

  def round_batches(rnd):
    # Global steps [rnd·k, (rnd + 1)·k) as (epoch, position, batch).
    g, stop = rnd * k, (rnd + 1) * k
    while g < stop:
      epoch, start = divmod(g, spe)
      end = min(spe, start + stop - g)
      for pos, batch in enumerate(epoch_batches(epoch, start, end), start):
        yield epoch, pos, batch
      g += end - start

  def epoch_fn(state, rnd):
    count = 0
    step_metrics = []
    for epoch, pos, batch in round_batches(rnd):
      interrupt.between_steps()  # Ctrl-C (``training.run_loop``).
      targets = None
      if isinstance(batch, tuple):
        batch, targets = batch
        targets = {key: place(np.asarray(v, np.float32))
                   for key, v in targets.items()}
      # A pure function of (epoch, batch): resumed runs see the same masks.
      rng = jax.random.fold_in(k_steps, epoch * 1_000_003 + pos)
      state, m = train_step(state, place(np.asarray(batch, np.float32)), rng,
                            targets=targets)
      step_metrics.append(m)
      count += 1
    sums: dict[str, Any] = {}
    for m in jax.device_get(step_metrics):
      for key, v in m.items():
        v = np.asarray(v, np.float64)
        sums[key] = sums[key] + v if key in sums else v
    row = {key: float(v) / max(count, 1) for key, v in sums.items()
           if key not in (step_lib.GATE_HIST, step_lib.ITEM_COUNTS)}
    if step_lib.ITEM_COUNTS in sums:
      # Gate quantiles and item usage over the whole round.
      row.update(model_lib.memory_diagnostics(sums[step_lib.GATE_HIST],
                                              sums[step_lib.ITEM_COUNTS]))
    return state, row

  evaluate_fn = None
  if evaluate is not None:
    def evaluate_fn(state, epoch):
      return evaluate({"params": state["params"],
                       "batch_stats": state["batch_stats"]}, epoch)

  def place_state(state):
    if mesh is None:
      return state
    return jax.device_put(state, parallel.replicated(mesh))

  batch = images_per_epoch // spe if images_per_epoch and spe else None
  loop = training.run_loop(
      state=state, epochs=plan.rounds, epoch_fn=epoch_fn,
      evaluate_fn=evaluate_fn, workdir=workdir,
      checkpoint_every=plan.checkpoint_every,
      eval_every=plan.eval_every, place=place_state,
      fingerprint=fingerprint, restart=restart,
      desc="DiCo rounds" if plan.in_steps else "DiCo epochs",
      summary_dir=summary_dir,
      images_per_epoch=k * batch if batch else None,
      step_of=lambda done: done * k)
  state = loop.state
  variables = parallel.tree_to_host({"params": state["params"],
                        "batch_stats": state["batch_stats"]})
  losses = [{k: v for k, v in row.items()
             if not k.startswith(training.EVAL_PREFIX)}
            for row in loop.history]
  info = {"history": loop.history, "oracle": loop.oracle, "losses": losses,
          "budget": plan, "steps": plan.total_steps,
          # Passes over the training images (a step budget's need not be
          # whole).
          "epochs": (int(cfg.epochs) if not plan.in_steps
                     else plan.total_steps / plan.iters_per_epoch),
          "resumed_from_round": loop.start_epoch,
          "train_seconds": loop.train_seconds,
          # Training only (no evaluation/checkpoint), first round (compile)
          # left out when others ran.
          "train_images_per_s": (
              k * batch / loop.seconds_per_epoch
              if batch and loop.seconds_per_epoch else None),
          "compilations": len(train_step.traces),
          "num_parameters": model_lib.tree_size(variables["params"])}
  return variables, info


def run(config: ml_collections.ConfigDict, data: api.RunData, workdir: str, *,
        encoder: Optional[step_lib.Encoder] = None,
        mean: Optional[tuple] = None, std: Optional[tuple] = None
        ) -> api.Predictions:
  """DiCo on ``data`` (the runner's entry point).

  Args:
    config: run config with ``config.dico``.
    data: the run's records.
    workdir: checkpoints and the loss / evaluation history go here.
    encoder: optional encoder override (tests); default: the backbone named
      by ``config.backbone.name``.
    mean: normalisation mean with ``encoder`` (default the backbone's).
    std: normalisation std with ``encoder``.

  Returns:
    Predictions; ``extra`` holds the budget (``steps``, ``epochs`` as
    passes, ``round_steps``; the result is the last step), the history (one
    row per round of the loop, an epoch of the faithful path: the step,
    losses, and the test-set evaluation on evaluated rounds) and the
    test-selected *oracle* round (labelled as such, not the reported result).
  """
  cfg = config.dico
  size = int(config.dataset.image_size)
  if encoder is None:
    encoder, bb = step_lib.encoder_from_backbone(
        config.backbone.name, weights=config.backbone.weights,
        levels=tuple(cfg.levels), image_size=size)
    mean, std = bb.mean, bb.std
  pre = pipeline.preprocess_for(config, mean=mean, std=std)
  mesh = parallel.make_mesh()
  ndev = mesh.size
  n = len(data.train)
  if n < ndev:
    raise ValueError(f"DiCo needs at least {ndev} training images (one per "
                     f"device), got {n}")
  bs = max(ndev, (min(int(cfg.batch_size), n) // ndev) * ndev)
  workers = int(config.dataset.num_workers)
  in_memory = n * size * size * 3 * 4 <= float(cfg.max_in_memory_gb) * 2**30
  train_images = None
  if in_memory:
    train_images = pipeline.load_arrays(
        data.train, pre, num_workers=workers, allow_missing_mask=True,
        desc="DiCo train images")["image"]
    targets = None
    if cfg.get("cache_targets", True):
      need = (n * size * size * 3 * 4
              + step_lib.target_bytes(encoder, size, n))
      if need <= float(cfg.max_in_memory_gb) * 2**30:
        targets = step_lib.compute_targets(
            step_lib.make_target_fn(encoder, mesh=mesh), train_images,
            batch_size=int(cfg.eval_batch_size), multiple=ndev,
            desc="DiCo cached targets")
      else:
        logging.warning(
            "DiCo: images + cached targets need %.2f GiB > max_in_memory_gb="
            "%s; recomputing the targets every step", need / 2**30,
            cfg.max_in_memory_gb)

    def epoch_batches(epoch, start, stop):
      for idx in epoch_batch_indices(n, bs, config.seed + epoch)[start:stop]:
        if targets is None:
          yield train_images[idx]
        else:
          yield train_images[idx], {k: v[idx] for k, v in targets.items()}

    first = train_images[:bs]
    place = None
  else:
    # Streaming: process p loads rows [p * local_bs, (p + 1) * local_bs) of
    # every global batch, so the global batches are those of the in-memory
    # path on any number of processes.
    pi, pc = jax.process_index(), jax.process_count()
    if bs % pc:
      raise ValueError(f"DiCo batch size {bs} is not divisible by the "
                       f"{pc} processes")
    local_bs = bs // pc

    def epoch_batches(epoch, start, stop):
      mine = [i for idx in epoch_batch_indices(n, bs,
                                               config.seed + epoch)[start:stop]
              for i in idx[pi * local_bs:(pi + 1) * local_bs]]
      for batch in pipeline.iterate_batches(
          [data.train[i] for i in mine], pre, batch_size=local_bs,
          shuffle=False, drop_last=True, process_index=0, process_count=1,
          num_workers=workers):
        yield batch["image"]

    # The same init batch on every process (as in the in-memory path): the
    # memory items are drawn from it.
    first = pipeline.load_arrays(data.train[:bs], pre, num_workers=workers,
                                 allow_missing_mask=True, with_masks=False,
                                 desc="DiCo init batch")["image"]
    place = lambda x: parallel.shard_batch(mesh, x)  # pylint: disable=unnecessary-lambda-assignment
  test = pipeline.load_arrays(data.test, pre, num_workers=workers,
                              allow_missing_mask=True,
                              desc="DiCo test images")
  net = build_net(cfg, encoder.channels)
  score_fn = step_lib.make_score_fn(net, encoder, step_config(cfg), mesh=mesh)
  ebs = int(cfg.eval_batch_size)

  # The history (and its labelled oracle) uses the no-overlap view only.
  keep = (np.ones(len(data.test), bool) if data.test_is_moved is None
          else ~np.asarray(data.test_is_moved, bool))

  summary_dir = None
  if config.eval.get("tensorboard", False) and workdir:
    summary_dir = os.path.join(workdir, summary.TENSORBOARD_DIR)
  pick = training.figure_indices(test["label"][keep])

  def evaluate(variables, epoch):
    del epoch
    s, m = step_lib.score_in_batches(
        score_fn, variables, test["image"][keep], batch_size=ebs,
        multiple=ndev, desc="DiCo test scoring")
    out = training.history_metrics(s, m, test["label"][keep],
                                   test["mask"][keep])
    # Only the writing process draws the figure.
    if summary_dir is not None and len(pick) and parallel.is_main_process():
      out[training.FIGURE] = viz.anomaly_maps_image(
          test["image"][keep][pick], test["mask"][keep][pick], m[pick],
          scores=s[pick], mean=pre.mean, std=pre.std)
    return out

  variables, info = train(cfg, encoder=encoder, epoch_batches=epoch_batches,
                          first_batch=first, seed=int(config.seed),
                          workdir=workdir,
                          # dicofun inspect runs without a test set.
                          evaluate=evaluate if data.test else None, mesh=mesh,
                          place=place,
                          fingerprint=training.training_fingerprint(
                              config, "dico", extra=fingerprint_extra(
                                  cfg, budget(cfg, n // bs))),
                          restart=bool(config.get("restart", False)),
                          steps_per_epoch=n // bs, summary_dir=summary_dir,
                          images_per_epoch=(n // bs) * bs)
  t1 = time.time()
  test_scores, test_maps = step_lib.score_in_batches(
      score_fn, variables, test["image"], batch_size=ebs, multiple=ndev,
      desc="DiCo test scoring")
  infer_s = time.time() - t1
  train_scores = train_maps = None
  want_maps = bool(config.eval.get("train_maps", False))
  if cfg.transductive:
    if train_images is None:
      # Large sets: score the training set in a stream of fixed batches.
      parts, map_parts = [], []
      for batch in pipeline.iterate_batches(
          data.train, pre, batch_size=ebs, shuffle=False, drop_last=False,
          process_index=0, process_count=1, num_workers=workers):
        part_scores, part_maps = step_lib.score_in_batches(
            score_fn, variables, batch["image"], batch_size=ebs,
            multiple=ndev)
        parts.append(part_scores)
        if want_maps:
          map_parts.append(part_maps)
      train_scores = np.concatenate(parts)
      train_maps = np.concatenate(map_parts) if want_maps else None
    else:
      train_scores, train_maps = step_lib.score_in_batches(
          score_fn, variables, train_images, batch_size=ebs, multiple=ndev,
          desc="DiCo train scoring")
      train_maps = train_maps if want_maps else None
  plan = info["budget"]
  extra: dict[str, Any] = {
      # The result is the last step; TensorBoard's x axis is the step.
      "result_step": plan.total_steps,
      "steps": plan.total_steps,
      # Passes over the training images (a step budget's need not be whole).
      "epochs": info["epochs"],
      "round_steps": plan.round_steps,
      "resumed_from_round": info["resumed_from_round"],
      # One row per round of the loop (an epoch of the faithful path):
      # ``step`` the steps done, ``epoch`` the rounds done, the round's mean
      # losses, test_* on evaluated rounds; the loop wrote each row to
      # TensorBoard (history/*, x = step) as it trained.
      "history": info["history"],
      "train_seconds": info["train_seconds"],
      "train_images_per_s": info.get("train_images_per_s"),
      "train_step_compilations": info["compilations"],
      "num_parameters": info["num_parameters"],
      "batch_size": bs,
      "devices": ndev,
      "inference_images_per_s": len(data.test) / max(infer_s, 1e-9),
  }
  if info["oracle"] is not None:
    extra["oracle"] = info["oracle"]
  return api.Predictions(test_scores=test_scores, test_maps=test_maps,
                         train_scores=train_scores, train_maps=train_maps,
                         extra=extra, state={"params": variables["params"],
                                "batch_stats": variables["batch_stats"]})


def predict(config: ml_collections.ConfigDict, state: dict[str, Any],
            records: list) -> tuple[np.ndarray, np.ndarray]:
  """Scores new images from the inference state alone (api contract).

  The images are loaded with the same preprocessing ``run`` used for the
  test set, so the scores are the same for the same images.
  """
  cfg = config.dico
  encoder, bb = step_lib.encoder_from_backbone(
      config.backbone.name, weights=config.backbone.weights,
      levels=tuple(cfg.levels), image_size=int(config.dataset.image_size))
  pre = pipeline.preprocess_for(config, mean=bb.mean, std=bb.std)
  images = pipeline.load_arrays(records, pre,
                                num_workers=int(config.dataset.num_workers),
                                allow_missing_mask=True, with_masks=False,
                                desc="DiCo predict images")["image"]
  return predict_images(config, state, images, encoder=encoder)


def predict_images(config: ml_collections.ConfigDict, state: dict[str, Any],
                   images: np.ndarray, *,
                   encoder: Optional[step_lib.Encoder] = None
                   ) -> tuple[np.ndarray, np.ndarray]:
  """Scores preprocessed images with a trained DiCo state.

  Args:
    config: the run config (``config.dico``, ``config.backbone``).
    state: ``Predictions.state`` (params with the memory items, batch_stats).
    images: (N, S, S, 3) preprocessed images.
    encoder: optional encoder override (default: rebuilt from
      ``config.backbone.name``).

  Returns:
    ``(scores (N,), maps (N, S, S))`` as ``run`` computed them.
  """
  cfg = config.dico
  images = np.asarray(images, np.float32)
  if encoder is None:
    encoder, _ = step_lib.encoder_from_backbone(
        config.backbone.name, weights=config.backbone.weights,
        levels=tuple(cfg.levels),
        image_size=int(images.shape[1]))
  net = build_net(cfg, encoder.channels)
  mesh = parallel.make_mesh()
  score_fn = step_lib.make_score_fn(net, encoder, step_config(cfg), mesh=mesh)
  variables = {"params": state["params"],
               "batch_stats": state.get("batch_stats", {})}
  return step_lib.score_in_batches(score_fn, variables, images,
                                   batch_size=int(cfg.eval_batch_size),
                                   multiple=mesh.size, desc="DiCo predict")
