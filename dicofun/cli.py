r"""The ``dicofun`` command: ``inspect``, ``run``, ``predict``, ``sweep``, ``report``, ``export``.

Usage::

  dicofun inspect /path/to/folder --out=runs/inspect_folder
  dicofun run --config=configs/patchcore_synthetic.py --workdir=runs/quick
  dicofun predict --workdir=runs/quick --images=/path/to/new/images
  dicofun sweep --sweep=configs/sweeps/tiny_synthetic.py --workdir=runs/sw
  dicofun report --run=runs/quick
  dicofun export --workdir=runs/inspect_folder --out=model.stablehlo

``inspect`` and ``predict`` keep the log to warnings unless ``--verbosity``
is given (``--verbosity=0`` shows dicofun's and the libraries' INFO lines).

Errors the user can fix (``dicofun.user_errors.UserError``: bad data, bad
config, a refused resume, an output path that is a file) end a command with
one line ``error: <message>`` on stderr and exit status 2, no traceback.
Ctrl-C ends a command with exit status 130 (``dicofun.interrupt``: training
stops at a safe point, and ``dicofun run`` resumes with the same command).

``python -m dicofun`` is the same command; ``experiments/*.py`` are thin
shells over the functions here. JAX's CPU device count must be set before JAX
starts, so the entry points (``dicofun/__main__.py``, ``experiments/*.py``)
call ``dicofun.cpu.configure_cpu_devices()`` before importing this module.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
from typing import Callable, NoReturn, Optional, Sequence

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from dicofun import export as export_lib
from dicofun import fileio
from dicofun import inspection
from dicofun import interrupt
from dicofun import locking
from dicofun import methods
from dicofun import predict as predict_lib
from dicofun import report as report_lib
from dicofun import results as results_lib
from dicofun import runner
from dicofun import sweep as sweep_lib
from dicofun import user_errors
from dicofun.data import errors

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "run: config file (configs/<method>_<dataset>.py[:args]).",
    lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None,
    "run: output directory (default runs/<config name>[_<args>]); predict: a "
    "finished run's workdir; sweep: the sweep directory (default "
    "runs/sweeps/<name>[_<args>]).")
# ``--model=DIR`` is ``--workdir=DIR`` for predict/export: an inspect --out
# folder or a finished run's workdir (both hold ``model/``).
flags.DEFINE_alias("model", "workdir")
_IMAGES = flags.DEFINE_string(
    "images", None, "predict: folder of images to score (searched recursively).")
_OUT = flags.DEFINE_string(
    "out", None, "predict: output folder (default <workdir>/predictions); "
    "inspect: output folder (default runs/inspect_<folder name>); export: "
    "the StableHLO file (default <workdir>/model.stablehlo); report: the "
    "HTML file (default <run>/report.html).")
_RUN = flags.DEFINE_string(
    "run", None, "report: a finished folder: a dicofun run workdir "
    "(results.json, test_scores.csv) or a dicofun inspect --out folder.")
_BATCH = flags.DEFINE_integer(
    "batch_size", 1, "export: the fixed batch of the exported scorer.")
_METHOD = flags.DEFINE_enum(
    "method", inspection.DEFAULT_METHOD, ["softpatch", "patchcore", "funad",
                                          "dico"],
    "inspect: the method. Default softpatch: the best of the benchmarks "
    "(BENCHMARKS.md) when the training set holds unlabelled defects, as an "
    "inspected folder does, and no epochs to tune.")
_BACKBONE = flags.DEFINE_string(
    "backbone", inspection.DEFAULT_BACKBONE,
    "inspect: feature backbone. Default efficientnet_lite0: several times "
    "faster than dinov2_vits14 on a laptop CPU, pretrained weights fetched "
    "once from the package index.")
_IMAGE_SIZE = flags.DEFINE_integer(
    "image_size", inspection.DEFAULT_IMAGE_SIZE,
    "inspect: input side S (images are resized to SxS, no crop); 224 is the "
    "backbones' pretraining size.")
_LABELS = flags.DEFINE_string(
    "labels", None, "inspect: optional CSV with columns file,label (0/good/ok "
    "= normal, empty = unknown, else defective) for the ROC and AUROC in the "
    "report; without it, sub-folders named good/ok label their images.")
_HINT = flags.DEFINE_float(
    "contamination_hint", None,
    "inspect: expected fraction of defective images, in (0, 1); the "
    "threshold becomes the 1-hint quantile of the scores. Default: the "
    "robust rule median + 3.5 x 1.4826 x MAD of the scores.")
_STRICT = flags.DEFINE_bool(
    "strict", False, "inspect, predict: abort on an unreadable image file "
    "instead of skipping it (skipped files are listed in errors.csv).")
_THRESHOLD = flags.DEFINE_float(
    "threshold", None, "predict: decision threshold (default: the run's own).")
_OVERLAYS = flags.DEFINE_bool(
    "overlays", True, "predict: write one overlay PNG per image.")
_SAVE_MAPS = flags.DEFINE_bool(
    "save_maps", False, "predict: keep maps.npy, the (n, S, S) float32 maps.")
_SWEEP = flags.DEFINE_string(
    "sweep", None, "sweep: sweep config configs/sweeps/<name>.py[:args].")
_ONLY_CELLS = flags.DEFINE_integer(
    "only_cells", None, "sweep: run at most this many pending cells, then stop.")
_DRY_RUN = flags.DEFINE_bool(
    "dry_run", False, "sweep: validate the cells and list their commands only.")


def _fail(error: object) -> NoReturn:
  """Ends the command: ``error: <message>`` (one line) on stderr, exit 2."""
  print(f"error: {user_errors.one_line(error)}", file=sys.stderr, flush=True)
  sys.exit(user_errors.EXIT_USER_ERROR)


def _reported(command: Callable[[Sequence[str]], object]
              ) -> Callable[[Sequence[str]], object]:
  """``command`` with user errors reported as one line and exit 2, Ctrl-C as
  one line and exit 130."""

  @functools.wraps(command)
  def wrapped(argv: Sequence[str]) -> object:
    interrupt.install()
    try:
      result = command(argv)
    except user_errors.UserError as e:
      # Bad input, not a bug: say what is wrong without a traceback.
      _fail(e)
    except KeyboardInterrupt as e:
      _interrupted(e)
    if interrupt.requested():  # A Ctrl-C that something swallowed.
      _interrupted(None)
    return result

  return wrapped


def _interrupted(error: Optional[BaseException]) -> NoReturn:
  """Ends the command after Ctrl-C: one line on stderr, exit 130."""
  message = (str(error) if isinstance(error, interrupt.Interrupted)
             else f"interrupted; {interrupt.RESUME_HINT}")
  print(user_errors.one_line(message), file=sys.stderr, flush=True)
  sys.exit(user_errors.EXIT_INTERRUPTED)


def _name_of(spec: str) -> str:
  path, _, arg = spec.partition(":")
  name = os.path.splitext(os.path.basename(path))[0]
  if arg:
    name += "_" + arg.replace(",", "_").replace("=", "-").replace("/", "-")
  return name


def _no_positional(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {list(argv[1:])}")


def _quiet_unless_asked() -> None:
  """Warnings only, unless --verbosity was given (third-party INFO off)."""
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)


@_reported
def inspect_command(argv: Sequence[str]) -> None:
  """``dicofun inspect FOLDER``: which images of a folder are defective."""
  if len(argv) != 2:
    raise app.UsageError("inspect needs exactly one FOLDER: dicofun inspect "
                         "FOLDER [--out=DIR] [--method=softpatch]")
  _quiet_unless_asked()
  folder = argv[1]
  out = _OUT.value or os.path.join(
      "runs", "inspect_" + os.path.basename(os.path.normpath(folder)))
  try:
    config = inspection.inspect_config(
        _METHOD.value, backbone=_BACKBONE.value, image_size=_IMAGE_SIZE.value)
    # One process per --out folder, from before any work (dicofun.locking).
    with locking.folder_lock(out, flag="--out",
                             lock_path=locking.sibling_lock_path(out)):
      outcome = inspection.inspect_folder(
          folder, out_dir=out, labels_csv=_LABELS.value,
          contamination_hint=_HINT.value, strict=_STRICT.value,
          config=config)
  except (errors.DatasetError, fileio.OutputFolderError) as e:
    _fail(e)
  print(inspection.summary(outcome))


@_reported
def run_command(argv: Sequence[str]) -> None:
  """``dicofun run``: trains and evaluates one config."""
  _no_positional(argv)
  config = _CONFIG.value
  if config is None:
    raise app.UsageError("--config is required, e.g. "
                         "--config=configs/patchcore_synthetic.py")
  spec = flags.FLAGS["config"].serialize().split("=", 1)[1]
  workdir = _WORKDIR.value or os.path.join("runs", _name_of(spec))
  logging.info("Workdir: %s", workdir)
  methods.check_config(config)  # Again: --config.* flags may have changed it.
  metrics = runner.train_and_evaluate(config, workdir)
  # The table is the run's headline output; a person reads it on stdout.
  print(results_lib.metrics_table(metrics,
                                  title=f"{config.method} — {workdir}"))


@_reported
def predict_command(argv: Sequence[str]) -> None:
  """``dicofun predict``: scores a folder with a trained run's model."""
  _no_positional(argv)
  if not _WORKDIR.value or not _IMAGES.value:
    raise app.UsageError("predict needs --model=DIR (an inspect --out folder or a run workdir; --workdir is the same) and --images=DIR")
  _quiet_unless_asked()
  out = _OUT.value or os.path.join(_WORKDIR.value, "predictions")
  # One process per --out folder (dicofun.locking); the default one lies in
  # the model folder, not made here when that is missing (an error below).
  lock = (locking.folder_lock(out, flag="--out",
                              lock_path=locking.sibling_lock_path(out))
          if _OUT.value or os.path.isdir(_WORKDIR.value)
          else contextlib.nullcontext())
  try:
    with lock:
      outcome = predict_lib.predict_folder(
          _WORKDIR.value, _IMAGES.value, out_dir=out,
          threshold=_THRESHOLD.value, overlays=_OVERLAYS.value,
          keep_maps=_SAVE_MAPS.value, strict=_STRICT.value)
  except (errors.DatasetError, FileNotFoundError,
          fileio.OutputFolderError) as e:
    _fail(e)
  print(f"{int(outcome.decisions.sum())}/{len(outcome.files)} images above "
        f"threshold {outcome.threshold:.6g}; scores in {outcome.csv_path}")
  if outcome.errors:
    print(f"{len(outcome.errors)} unreadable file(s) skipped, listed in "
          f"{outcome.errors_path}")


@_reported
def sweep_command(argv: Sequence[str]) -> int:
  """``dicofun sweep``: one run per grid cell, then the summary."""
  _no_positional(argv)
  spec = _SWEEP.value
  if not spec:
    raise app.UsageError("sweep needs --sweep=configs/sweeps/<name>.py[:args]")
  workdir = _WORKDIR.value or os.path.join("runs", "sweeps", _name_of(spec))
  name = os.path.basename(os.path.normpath(workdir))
  logging.info("Sweep %s → %s", spec, workdir)
  sweep = sweep_lib.load_sweep(spec)
  outcome = sweep_lib.run_sweep(sweep, workdir, only_cells=_ONLY_CELLS.value,
                                dry_run=_DRY_RUN.value, name=name)
  if _DRY_RUN.value:  # run_sweep has logged the plan.
    return 0
  with open(os.path.join(workdir, sweep_lib.MD_NAME)) as f:
    print(f.read())
  print(f"ran {len(outcome.ran)}, skipped {len(outcome.skipped)} finished, "
        f"failed {len(outcome.failed)}, pending {len(outcome.pending)}")
  if outcome.failed:
    print("failed cells (see <cell>/sweep_cell.log): "
          + "; ".join(outcome.failed), file=sys.stderr)
    return 1
  return 0


@_reported
def report_command(argv: Sequence[str]) -> None:
  """``dicofun report``: the self-contained report.html of a finished run."""
  _no_positional(argv)
  if not _RUN.value:
    raise app.UsageError("report needs --run=DIR (a dicofun run workdir or "
                         "a dicofun inspect --out folder)")
  _quiet_unless_asked()
  try:
    path = report_lib.build(_RUN.value, _OUT.value)
  except (report_lib.NotAReportableRunError, OSError, ValueError,
          KeyError) as e:
    _fail(e)
  print(f"report: {path}")


@_reported
def export_command(argv: Sequence[str]) -> None:
  """``dicofun export``: a PatchCore/SoftPatch model as StableHLO."""
  _no_positional(argv)
  if not _WORKDIR.value:
    raise app.UsageError("export needs --model=DIR (holding model/; --workdir is the same)")
  _quiet_unless_asked()
  out = _OUT.value or os.path.join(_WORKDIR.value, "model.stablehlo")
  try:
    info = export_lib.export_scorer(_WORKDIR.value, out,
                                    batch_size=_BATCH.value)
  except (export_lib.NotExportableError, FileNotFoundError,
          fileio.OutputFolderError) as e:
    _fail(e)
  print(f"exported the {info['method']} scorer (uint8 ({info['batch_size']}, "
        f"{info['image_size']}, {info['image_size']}, 3) → scores, maps) to "
        f"{out}; how to call it: {out}.json")


COMMANDS: dict[str, Callable[[Sequence[str]], object]] = {
    "inspect": inspect_command,
    "run": run_command,
    "predict": predict_command,
    "sweep": sweep_command,
    "report": report_command,
    "export": export_command,
}


# The flags each command reads, for ``dicofun <command> --help``.
COMMAND_FLAGS: dict[str, tuple[str, ...]] = {
    "inspect": ("out", "method", "backbone", "image_size", "labels",
                "contamination_hint", "strict", "verbosity"),
    "run": ("config", "workdir"),
    "predict": ("model", "workdir", "images", "out", "threshold", "overlays",
                "save_maps", "strict", "verbosity"),
    "sweep": ("sweep", "workdir", "only_cells", "dry_run"),
    "report": ("run", "out", "verbosity"),
    "export": ("model", "workdir", "out", "batch_size", "verbosity"),
}

_USAGE = {
    "inspect": "dicofun inspect FOLDER [--flags]",
    "run": "dicofun run --config=configs/<method>_<dataset>.py[:args]",
    "predict": "dicofun predict --model=DIR --images=DIR (DIR: an inspect "
               "--out folder or a run's workdir; --workdir is the same)",
    "sweep": "dicofun sweep --sweep=configs/sweeps/<name>.py[:args]",
    "report": "dicofun report --run=DIR [--out=FILE]",
    "export": "dicofun export --model=DIR [--out=FILE] (--workdir is the same)",
}


def command_help(command: str) -> str:
  """``--help`` of one command: what it does and its flags with defaults."""
  doc = (COMMANDS[command].__doc__ or "").strip().splitlines()[0]
  lines = [f"usage: {_USAGE[command]}", "", doc, "", "flags:"]
  for name in COMMAND_FLAGS[command]:
    flag = flags.FLAGS[name]
    default = flag.default_as_str if flag.default is not None else "None"
    lines.append(f"  --{name} (default: {default})")
    lines.append(f"      {flag.help}")
  return "\n".join(lines)


def main(argv: Sequence[str] = None) -> None:
  """``dicofun <command> [--flags]``."""
  argv = list(sys.argv if argv is None else argv)
  if len(argv) < 2 or argv[1] not in COMMANDS:
    sys.exit(f"usage: dicofun {{{'|'.join(COMMANDS)}}} [--flags]  "
             f"(dicofun <command> --help lists the flags)")
  command = argv.pop(1)
  if any(a in ("--help", "-h", "-?") for a in argv[1:]):
    try:
      print(command_help(command), flush=True)
    except BrokenPipeError:  # `dicofun inspect --help | head`: no traceback.
      os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return
  app.run(COMMANDS[command], argv=[f"{argv[0]} {command}"] + argv[1:])
