"""The ``dicofun`` command line: help, version, per-command flags, usage
errors, and what a command prints (issue 29)."""

import os
import re
import subprocess
import sys

import pytest

from dicofun import cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _dicofun(*args, env=None, cwd=REPO):
  return subprocess.run([sys.executable, "-m", "dicofun", *args],
                        capture_output=True, text=True, timeout=600,
                        cwd=cwd, env=env)


def test_help_lists_every_command_with_one_line_and_exits_0():
  proc = _dicofun("--help")
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.startswith("usage: dicofun <command>")
  for name, command in cli.COMMANDS.items():
    lines = [l for l in proc.stdout.splitlines()
             if l.strip().startswith(name + " ")]
    assert len(lines) == 1, (name, proc.stdout)
    assert command.summary in lines[0]
  assert "helpshort" not in proc.stdout + proc.stderr
  assert _dicofun("-h").stdout == proc.stdout


def test_no_command_and_unknown_command_exit_2():
  proc = _dicofun()
  assert proc.returncode == 2
  assert "inspect" in proc.stderr and "export" in proc.stderr
  proc = _dicofun("inpsect", "x")
  assert proc.returncode == 2
  lines = proc.stderr.splitlines()
  assert lines[0] == ("error: unknown command 'inpsect'; the commands: "
                      "inspect, run, predict, sweep, report, export, demo")
  assert lines[1].startswith("usage: dicofun {inspect|run|")
  assert len(lines) == 2


def test_version():
  import dicofun  # pylint: disable=g-import-not-at-top
  proc = _dicofun("--version")
  assert proc.returncode == 0
  assert proc.stdout.strip() == f"dicofun {dicofun.__version__}"


@pytest.mark.parametrize("command", list(cli.COMMANDS))
def test_each_command_help_shows_its_own_flags_only(command):
  text = cli.command_help(command)
  listed = set(re.findall(r"^  --(\w+)", text, flags=re.M))
  own = {n for n, f in cli.flag_values(command)._flags().items()  # pylint: disable=protected-access
         if n == f.name and type(f).__name__ != "_FlagAlias"}
  assert listed == own, (listed, own)
  assert "verbosity" in own
  # No other command's flags, no absl internals.
  for other in ("helpshort", "only_check_args", "logtostderr", "pdb"):
    assert other not in text
  assert text.count("\n  --out ") <= 1


def test_flag_sets_are_per_command():
  assert "method" in cli.flag_values("inspect")
  assert "method" not in cli.flag_values("export")
  assert "config" in cli.flag_values("run")
  assert "config" not in cli.flag_values("inspect")
  assert "images" not in cli.flag_values("report")
  assert "out" not in cli.flag_values("run")
  # Their help: each describes its own command only.
  assert "StableHLO" in cli.flag_values("export")["out"].help
  assert "StableHLO" not in cli.flag_values("inspect")["out"].help
  assert "predict:" not in cli.flag_values("export")["model"].help


def test_command_help_from_the_command_line_exits_0():
  proc = _dicofun("export", "--help")
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.startswith("usage: dicofun export --model=DIR")
  assert "--batch_size" in proc.stdout and "--method" not in proc.stdout
  assert "--images" not in proc.stdout


@pytest.mark.parametrize("args,message", [
    (["export", "--method=funad"], "error: Unknown command line flag 'method'"),
    (["inspect"], "error: inspect needs exactly one FOLDER"),
    (["inspect", "a", "b"], "error: inspect needs exactly one FOLDER, got 2"),
    (["run"], "error: --config is required"),
    (["predict", "--model=x"], "error: predict needs --model=DIR"),
    (["inspect", "x", "--image_size=big"],
     "error: flag --image_size=big: invalid literal"),
    (["report", "extra"], "error: report takes no positional argument"),
    (["demo"], "error: demo needs exactly one FOLDER"),
])
def test_a_wrong_flag_or_missing_argument_is_one_line_and_the_usage(
    args, message):
  proc = _dicofun(*args)
  assert proc.returncode == 2, proc.stderr
  lines = proc.stderr.splitlines()
  assert len(lines) == 2, proc.stderr
  assert lines[0].startswith(message), lines[0]
  assert lines[1].startswith(f"usage: dicofun {args[0]} "), lines[1]
  assert "helpshort" not in proc.stderr
  assert "Traceback" not in proc.stderr
  assert proc.stdout == ""


def test_demo_writes_the_quick_start_folder_once(tmp_path):
  folder = tmp_path / "line"
  args = ("demo", str(folder), "--num_good=3", "--num_defective=2",
          "--image_size=32")
  proc = _dicofun(*args)
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.strip() == (f"3 good and 2 defective images in {folder}; "
                                 f"next: dicofun inspect {folder}")
  good, defect = (sorted(os.listdir(folder / d)) for d in ("good", "defect"))
  assert good == ["000.png", "001.png", "002.png"]
  assert len(defect) == 2 and all(n.endswith("_000.png") for n in defect)
  # The same command again: nothing rewritten; other sizes: refused.
  mtime = os.path.getmtime(folder / "good" / "000.png")
  assert _dicofun(*args).returncode == 0
  assert os.path.getmtime(folder / "good" / "000.png") == mtime
  proc = _dicofun("demo", str(folder), "--num_good=4")
  assert proc.returncode == 2
  assert proc.stderr.startswith("error: ") and "not empty" in proc.stderr
  proc = _dicofun("demo", str(tmp_path / "other"), "--image_size=8")
  assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1
  assert proc.stderr.startswith("error: need image_size >= 16")
  # The defaults are the README quick start's folder.
  fv = cli.flag_values("demo")
  assert (fv["num_good"].default, fv["num_defective"].default,
          fv["image_size"].default) == (45, 5, 224)


def test_a_bad_config_arg_is_one_line_and_the_usage(tmp_path):
  proc = subprocess.run(
      [sys.executable, os.path.join(REPO, "experiments", "main.py"),
       "--config=" + os.path.join(REPO, "configs", "patchcore_synthetic.py")
       + ":colour=red", f"--workdir={tmp_path}"],
      capture_output=True, text=True, timeout=300, cwd=REPO)
  assert proc.returncode == 2
  lines = proc.stderr.splitlines()
  assert len(lines) == 2, proc.stderr
  assert lines[0].startswith("error: flag --config=")
  assert lines[0].endswith("ConfigArgError: unknown config arg 'colour'; "
                           "known args: ['backbone', 'category', "
                           "'contamination', 'coreset', 'coreset_method', "
                           "'crop', 'image_size', 'layer', 'local_average', "
                           "'norm', 'root', 'runlocal', 'seed', 'weights']")
  assert lines[1].startswith("usage: dicofun run --config=")


def test_run_config_file_flag_takes_overrides():
  argv = ["--config=" + os.path.join(REPO, "configs",
                                     "patchcore_synthetic.py") + ":runlocal",
          "--config.seed=7", "--config.dataset.synthetic.num_train=4",
          "--workdir=/tmp/x"]
  fv = cli.flag_values("run", argv)
  rest = fv(["dicofun run", *argv])
  assert rest == ["dicofun run"]
  assert fv.config.seed == 7
  assert fv.config.dataset.synthetic.num_train == 4
  assert fv.workdir == "/tmp/x"


def test_a_small_run_prints_its_table_once_and_no_library_chatter(tmp_path):
  proc = subprocess.run(
      [sys.executable, os.path.join(REPO, "experiments", "main.py"),
       "--config=" + os.path.join(REPO, "configs", "patchcore_synthetic.py")
       + ":runlocal,image_size=32", "--config.dataset.synthetic.num_train=8",
       "--config.dataset.synthetic.num_test_good=3",
       "--config.dataset.synthetic.num_test_anomalous=3",
       f"--workdir={tmp_path / 'run'}"],
      capture_output=True, text=True, timeout=600, cwd=str(tmp_path))
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert proc.stdout.count("### patchcore") == 1, proc.stdout
  assert "| test |" in proc.stdout
  assert "| test |" not in proc.stderr  # The table once, on stdout.
  assert "orbax" not in proc.stderr.lower(), proc.stderr
  assert "checkpoint_manager" not in proc.stderr
  # Only dicofun's own lines on stderr: each from a file of the package.
  ours = {f for _, _, files in os.walk(os.path.join(REPO, "dicofun"))
          for f in files if f.endswith(".py")}
  for line in proc.stderr.splitlines():
    if re.match(r"^[IWEF]\d{4} ", line):
      where = line.split("]")[0].split()[-1]
      assert where.split(":")[0] in ours, line
  assert len(proc.stderr.splitlines()) < 25, proc.stderr
  # --verbosity asks for the libraries' lines too.
  verbose = subprocess.run(
      [sys.executable, "-m", "dicofun", "run",
       "--config=" + os.path.join(REPO, "configs", "patchcore_synthetic.py")
       + ":runlocal,image_size=32", "--config.dataset.synthetic.num_train=8",
       "--config.dataset.synthetic.num_test_good=3",
       "--config.dataset.synthetic.num_test_anomalous=3",
       f"--workdir={tmp_path / 'run2'}", "--verbosity=0"],
      capture_output=True, text=True, timeout=600, cwd=str(tmp_path))
  assert verbose.returncode == 0, verbose.stderr[-3000:]
  assert "orbax" in verbose.stderr.lower() or (
      len(verbose.stderr.splitlines()) > len(proc.stderr.splitlines()))


def test_inspect_funad_shows_training_progress_with_rate_and_eta(tmp_path):
  """Not a terminal: progress lines (count, rate, ETA) through the log, the
  training's among them; one every DICOFUN_PROGRESS_SECONDS (0: each)."""
  from dicofun.data import synthetic  # pylint: disable=g-import-not-at-top
  line = synthetic.write_inspect_folder(str(tmp_path / "line"), num_good=6,
                                        num_defective=1, image_size=32)
  env = dict(os.environ, DICOFUN_PROGRESS_SECONDS="0")
  proc = _dicofun("inspect", line, f"--out={tmp_path / 'out'}",
                  "--method=funad", "--image_size=32", env=env,
                  cwd=str(tmp_path))
  assert proc.returncode == 0, proc.stderr[-3000:]
  training = [l for l in proc.stderr.splitlines()
              if "FUN-AD" in l and "it/s" in l and "ETA" in l]
  assert training, proc.stderr[-3000:]
  assert "orbax" not in proc.stderr.lower()
  assert proc.stdout.count("dicofun inspect: 7 images") == 1


def test_progress_lines_are_tagged_for_the_command_line(caplog):
  import logging as std_logging  # pylint: disable=g-import-not-at-top
  from dicofun import progress  # pylint: disable=g-import-not-at-top
  with caplog.at_level(std_logging.INFO):
    list(progress.progress(range(3), desc="slow", every_s=0.0))
    list(progress.progress(range(3), desc="quick", every_s=60.0))
  tagged = [r.getMessage() for r in caplog.records
            if getattr(r, progress.RECORD_ATTR, False)]
  assert tagged == ["slow: 1/3" + tagged[0][9:], *tagged[1:]]
  assert len(tagged) == 4 and all("slow" in t for t in tagged)
  # The quick loop's final line is an ordinary INFO line.
  assert any(r.getMessage().startswith("quick: 3/3") for r in caplog.records)
  keep = cli._OwnMessages(std_logging.WARNING)  # pylint: disable=protected-access
  assert all(keep.filter(r) == getattr(r, progress.RECORD_ATTR, False)
             for r in caplog.records)
