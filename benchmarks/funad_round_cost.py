r"""Where the time of a FUN-AD run goes, per part of a round (issue 27).

On the cached features of a real run config, times each thing a training
round of ``training.run_loop`` does, all in one process after compiling:

* a train step without the training-set rescoring (``refresh_every``), and
  one with it (the step ``step % refresh_every == 0``);
* the per-evaluation history work: the transductive scoring of the training
  set, the test set scored with maps, the history's image / pixel AUROC
  (``training.history_metrics``), the TensorBoard anomaly-map figure;
* a training checkpoint save.

Then prints the cost of a whole run of the config's budget
(``method.budget``): steps × step + evaluations × evaluation + checkpoints.

  nice -n 19 python benchmarks/funad_round_cost.py --config_arg=\
root=../shared/data,category=mvtec_ad/screw,crop=1,contamination=0.1

``--config_arg`` is a ``configs/funad_<--dataset>.py`` argument string, so
``steps=``, ``eval_every=`` etc. change the budget that is costed.
"""

import os
import tempfile
import time

from absl import app
from absl import flags

import _shared  # pylint: disable=g-import-not-at-top,wrong-import-position
_shared.use_shared_data()

from dicofun import cpu  # pylint: disable=g-import-not-at-top,wrong-import-position
cpu.configure_cpu_devices()  # Before anything imports jax.

import importlib.util  # pylint: disable=g-import-not-at-top,wrong-import-position

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

from dicofun import checkpoint  # pylint: disable=g-import-not-at-top,wrong-import-position
from dicofun import features as features_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from dicofun import protocol  # pylint: disable=g-import-not-at-top,wrong-import-position
from dicofun import training  # pylint: disable=g-import-not-at-top,wrong-import-position
from dicofun import viz  # pylint: disable=g-import-not-at-top,wrong-import-position
from dicofun.data import pipeline  # pylint: disable=g-import-not-at-top,wrong-import-position
from dicofun.methods.funad import method as funad  # pylint: disable=g-import-not-at-top,wrong-import-position
from dicofun.methods.funad import step as step_lib  # pylint: disable=g-import-not-at-top,wrong-import-position

_DATASET = flags.DEFINE_string("dataset", "mvtec_layout",
                               "Dataset config suffix (configs/funad_<x>.py).")
_ARG = flags.DEFINE_string(
    "config_arg", "root=../shared/data,category=mvtec_ad/screw,crop=1,"
    "contamination=0.1", "Config-file args of the run that is costed.")
_STEPS = flags.DEFINE_integer("steps", 4, "Timed steps of each kind.")
_WORKDIR = flags.DEFINE_string("workdir", "/tmp/dicofun_profile",
                               "Where the dataset is read / generated.")


def _get_config(arg: str):
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  path = os.path.join(root, "configs", f"funad_{_DATASET.value}.py")
  spec = importlib.util.spec_from_file_location("cfg", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg or None)


def _time(fn, repeats: int) -> float:
  fn()  # Compile / warm.
  t0 = time.time()
  for _ in range(repeats):
    jax.block_until_ready(fn())
  return (time.time() - t0) / repeats


def main(argv):
  del argv
  config = _get_config(_ARG.value)
  cfg = config.funad
  data = protocol.prepare_data(config, _WORKDIR.value)
  train = features_lib.load_features(config, data.train, layout="tokens")
  test = features_lib.load_features(config, data.test, layout="tokens")
  labels = np.array([r.label for r in data.test])
  pre = pipeline.preprocess_for(config)
  masks = pipeline.load_arrays(data.test, pre, allow_missing_mask=True,
                               with_images=False)["mask"]
  flat, _ = funad._flat_tokens(train)  # pylint: disable=protected-access
  n, _, d = flat.shape
  plan = funad.budget(cfg, n)
  rows, chunk = step_lib.padded_size(n, int(cfg.score_chunk))
  scfg = funad.step_config(cfg, dim=d, num_images=n,
                           total_steps=plan.total_steps)
  scfg = step_lib.StepConfig(**{**scfg.__dict__, "score_chunk": chunk})
  feats = jax.numpy.asarray(step_lib.pad_images(flat, rows))
  valid = jax.numpy.asarray(np.arange(rows) < n)
  state = step_lib.init_state(scfg, jax.random.key(0), rows)
  step = step_lib.make_train_step(scfg)
  idx = jax.numpy.asarray(np.arange(plan.batch, dtype=np.int32))
  box = {"state": state}

  def one_step():
    box["state"], m = step(box["state"], idx, jax.random.key(1), feats, valid)
    return m

  every = max(int(cfg.refresh_every), 1)
  one_step()  # Compile (step 0 rescored).
  lean, fresh = [], []
  while len(lean) < _STEPS.value or len(fresh) < min(_STEPS.value, 2):
    refresh = every == 1 or int(box["state"]["step"]) % every == 0
    t0 = time.time()
    jax.block_until_ready(one_step())
    (fresh if refresh else lean).append(time.time() - t0)
    if every > 1 and len(lean) >= _STEPS.value and not refresh:
      # Jump to the next rescoring step.
      box["state"]["step"] = jax.numpy.asarray(
          (int(box["state"]["step"]) // every + 1) * every, jax.numpy.int32)
  t_lean = float(np.mean(lean)) if lean else float(np.mean(fresh))
  t_fresh = float(np.mean(fresh))
  params = {"params": box["state"].get("ema", box["state"]["params"])}
  reps = 2
  t_trans = _time(lambda: funad.predict_features(config, params, train,
                                                 with_maps=False)[0], reps)
  t_test_nomap = _time(lambda: funad.predict_features(
      config, params, test, with_maps=False)[0], reps)
  t_test = _time(lambda: funad.predict_features(config, params, test)[1],
                 reps)
  scores, amaps = funad.predict_features(config, params, test)
  t_metrics = _time(lambda: training.history_metrics(scores, amaps, labels,
                                                     masks), reps)
  pick = training.figure_indices(labels)
  arr = pipeline.load_arrays([data.test[i] for i in pick], pre,
                             allow_missing_mask=True)
  t_fig = _time(lambda: viz.anomaly_maps_image(
      arr["image"], arr["mask"], amaps[pick], scores=scores[pick],
      mean=pre.mean, std=pre.std), reps)
  with tempfile.TemporaryDirectory() as tmp:
    ckpt = checkpoint.TrainCheckpointer(tmp, every=1, keep_best=False,
                                        subdir="c", keep_latest=2)
    host = training.flatten(jax.device_get(box["state"]))
    t0 = time.time()
    for e in range(1, 3):
      ckpt.maybe_save(e, host, force=True)
    t_ckpt = (time.time() - t0) / 2
    ckpt.close()
  t_eval = t_trans + t_test + t_metrics + t_fig
  print(f"features train {tuple(train.shape)}, test {tuple(test.shape)}; "
        f"load {os.getloadavg()[0]:.1f}")
  print(f"budget: {plan}")
  print("| part | seconds |\n|---|---|")
  for name, t in [
      ("train step, no rescoring", t_lean),
      (f"train step with the training-set rescoring (every {every})",
       t_fresh),
      ("transductive: training set scored (no maps)", t_trans),
      ("test set scored, no maps", t_test_nomap),
      ("test set scored with maps", t_test),
      ("history image + pixel AUROC", t_metrics),
      ("TensorBoard anomaly-map figure", t_fig),
      ("checkpoint save", t_ckpt),
      ("one evaluation (transductive + test with maps + AUROCs + figure)",
       t_eval)]:
    print(f"| {name} | {t:.3f} |")
  steps = plan.total_steps
  n_fresh = -(-steps // every)
  evals = (plan.rounds // plan.eval_every if plan.eval_every else 0)
  evals += 0 if plan.eval_every and plan.rounds % plan.eval_every == 0 else 1
  ckpts = (plan.rounds // plan.checkpoint_every if plan.checkpoint_every
           else 0) + 1
  train_s = (steps - n_fresh) * t_lean + n_fresh * t_fresh
  print(f"\nrun of {steps} steps: training {train_s:.1f} s, {evals} "
        f"evaluations {evals * t_eval:.1f} s, ~{ckpts} checkpoints "
        f"{ckpts * t_ckpt:.1f} s; total {train_s + evals * t_eval + ckpts * t_ckpt:.1f} s")


if __name__ == "__main__":
  app.run(main)
