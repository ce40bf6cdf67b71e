r"""Where a FUN-AD training iteration spends its time (issue 12).

Times, on the cached training features of a real run config, each part of one
iteration as its own jitted function (training-set scoring, bank adaptation,
top-2 bank search, mutual pairs, loss + update) and then whole iterations for
a list of speed settings, all in the same process:

  python benchmarks/funad_profile.py --config_arg=contamination=0.1 \
      --variants="preset=paper" --variants="preset=paper,bank_patches=16384"

``--variants`` are FUN-AD config-file arguments (``preset=`` picks the base,
``methods/funad/config.py:PRESETS``; the other keys are the ``ARGS`` of the
config files, e.g. ``refresh_every``, ``bank_patches``, ``batch_patches``).
Prints two markdown tables; ``--results=benchmarks/results/funad_speed.json``
also writes the variants' rows (seconds per iteration and per epoch, the
speed-up over the first variant, the CPU, its load, commit and command).

Seconds per epoch are measured, not extrapolated from a cheap iteration: each
variant runs a whole refresh cycle (``refresh_every`` iterations, at least
``--iters``) after compiling, so the cycle's training-set scoring is in the
mean; an epoch is that mean times the iterations per epoch.
"""

import json
import os
import shlex
import sys
import time

from absl import app
from absl import flags

import _shared  # pylint: disable=g-import-not-at-top,wrong-import-position
import _speed  # pylint: disable=g-import-not-at-top,wrong-import-position
_shared.use_shared_data()

from dicofun import cpu  # pylint: disable=g-import-not-at-top,wrong-import-position
cpu.configure_cpu_devices()  # Before anything imports jax.

import importlib.util  # pylint: disable=g-import-not-at-top,wrong-import-position

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

from dicofun import features as features_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from dicofun import protocol  # pylint: disable=g-import-not-at-top,wrong-import-position
from dicofun import results as results_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from dicofun.methods.funad import losses  # pylint: disable=g-import-not-at-top,wrong-import-position
from dicofun.methods.funad import irmb  # pylint: disable=g-import-not-at-top,wrong-import-position
from dicofun.methods.funad import method as funad  # pylint: disable=g-import-not-at-top,wrong-import-position
from dicofun.methods.funad import model as model_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from dicofun.methods.funad import step as step_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from dicofun.ops import knn  # pylint: disable=g-import-not-at-top,wrong-import-position

_DATASET = flags.DEFINE_string("dataset", "magnetic_tile",
                               "Dataset config suffix (configs/funad_<x>.py).")
_ARG = flags.DEFINE_string("config_arg", "contamination=0.1",
                           "Config-file args of the features / data.")
_VARIANTS = flags.DEFINE_multi_string(
    "variants", ["preset=paper"],
    "Config-file args whose whole iterations are timed.")
_ITERS = flags.DEFINE_integer(
    "iters", 5, "Timed iterations per variant (at least one refresh cycle).")
_COMPONENTS = flags.DEFINE_bool(
    "components", True, "Also time each part of a paper-shaped iteration.")
_RESULTS = flags.DEFINE_string(
    "results", "", "Also write the variants' rows to this JSON file.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed calls per component.")
_WORKDIR = flags.DEFINE_string("workdir", "/tmp/dicofun_profile",
                               "Where the dataset is read / generated.")


def _timeit(fn, *args, repeats=3):
  jax.block_until_ready(fn(*args))  # compile
  t0 = time.time()
  out = None
  for _ in range(repeats):
    out = fn(*args)
  jax.block_until_ready(out)
  return (time.time() - t0) / repeats


def _get_config(arg: str):
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  path = os.path.join(root, "configs", f"funad_{_DATASET.value}.py")
  spec = importlib.util.spec_from_file_location("cfg", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg or None)


def _components(flat: np.ndarray) -> list:
  """(name, seconds) of each part of one paper-shaped iteration."""
  n, p, d = flat.shape
  cfg = _get_config(",".join(x for x in (_ARG.value, "preset=paper") if x)
                    ).funad
  b = int(cfg.batch_size)
  rows_pad, chunk = step_lib.padded_size(n, int(cfg.score_chunk))
  x_all = jnp.asarray(step_lib.pad_images(flat, rows_pad))
  net = model_lib.LocalNet(d, tuple(cfg.hidden))
  params = model_lib.init_params(jax.random.key(0), d,
                                 hidden=tuple(cfg.hidden))
  m_img = max(1, int(np.floor(float(cfg.rho) * n)))
  bank_idx = jnp.arange(m_img, dtype=jnp.int32)
  batch = x_all[:b]
  score = jax.jit(lambda prm, x: jnp.max(step_lib.patch_scores(
      net, prm, x, chunk=chunk), axis=1))
  adapt = jax.jit(lambda prm, x, i: net.apply(
      {"params": prm}, x[i], method=model_lib.LocalNet.adapt).reshape(-1, d))
  bank = adapt(params, x_all, bank_idx)
  f = adapt(params, batch, jnp.arange(b))
  valid = jnp.ones((bank.shape[0],), bool)
  top2 = jax.jit(lambda q, bk, v: irmb.bank_distances(
      q, bk, v, chunk=int(cfg.knn_chunk)))
  mutual = jax.jit(lambda q: knn.mutual_nn_pairs(
      q, query_chunk=None, bank_chunk=int(cfg.knn_chunk)))
  y = (jax.random.uniform(jax.random.key(1), (b, p)) > 0.99).astype(
      jnp.float32)
  partner, pair_valid = mutual(f)
  opt = step_lib.make_optimizer(funad.step_config(cfg, dim=d, num_images=n))
  opt_state = opt.init(params)

  def update(prm, ost, xb, yb):
    def loss_fn(q):
      z, _ = net.apply({"params": q}, xb, return_logits=True)
      z2, _ = net.apply({"params": q}, xb, return_logits=True)
      return losses.balanced_bce(z, yb) + float(cfg.lam) * (
          losses.mutual_smoothness(z2.reshape(-1), partner, pair_valid))
    g = jax.grad(loss_fn)(prm)
    u, ost = opt.update(g, ost, prm)
    return jax.tree_util.tree_map(jnp.add, prm, u), ost

  upd = jax.jit(update)
  sub_m = min(16384, bank.shape[0])
  r = _REPEATS.value
  return [
      (f"score training set ({n} images x {p} patches)",
       _timeit(score, params, x_all, repeats=r)),
      (f"bank adaptation ({m_img} images = {m_img * p} rows, worst case)",
       _timeit(adapt, params, x_all, bank_idx, repeats=r)),
      (f"top-2 search {b * p} queries x {bank.shape[0]} rows",
       _timeit(top2, f, bank, valid, repeats=r)),
      (f"top-2 search {b * p} queries x {sub_m} rows (bank_patches)",
       _timeit(top2, f, bank[:sub_m], valid[:sub_m], repeats=r)),
      (f"mutual pairs {b * p} x {b * p}", _timeit(mutual, f, repeats=r)),
      ("loss + grad + RMSprop update (2 forward passes)",
       _timeit(upd, params, opt_state, batch, y, repeats=r)),
  ]


def _iteration(flat: np.ndarray, variant: str) -> tuple:
  """(s / iteration, candidates, bank rows) of a variant, placed as fit."""
  n, p, d = flat.shape
  cfg = _get_config(",".join(x for x in (_ARG.value, variant) if x)).funad
  mesh = funad._mesh()  # pylint: disable=protected-access
  ndev = 1 if mesh is None else mesh.size
  rows_pad, chunk = step_lib.padded_size(n, int(cfg.score_chunk), ndev)
  feats = funad._place(step_lib.pad_images(flat, rows_pad), mesh, shard=True)  # pylint: disable=protected-access
  valid = funad._place(np.arange(rows_pad) < n, mesh, shard=True)  # pylint: disable=protected-access
  b = int(cfg.batch_size)
  iters = n // b
  s = funad.step_config(cfg, dim=d, num_images=n,
                        total_steps=int(cfg.epochs) * iters)
  s = step_lib.StepConfig(**{**s.__dict__, "score_chunk": chunk})
  state = funad._place_state(  # pylint: disable=protected-access
      step_lib.init_state(s, jax.random.key(0), rows_pad), mesh)
  step = step_lib.make_train_step(s)
  perm = np.random.default_rng(0).permutation(n)
  times, m = [], {}
  # A whole refresh cycle after the compiling call: its scoring is included.
  timed = max(_ITERS.value, int(cfg.refresh_every))
  for it in range(timed + 1):
    lo = (it % max(iters, 1)) * b
    idx = funad._place(perm[lo:lo + b].astype(np.int32), mesh, shard=False)  # pylint: disable=protected-access
    t0 = time.time()
    state, m = step(state, idx, jax.random.key(it), feats, valid)
    jax.block_until_ready(state)
    times.append(time.time() - t0)
  bank_rows = int(m["bank_images"]) * p
  if int(cfg.bank_patches) > 0:  # (ours) a fixed-size subset of those.
    bank_rows = min(int(cfg.bank_patches), bank_rows)
  return (float(np.mean(times[1:])), int(m["num_candidates"]), bank_rows,
          iters, timed)


def main(argv):
  del argv
  commit = results_lib.git_commit()  # The code that runs, not later edits.
  config = _get_config(_ARG.value)
  data = protocol.prepare_data(config, _WORKDIR.value)
  feats = features_lib.load_features(config, data.train, layout="tokens")
  flat, _ = funad._flat_tokens(feats)  # pylint: disable=protected-access
  print(f"features {flat.shape}, devices {jax.device_count()}")
  if _COMPONENTS.value:
    print("| component | seconds |\n|---|---|")
    for name, t in _components(flat):
      print(f"| {name} | {t:.3f} |", flush=True)
  print(f"\n| variant | s / iteration (mean of {_ITERS.value}, after "
        "compile) | candidates at the last | bank rows |")
  print("|---|---|---|---|")
  rows_out = []
  for variant in _VARIANTS.value:
    t, cand, rows, iters, timed = _iteration(flat, variant)
    print(f"| {variant} | {t:.2f} | {cand} | {rows} |", flush=True)
    rows_out.append({
        "benchmark": "funad_epoch", "dataset": _DATASET.value,
        "config_arg": _ARG.value, "variant": variant,
        "seconds_per_iteration": t, "timed_iterations": timed,
        "iterations_per_epoch": iters, "seconds_per_epoch": t * iters,
        "speedup_over_first": rows_out[0]["seconds_per_iteration"] / t
                              if rows_out else 1.0,
        "candidates_at_last": cand, "bank_rows": rows,
        "features": list(flat.shape), "devices": jax.device_count(),
        "cpu": _speed.cpu_model(), "cpu_count": os.cpu_count(),
        "load_average_1min": os.getloadavg()[0]})
  print("\n| variant | s / epoch | speed-up over the first |\n|---|---|---|")
  for r in rows_out:
    print(f"| {r['variant']} | {r['seconds_per_epoch']:.1f} | "
          f"{r['speedup_over_first']:.1f}x |")
  if _RESULTS.value:
    command = "python " + " ".join(
        [os.path.relpath(sys.argv[0])] + [shlex.quote(a) for a in sys.argv[1:]])
    for r in rows_out:
      r.update(commit=commit, command=command)
    os.makedirs(os.path.dirname(os.path.abspath(_RESULTS.value)),
                exist_ok=True)
    with open(_RESULTS.value + ".tmp", "w") as f:
      json.dump(rows_out, f, indent=1)
    os.replace(_RESULTS.value + ".tmp", _RESULTS.value)


if __name__ == "__main__":
  app.run(main)
