r"""The ``dicofun`` command: ``inspect``, ``run``, ``predict``, ``sweep``, ``report``, ``export``, ``demo``.

Usage::

  dicofun demo runs/quickstart/line
  dicofun inspect /path/to/folder --out=runs/inspect_folder
  dicofun run --config=configs/patchcore_synthetic.py --workdir=runs/quick
  dicofun predict --model=runs/inspect_folder --images=/path/to/new/images
  dicofun sweep --sweep=configs/sweeps/tiny_synthetic.py --workdir=runs/sw
  dicofun report --run=runs/quick
  dicofun export --model=runs/inspect_folder --out=model.stablehlo

Conventions (those of argparse sub-commands): ``dicofun --help`` lists the
commands, one line each, and exits 0; ``dicofun --version``; each command has
its own flags (``COMMANDS[name].define``, an absl ``FlagValues`` of its own,
so ``dicofun export --help`` shows export's flags only, and a flag of
another command is an unknown flag there); ``dicofun <command> --help`` shows
them with their defaults. A wrong flag, a bad flag value or a missing
argument ends the command with one line ``error: <message>`` and the
command's usage on stderr, exit status 2. ``run``'s ``--config`` is an
``ml_collections`` config file flag: ``--config=configs/x.py:args`` and
``--config.a.b=value`` overrides.

Output: each result is printed once on stdout (the inspect summary, the run's
metrics table). On stderr, by default, dicofun's own warnings (``run`` and
``sweep``: and its INFO lines) and its progress — a tqdm bar with rate and
ETA on a terminal, else a line every ~10 s (``dicofun.progress``); the
libraries' chatter (orbax, absl, jax warnings) is off. ``--verbosity=N``
(absl's levels: -1 warnings, 0 INFO, 1 DEBUG) shows every logger at that
level, the libraries' included.

Errors the user can fix (``dicofun.user_errors.UserError``: bad data, bad
config, a refused resume, an output path that is a file) end a command with
one line ``error: <message>`` on stderr and exit status 2, no traceback.
Ctrl-C ends a command with exit status 130 (``dicofun.interrupt``: training
stops at a safe point, and ``dicofun run`` resumes with the same command).

``python -m dicofun`` is the same command; ``experiments/*.py`` are thin
shells over ``main``. JAX's CPU device count must be set before JAX starts,
so the entry points (``dicofun/__main__.py``, ``experiments/*.py``) call
``dicofun.cpu.configure_cpu_devices()`` before importing this module.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging as std_logging
import os
import sys
import warnings
from typing import Callable, NoReturn, Optional, Sequence

from absl import flags
from absl import logging
from ml_collections import config_flags

import dicofun
from dicofun import export as export_lib
from dicofun import fileio
from dicofun import inspection
from dicofun import interrupt
from dicofun import locking
from dicofun import methods
from dicofun import predict as predict_lib
from dicofun import progress
from dicofun import report as report_lib
from dicofun import results as results_lib
from dicofun import runner
from dicofun import sweep as sweep_lib
from dicofun import user_errors
from dicofun.data import errors
from dicofun.data import synthetic

PROG = "dicofun"
_HELP_ARGS = ("--help", "-h", "-?", "--helpshort", "--helpfull")
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


class UsageError(Exception):
  """A wrong flag or a missing argument: one line plus the usage, exit 2."""


# ------------------------------------------------------------ the flags
#
# Each command defines its own flags in a FlagValues of its own, made afresh
# for each invocation (``argv`` is what ml_collections reads the
# ``--config.*`` overrides from).


def _verbosity(fv: flags.FlagValues) -> None:
  flags.DEFINE_integer(
      "verbosity", None, "log level of every logger, the libraries' (orbax, "
      "jax, absl) included: -1 warnings, 0 INFO, 1 DEBUG. Default: dicofun's "
      "own messages and progress only.", short_name="v", flag_values=fv)


def _strict(fv: flags.FlagValues) -> None:
  flags.DEFINE_bool(
      "strict", False, "abort on an unreadable image file instead of "
      "skipping it (skipped files are listed in errors.csv).", flag_values=fv)


def _model(fv: flags.FlagValues, what: str) -> None:
  flags.DEFINE_string(
      "model", None, f"{what}: a dicofun inspect --out folder or a finished "
      "run's workdir (both hold model/).", flag_values=fv)
  flags.DEFINE_alias("workdir", "model", flag_values=fv)


def _define_inspect(fv: flags.FlagValues, argv: Sequence[str]) -> None:
  del argv
  flags.DEFINE_string(
      "out", None, "output folder (default runs/inspect_<folder name>): new, "
      "empty or an earlier dicofun output, replaced as a whole at the end.",
      flag_values=fv)
  flags.DEFINE_enum(
      "method", inspection.DEFAULT_METHOD,
      ["softpatch", "patchcore", "funad", "dico"],
      "the method. Default softpatch: the best of the benchmarks "
      "(BENCHMARKS.md) when the training set holds unlabelled defects, as an "
      "inspected folder does, and no epochs to tune.", flag_values=fv)
  flags.DEFINE_string(
      "backbone", inspection.DEFAULT_BACKBONE,
      "feature backbone. Default efficientnet_lite0: several times faster "
      "than dinov2_vits14 on a laptop CPU, pretrained weights fetched once "
      "from the package index.", flag_values=fv)
  flags.DEFINE_integer(
      "image_size", inspection.DEFAULT_IMAGE_SIZE,
      "input side S (images are resized to SxS, no crop); 224 is the "
      "backbones' pretraining size.", flag_values=fv)
  flags.DEFINE_string(
      "labels", None, "optional CSV with columns file,label (0/good/ok = "
      "normal, empty = unknown, else defective) for the ROC and AUROC in the "
      "report; without it, sub-folders named good/ok label their images.",
      flag_values=fv)
  flags.DEFINE_float(
      "contamination_hint", None,
      "expected fraction of defective images, in (0, 1); the threshold "
      "becomes the 1-hint quantile of the scores. Default: the robust rule "
      "median + 3.5 x 1.4826 x MAD of the scores.", flag_values=fv)
  _strict(fv)
  _verbosity(fv)


def _define_run(fv: flags.FlagValues, argv: Sequence[str]) -> None:
  config_flags.DEFINE_config_file(
      "config", None, "config file configs/<method>_<dataset>.py[:args]; "
      "fields can be overridden with --config.<field>=<value>.",
      flag_values=fv, lock_config=True, sys_argv=list(argv))
  flags.DEFINE_string(
      "workdir", None, "output directory (default runs/<config "
      "name>[_<args>]); the same command resumes an interrupted run there.",
      flag_values=fv)
  _verbosity(fv)


def _define_predict(fv: flags.FlagValues, argv: Sequence[str]) -> None:
  del argv
  _model(fv, "the trained model")
  flags.DEFINE_string(
      "images", None, "folder of images to score (searched recursively).",
      flag_values=fv)
  flags.DEFINE_string(
      "out", None, "output folder (default <model>/predictions): scores.csv, "
      "report.html, overlays/.", flag_values=fv)
  flags.DEFINE_float(
      "threshold", None, "decision threshold (default: the model's own).",
      flag_values=fv)
  flags.DEFINE_bool(
      "overlays", True, "write one overlay PNG per image (and the report's "
      "thumbnails).", flag_values=fv)
  flags.DEFINE_bool(
      "save_maps", False, "keep maps.npy, the (n, S, S) float32 maps.",
      flag_values=fv)
  _strict(fv)
  _verbosity(fv)


def _define_sweep(fv: flags.FlagValues, argv: Sequence[str]) -> None:
  del argv
  flags.DEFINE_string(
      "sweep", None, "sweep config configs/sweeps/<name>.py[:args].",
      flag_values=fv)
  flags.DEFINE_string(
      "workdir", None, "the sweep directory (default "
      "runs/sweeps/<name>[_<args>]); the same command resumes there.",
      flag_values=fv)
  flags.DEFINE_integer(
      "only_cells", None, "run at most this many pending cells, then stop.",
      flag_values=fv)
  flags.DEFINE_bool(
      "dry_run", False, "validate the cells and list their commands only.",
      flag_values=fv)
  _verbosity(fv)


def _define_report(fv: flags.FlagValues, argv: Sequence[str]) -> None:
  del argv
  flags.DEFINE_string(
      "run", None, "a finished folder: a dicofun run workdir (results.json, "
      "test_scores.csv) or a dicofun inspect --out folder.", flag_values=fv)
  flags.DEFINE_string(
      "out", None, "the HTML file (default <run>/report.html).",
      flag_values=fv)
  _verbosity(fv)


def _define_export(fv: flags.FlagValues, argv: Sequence[str]) -> None:
  del argv
  _model(fv, "the model to export")
  flags.DEFINE_string(
      "out", None, "the StableHLO file (default <model>/model.stablehlo).",
      flag_values=fv)
  flags.DEFINE_integer(
      "batch_size", 1, "the fixed batch of the exported scorer.",
      flag_values=fv)
  _verbosity(fv)


_DEMO = synthetic.write_inspect_folder.__kwdefaults__


def _define_demo(fv: flags.FlagValues, argv: Sequence[str]) -> None:
  del argv
  flags.DEFINE_integer("num_good", _DEMO["num_good"], "good images "
                       "(FOLDER/good/).", flag_values=fv)
  flags.DEFINE_integer("num_defective", _DEMO["num_defective"],
                       "defective images (FOLDER/defect/<defect>_NNN.png).",
                       flag_values=fv)
  flags.DEFINE_integer(
      "image_size", inspection.DEFAULT_IMAGE_SIZE,
      "side of the square images, in pixels (default: inspect's input "
      "size).", flag_values=fv)
  flags.DEFINE_integer("seed", _DEMO["seed"], "fixes every image.",
                       flag_values=fv)
  _verbosity(fv)


# ------------------------------------------------------------ helpers


def _fail(error: object) -> NoReturn:
  """Ends the command: ``error: <message>`` (one line) on stderr, exit 2."""
  print(f"error: {user_errors.one_line(error)}", file=sys.stderr, flush=True)
  sys.exit(user_errors.EXIT_USER_ERROR)


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


def _no_positional(args: Sequence[str], command: str) -> None:
  if args:
    raise UsageError(f"{command} takes no positional argument, got "
                     f"{' '.join(args)!r}")


class _OwnMessages(std_logging.Filter):
  """Passes dicofun's records (at ``level`` and up, progress always) and the
  libraries' errors; drops the libraries' INFO and warnings."""

  def __init__(self, level: int):
    super().__init__()
    self.level = level

  def filter(self, record: std_logging.LogRecord) -> bool:
    if getattr(record, progress.RECORD_ATTR, False):
      return True
    if record.pathname.startswith(_PACKAGE_DIR):
      return record.levelno >= self.level
    return record.levelno >= std_logging.ERROR


def configure_logging(verbosity: Optional[int], *, info: bool) -> None:
  """What a command shows on stderr (see the module docstring).

  Args:
    verbosity: ``--verbosity`` (absl's levels) or None: None keeps the
      libraries' INFO lines and warnings off.
    info: without ``--verbosity``, show dicofun's INFO lines too (else its
      warnings and progress only).
  """
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()  # absl's own flags keep their defaults.
  logging.use_absl_handler()
  handler = logging.get_absl_handler()
  for f in list(handler.filters):
    if isinstance(f, _OwnMessages):
      handler.removeFilter(f)
  if verbosity is not None:
    logging.set_verbosity(verbosity)  # The root logger's level too.
    return
  logging.set_verbosity(logging.INFO)
  handler.addFilter(_OwnMessages(std_logging.INFO if info
                                 else std_logging.WARNING))
  # Python warnings of the libraries (jax's, numpy's) off; dicofun's kept.
  warnings.filterwarnings("ignore")
  warnings.filterwarnings("default", module=r"dicofun(\.|$)")


# ------------------------------------------------------------ the commands


def inspect_command(args: Sequence[str], fv: flags.FlagValues) -> None:
  """Finds the defective images of a folder, ranked, with a report.

  Fits a method on every image of FOLDER and scores those same images;
  writes scores.csv, report.html and the model (for dicofun predict) to
  --out.
  """
  if len(args) != 1:
    raise UsageError("inspect needs exactly one FOLDER"
                     + (f", got {len(args)}: {' '.join(args)}" if args else ""))
  folder = args[0]
  out = fv.out or os.path.join(
      "runs", "inspect_" + os.path.basename(os.path.normpath(folder)))
  try:
    config = inspection.inspect_config(
        fv.method, backbone=fv.backbone, image_size=fv.image_size)
    # One process per --out folder, from before any work (dicofun.locking).
    with locking.folder_lock(out, flag="--out",
                             lock_path=locking.sibling_lock_path(out)):
      outcome = inspection.inspect_folder(
          folder, out_dir=out, labels_csv=fv.labels,
          contamination_hint=fv.contamination_hint, strict=fv.strict,
          config=config)
  except (errors.DatasetError, fileio.OutputFolderError) as e:
    _fail(e)
  print(inspection.summary(outcome))


def run_command(args: Sequence[str], fv: flags.FlagValues) -> None:
  """Trains and evaluates one config; prints its metrics table.

  experiments/main.py is the same command; the same command resumes an
  interrupted run in its --workdir.
  """
  _no_positional(args, "run")
  config = fv.config
  if config is None:
    raise UsageError("--config is required, e.g. "
                     "--config=configs/patchcore_synthetic.py")
  spec = fv["config"].serialize().split("=", 1)[1]
  workdir = fv.workdir or os.path.join("runs", _name_of(spec))
  logging.info("Workdir: %s", workdir)
  methods.check_config(config)  # Again: --config.* flags may have changed it.
  metrics = runner.train_and_evaluate(config, workdir)
  # The table is the run's headline output; a person reads it on stdout.
  print(results_lib.metrics_table(metrics,
                                  title=f"{config.method} — {workdir}"))


def predict_command(args: Sequence[str], fv: flags.FlagValues) -> None:
  """Scores new images with a trained model, with a report.

  Writes scores.csv, overlays and report.html to --out, and warns when the
  images are unlike the model's training images.
  """
  _no_positional(args, "predict")
  if not fv.model or not fv.images:
    raise UsageError("predict needs --model=DIR (an inspect --out folder or "
                     "a run workdir; --workdir is the same) and --images=DIR")
  out = fv.out or os.path.join(fv.model, "predictions")
  # One process per --out folder (dicofun.locking); the default one lies in
  # the model folder, not made here when that is missing (an error below).
  lock = (locking.folder_lock(out, flag="--out",
                              lock_path=locking.sibling_lock_path(out))
          if fv.out or os.path.isdir(fv.model)
          else contextlib.nullcontext())
  try:
    with lock:
      outcome = predict_lib.predict_folder(
          fv.model, fv.images, out_dir=out, threshold=fv.threshold,
          overlays=fv.overlays, keep_maps=fv.save_maps, strict=fv.strict)
  except (errors.DatasetError, FileNotFoundError,
          fileio.OutputFolderError) as e:
    _fail(e)
  print(predict_lib.summary(outcome))


def sweep_command(args: Sequence[str], fv: flags.FlagValues) -> int:
  """Runs one training per cell of a parameter grid, then the summary.

  Each cell is a dicofun run in its own folder; the same command resumes.
  """
  _no_positional(args, "sweep")
  spec = fv.sweep
  if not spec:
    raise UsageError("sweep needs --sweep=configs/sweeps/<name>.py[:args]")
  workdir = fv.workdir or os.path.join("runs", "sweeps", _name_of(spec))
  name = os.path.basename(os.path.normpath(workdir))
  logging.info("Sweep %s → %s", spec, workdir)
  sweep = sweep_lib.load_sweep(spec)
  outcome = sweep_lib.run_sweep(sweep, workdir, only_cells=fv.only_cells,
                                dry_run=fv.dry_run, name=name)
  if fv.dry_run:  # run_sweep has logged the plan.
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


def report_command(args: Sequence[str], fv: flags.FlagValues) -> None:
  """Writes report.html again from a finished run or inspect folder."""
  _no_positional(args, "report")
  if not fv.run:
    raise UsageError("report needs --run=DIR (a dicofun run workdir or a "
                     "dicofun inspect --out folder)")
  try:
    path = report_lib.build(fv.run, fv.out)
  except (report_lib.NotAReportableRunError, OSError, ValueError,
          KeyError) as e:
    _fail(e)
  print(f"report: {path}")


def export_command(args: Sequence[str], fv: flags.FlagValues) -> None:
  """Exports a PatchCore/SoftPatch model as StableHLO, to run without dicofun.

  The file's .json twin says how to call it.
  """
  _no_positional(args, "export")
  if not fv.model:
    raise UsageError("export needs --model=DIR (holding model/; --workdir "
                     "is the same)")
  out = fv.out or os.path.join(fv.model, "model.stablehlo")
  try:
    info = export_lib.export_scorer(fv.model, out, batch_size=fv.batch_size)
  except (export_lib.NotExportableError, FileNotFoundError,
          fileio.OutputFolderError) as e:
    _fail(e)
  print(f"exported the {info['method']} scorer (uint8 ({info['batch_size']}, "
        f"{info['image_size']}, {info['image_size']}, 3) → scores, maps) to "
        f"{out}; how to call it: {out}.json")


def demo_command(args: Sequence[str], fv: flags.FlagValues) -> None:
  """Writes a demo folder to inspect: synthetic parts, a few defective.

  The embedded procedural texture (dicofun.data.synthetic), as a line
  delivers it: unlabelled images, the defective ones mixed in; the good/ and
  defect/ sub-folders only give inspect's report its labels. The same
  command again on the folder it wrote does nothing.
  """
  if len(args) != 1:
    raise UsageError("demo needs exactly one FOLDER"
                     + (f", got {len(args)}: {' '.join(args)}" if args else ""))
  try:
    folder = synthetic.write_inspect_folder(
        args[0], num_good=fv.num_good, num_defective=fv.num_defective,
        image_size=fv.image_size, seed=fv.seed)
  except (FileExistsError, ValueError) as e:
    _fail(e)
  print(f"{fv.num_good} good and {fv.num_defective} defective images in "
        f"{folder}; next: {PROG} inspect {args[0]}")


@dataclasses.dataclass(frozen=True)
class Command:
  """A sub-command: what it runs, its flags, its usage line.

  Attributes:
    run: ``run(positional args, parsed flags)``; its return value is the
      exit status (None: 0).
    define: ``define(flag_values, argv)`` defines the command's flags.
    usage: the usage line after ``dicofun``.
    info: its INFO lines are shown by default (long jobs that log where
      they are); else warnings and progress only.
  """

  run: Callable[[Sequence[str], flags.FlagValues], object]
  define: Callable[[flags.FlagValues, Sequence[str]], None]
  usage: str
  info: bool = False

  @property
  def summary(self) -> str:
    """The first line of the command's docstring."""
    return (self.run.__doc__ or "").strip().splitlines()[0].rstrip(".")


COMMANDS: dict[str, Command] = {
    "inspect": Command(inspect_command, _define_inspect,
                       "inspect FOLDER [--out=DIR] [--method=NAME] [flags]"),
    "run": Command(run_command, _define_run,
                   "run --config=configs/<method>_<dataset>.py[:args] "
                   "[--workdir=DIR] [--config.<field>=<value>]", info=True),
    "predict": Command(predict_command, _define_predict,
                       "predict --model=DIR --images=DIR [--out=DIR] [flags]"),
    "sweep": Command(sweep_command, _define_sweep,
                     "sweep --sweep=configs/sweeps/<name>.py[:args] "
                     "[--workdir=DIR] [flags]", info=True),
    "report": Command(report_command, _define_report,
                      "report --run=DIR [--out=FILE]"),
    "export": Command(export_command, _define_export,
                      "export --model=DIR [--out=FILE] [--batch_size=N]"),
    "demo": Command(demo_command, _define_demo, "demo FOLDER [flags]"),
}


def flag_values(command: str, argv: Sequence[str] = ()) -> flags.FlagValues:
  """A fresh FlagValues holding ``command``'s flags only."""
  fv = flags.FlagValues()
  COMMANDS[command].define(fv, [PROG, *argv])
  return fv


def usage(command: str) -> str:
  """The usage line of ``command``, with where its flags are listed."""
  return (f"usage: {PROG} {COMMANDS[command].usage}  "
          f"({PROG} {command} --help lists the flags)")


def _defined_order(fv: flags.FlagValues) -> list[str]:
  """The long flag names of ``fv`` in the order they were defined."""
  every = fv._flags()  # pylint: disable=protected-access
  names = [n for n, f in every.items() if n == f.name]
  return names


def command_help(command: str) -> str:
  """``dicofun <command> --help``: what it does and its flags only, with
  their defaults."""
  fv = flag_values(command)
  doc = [l.strip() for l in
         (COMMANDS[command].run.__doc__ or "").strip().splitlines()]
  lines = [f"usage: {PROG} {COMMANDS[command].usage}", "", *doc, "",
           "flags:"]
  every = fv._flags()  # pylint: disable=protected-access
  aliases = {n: f.help.split("--")[-1].rstrip(".") for n, f in every.items()
             if type(f).__name__ == "_FlagAlias"}
  for name in _defined_order(fv):
    flag = every[name]
    if name in aliases:
      continue  # Listed with the flag it stands for.
    default = flag.default_as_str if flag.default is not None else "None"
    names = f"--{name}" + "".join(f", --{a}" for a, of in aliases.items()
                                  if of == name)
    if flag.short_name:
      names += f", -{flag.short_name}"
    lines.append(f"  {names} (default: {default})")
    lines.append(f"      {flag.help}")
  lines += ["  -h, --help", "      this help."]
  return "\n".join(lines)


def overview() -> str:
  """``dicofun --help``: the commands, one line each."""
  width = max(map(len, COMMANDS))
  lines = [f"usage: {PROG} <command> [flags]  ({PROG} <command> --help "
           "lists its flags)", "", "commands:"]
  lines += [f"  {name:<{width}}  {c.summary}" for name, c in COMMANDS.items()]
  lines += ["", "options:", "  -h, --help  this list", "  --version   "
            f"{PROG}'s version"]
  return "\n".join(lines)


def _print(text: str, file=None) -> None:
  """Prints; a reader that stops early (``| head``) is no error."""
  try:
    print(text, file=file or sys.stdout, flush=True)
  except BrokenPipeError:
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _usage_error(command: Optional[str], message: str) -> NoReturn:
  _print(f"error: {user_errors.one_line(message)}", file=sys.stderr)
  _print(usage(command) if command else
         f"usage: {PROG} {{{'|'.join(COMMANDS)}}} [flags]  ({PROG} --help "
         "lists the commands)", file=sys.stderr)
  sys.exit(user_errors.EXIT_USER_ERROR)


def _flag_error(error: flags.Error) -> str:
  """One line of a flag parsing error (a config file's traceback: its last
  line, the exception)."""
  lines = [l for l in str(error).splitlines() if l.strip()]
  if len(lines) > 1 and any(l.startswith("Traceback") for l in lines):
    return f"{lines[0]} {lines[-1]}"
  return " ".join(lines)


def run(command: str, argv: Sequence[str]) -> int:
  """Parses ``command``'s flags from ``argv`` and runs it.

  Args:
    command: a key of ``COMMANDS``.
    argv: the arguments after the command name.

  Returns:
    The exit status (errors exit through ``sys.exit``).
  """
  if any(a in _HELP_ARGS for a in argv):
    _print(command_help(command))
    return 0
  fv = flag_values(command, argv)
  try:
    rest = fv([f"{PROG} {command}", *argv])[1:]
  except flags.Error as e:
    _usage_error(command, _flag_error(e))
  configure_logging(fv["verbosity"].value, info=COMMANDS[command].info)
  interrupt.install()
  try:
    status = COMMANDS[command].run(rest, fv)
  except UsageError as e:
    _usage_error(command, str(e))
  except user_errors.UserError as e:
    # Bad input, not a bug: say what is wrong without a traceback.
    _fail(e)
  except KeyboardInterrupt as e:
    _interrupted(e)
  if interrupt.requested():  # A Ctrl-C that something swallowed.
    _interrupted(None)
  return int(status or 0)


def main(argv: Optional[Sequence[str]] = None) -> None:
  """``dicofun <command> [flags]``; exits with the command's status."""
  argv = list(sys.argv if argv is None else argv)[1:]
  if not argv:
    _print(overview(), file=sys.stderr)
    sys.exit(user_errors.EXIT_USER_ERROR)
  first = argv[0]
  if first in _HELP_ARGS:
    _print(overview())
    sys.exit(0)
  if first == "--version":
    _print(f"{PROG} {dicofun.__version__}")
    sys.exit(0)
  if first not in COMMANDS:
    _usage_error(None, f"unknown command {first!r}; the commands: "
                 f"{', '.join(COMMANDS)}")
  sys.exit(run(first, argv[1:]))
