r"""Benchmark: where a DiCo training step spends its time, and how fast it trains.

Times, at one input size on one backbone, every part of the train step as its
own jitted function (median of ``--runs`` calls after one compiling call, on
the device mesh dicofun's entry points use: one CPU device per core, the batch
split over them):

* ``encoder clean``: the frozen encoder on the clean batch (targets T_k),
* ``mask + encoder masked``: the square masks and the encoder on the masked
  batch,
* ``bottleneck``, ``memory``, ``decoder``: the trainable modules' forward
  passes (train mode),
* ``loss + backward``: the loss of the whole trainable network and its
  gradient, from precomputed features,
* ``update``: Adam and the memory items' momentum update,

and whole train steps of ``step.make_train_step``: ``before`` (the faithful
step with XLA's grouped convolution for the encoder's depthwise layers, as
dicofun ran before ``efficientnet_lite.depthwise_conv``: the baseline of issue
#14's speed-up), ``faithful`` (two encoder
passes) and ``cached targets`` (``cache_targets``, the default: the clean
pass replaced by a cached T_k; the masked pass remains). The rows of a fused
encoder pass and of feature masking that BENCHMARKS.md keeps as history came
from knobs removed in issue 28. Training images/s = batch / median step time. The per-part rows do
not add up exactly to a step (XLA fuses across them inside the step).

Usage:
  python benchmarks/dico_profile.py                      # 256 px, batch 8
  python benchmarks/dico_profile.py --image_size=128 --runs=5

Prints a markdown table and writes it with the raw numbers as JSON to
``--out`` (default benchmarks/results/dico_profile.json). Timings do not depend
on the weights' values, so ``--weights=random`` (default) skips converting the
pretrained ones.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import subprocess
import sys
import time

from dicofun import cpu

cpu.configure_cpu_devices()  # Before JAX: one CPU device per core.

# pylint: disable=g-import-not-at-top,wrong-import-position
import jax
import jax.numpy as jnp
import numpy as np
import optax

from dicofun import parallel
from dicofun.methods.dico import config as dico_config
from dicofun.methods.dico import masking
from dicofun.methods.dico import method as dico
from dicofun.methods.dico import model as model_lib
from dicofun.methods.dico import step as step_lib
# pylint: enable=g-import-not-at-top,wrong-import-position

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _median_time(fn, *args, runs: int) -> float:
  jax.block_until_ready(fn(*args))  # Compiles.
  times = []
  for _ in range(runs):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
  return float(np.median(times))


def _commit() -> str:
  try:
    return subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True, check=True
                          ).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return "unknown"


def profile(*, backbone: str, weights: str, image_size: int, batch_size: int,
            runs: int, memory: int) -> dict:
  """Times the parts and whole steps; returns rows and settings."""
  cfg = dico_config.default_config()
  cfg.memory_size = memory
  levels = tuple(cfg.levels)
  encoder, _ = step_lib.encoder_from_backbone(
      backbone, levels=levels, image_size=image_size, weights=weights)
  mesh = parallel.make_mesh()
  if batch_size % mesh.size:
    raise ValueError(f"batch {batch_size} not divisible by {mesh.size} "
                     "devices")
  rep = parallel.replicated(mesh)
  rng = np.random.default_rng(0)
  images_np = rng.standard_normal((batch_size, image_size, image_size, 3),
                                  dtype=np.float32)
  images = parallel.global_batch(mesh, images_np)
  enc_vars = jax.device_put(encoder.variables, rep)
  net = dico.build_net(cfg, encoder.channels)
  scfg = dico.step_config(cfg)
  tx = step_lib.make_optimizer(lr=cfg.lr, b1=cfg.b1, b2=cfg.b2)
  state = jax.device_put(
      step_lib.init_state(net, encoder, tx, jax.random.PRNGKey(0), images_np),
      rep)
  key = jax.device_put(jax.random.PRNGKey(1), rep)
  rows = []

  def add(name, fn, *args, images_per_call=batch_size):
    t = _median_time(jax.jit(fn), *args, runs=runs)
    rows.append({"part": name, "median_s": t,
                 "images_per_s": images_per_call / t})
    print(f"  {name}: {t:.4f} s", file=sys.stderr, flush=True)

  features = functools.partial(step_lib._features, encoder)  # pylint: disable=protected-access

  def masked_batch(k, x):
    b, h, w = x.shape[:3]
    mask = masking.random_square_mask(k, b, (h, w), ratio=scfg.mask_ratio,
                                      patch=scfg.mask_patch)
    return masking.apply_mask(x, mask)

  add("encoder clean", features, enc_vars, images)
  add("mask + encoder masked",
      lambda v, k, x: features(v, masked_batch(k, x)), enc_vars, key, images)

  feats = jax.jit(features)(enc_vars, images)
  variables = {"params": state["params"], "batch_stats": state["batch_stats"]}
  train_mut = dict(mutable=["batch_stats"])
  add("bottleneck", lambda v, f: net.apply(
      v, f, method=lambda m, f: m.bottleneck(f, train=True), **train_mut),
      variables, feats)
  z, _ = jax.jit(lambda v, f: net.apply(
      v, f, method=lambda m, f: m.bottleneck(f, train=True), **train_mut))(
          variables, feats)
  add("memory", lambda v, z: net.apply(v, z, method=lambda m, z: m.memory(z)),
      variables, z)
  shapes = {k: tuple(feats[k].shape[1:3]) for k in levels}
  add("decoder", lambda v, z: net.apply(
      v, z, method=lambda m, z: m.decoder(z, shapes, train=True), **train_mut),
      variables, z)
  grad_fn = jax.grad(functools.partial(step_lib.loss_terms, net, cfg=scfg),
                     has_aux=True)
  add("loss + backward", lambda p, bs, f: grad_fn(p, bs, f, f)[0],
      state["params"], state["batch_stats"], feats)
  grads, (_, _, aux) = jax.jit(lambda p, bs, f: grad_fn(p, bs, f, f))(
      state["params"], state["batch_stats"], feats)

  def update(params, opt_state, grads, aux):
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    if memory > 0:
      items = model_lib.momentum_update(params["memory"]["items"],
                                        aux["query"], aux["top1"],
                                        momentum=scfg.momentum)
      params = step_lib._set_items(params, items)  # pylint: disable=protected-access
    return params, opt_state

  add("update", update, state["params"], state["opt_state"], grads, aux)

  # Whole steps. The state is donated: every call gets a fresh copy.
  steps = {}
  # Before (the code of 2026-12-01 session 2): the faithful step with XLA's
  # grouped convolution for the encoder's depthwise layers.
  xla_encoder, _ = step_lib.encoder_from_backbone(
      backbone, levels=levels, image_size=image_size, weights=weights,
      depthwise_impl="xla")
  step = step_lib.make_train_step(net, xla_encoder, tx, scfg, mesh=mesh)

  def call_before(step=step):
    st = jax.tree_util.tree_map(jnp.copy, state)
    return step(st, images, key, targets=None)

  name = "step before (faithful, XLA depthwise)"
  steps[name] = t = _median_time(call_before, runs=runs)
  rows.append({"part": name, "median_s": t, "images_per_s": batch_size / t})
  print(f"  {name}: {t:.4f} s", file=sys.stderr, flush=True)
  for name, cached in (("step faithful (2 passes)", False),
                       ("step cached targets (cache_targets)", True)):
    step = step_lib.make_train_step(net, encoder, tx, scfg, mesh=mesh)
    targets = feats if cached else None

    def call(step=step, targets=targets):
      st = jax.tree_util.tree_map(jnp.copy, state)
      return step(st, images, key, targets=targets)

    # Copying the state is timed too; it is small next to a step.
    t = _median_time(call, runs=runs)
    steps[name] = t
    rows.append({"part": name, "median_s": t, "images_per_s": batch_size / t})
    print(f"  {name}: {t:.4f} s", file=sys.stderr, flush=True)
  base = steps["step faithful (2 passes)"]
  before = steps["step before (faithful, XLA depthwise)"]
  for row in rows:
    if row["part"].startswith("step"):
      row["speedup_vs_faithful"] = base / row["median_s"]
      row["speedup_vs_before"] = before / row["median_s"]
  return {"rows": rows, "backbone": backbone, "weights": weights,
          "image_size": image_size, "batch_size": batch_size, "runs": runs,
          "memory": memory, "devices": mesh.size,
          "device_kind": jax.devices()[0].device_kind,
          "cpu_count": os.cpu_count(), "platform": platform.platform(),
          "commit": _commit(), "command": " ".join(sys.argv)}


def table(result: dict) -> str:
  lines = [f"DiCo train step, {result['backbone']} at {result['image_size']} "
           f"px, batch {result['batch_size']}, {result['devices']} device(s) "
           f"({result['device_kind']}), median of {result['runs']}",
           "", "| part | median s | images/s | vs faithful | vs before |",
           "|---|---:|---:|---:|---:|"]
  fmt = lambda sp: "" if sp is None else f"{sp:.2f}×"
  for r in result["rows"]:
    lines.append(f"| {r['part']} | {r['median_s']:.4f} | "
                 f"{r['images_per_s']:.2f} | "
                 f"{fmt(r.get('speedup_vs_faithful'))} | "
                 f"{fmt(r.get('speedup_vs_before'))} |")
  return "\n".join(lines)


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--backbone", default="efficientnet_lite0")
  ap.add_argument("--weights", default="random")
  ap.add_argument("--image_size", type=int, default=256)
  ap.add_argument("--batch_size", type=int, default=8)
  ap.add_argument("--runs", type=int, default=3)
  ap.add_argument("--memory", type=int, default=50)
  ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results",
                                                "dico_profile.json"))
  args = ap.parse_args()
  result = profile(backbone=args.backbone, weights=args.weights,
                   image_size=args.image_size, batch_size=args.batch_size,
                   runs=args.runs, memory=args.memory)
  text = table(result)
  print(text)
  if args.out:
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
      json.dump({**result, "table": text}, f, indent=2)


if __name__ == "__main__":
  main()
