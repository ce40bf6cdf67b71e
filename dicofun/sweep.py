"""Parameter sweeps: a grid of ordinary runs, resumable, aggregated at the end.

A sweep config (``configs/sweeps/<name>.py``) defines ``get_sweep(arg)``
returning a ConfigDict with

* ``base``: a run config and its argument string, e.g.
  ``"configs/funad_synthetic.py:runlocal"``;
* ``axes``: axis name → list of values. An axis name is a config argument of
  the base config (``rho``, ``contamination``, ...), except the special axis
  ``config`` whose values are config file paths (to compare methods);
* ``metric``: the headline metric ``"<view>.<metric>"`` (or a list of them),
  e.g. ``"test.image_auroc"``;
* ``rows`` / ``cols``: the axes of the markdown table and heat map (default:
  the first two axes).

Every cell of the grid is the base argument string with the cell's values
merged in (``key=value``), so it goes through the same strict
``get_config(arg)`` parsing as a hand-typed run: all cells are validated before
the first one runs, and a typo fails the sweep at once. A cell runs as
``python -m dicofun run --config=<file>:<arg> --workdir=<cell dir>`` in
its own process (**ours**: a crash or an out-of-memory in one cell does not
end the sweep), in ``<sweep workdir>/<axis1=v1,axis2=v2>``. A cell whose
``results.json`` exists is finished and skipped; a cell with a partial workdir
is started again and resumes from its own training checkpoints.

Afterwards ``sweep_results.csv`` (one row per cell: axis values, status and
every metric of every view), ``sweep_results.md`` (the headline metric as a
rows × cols table) and one heat map per headline metric are written to the
sweep workdir. The tables, ``sweep.json`` and each ``sweep_cell.json`` are
written atomically (``dicofun.fileio``): a failed write keeps the old file.
"""

from __future__ import annotations

import collections.abc
import csv
import dataclasses
import importlib.util
import itertools
import json
import math
import os
import subprocess
import sys
import time
from typing import Any, Callable, Optional, Sequence

from absl import logging
import ml_collections
import numpy as np

from dicofun import fileio
from dicofun import user_errors
from dicofun import viz

CONFIG_AXIS = "config"
RESULTS = "results.json"
CELL_INFO = "sweep_cell.json"
CELL_LOG = "sweep_cell.log"
CSV_NAME = "sweep_results.csv"
MD_NAME = "sweep_results.md"


class SweepError(user_errors.UserError, ValueError):
  """A sweep config or sweep workdir that cannot be run as asked."""


@dataclasses.dataclass(frozen=True)
class Cell:
  """One point of the grid.

  Attributes:
    index: position in the grid (0-based, row-major over the axes).
    values: axis name → value, in axis order.
    labels: axis name → the value as written in names, tables and the CSV
      (a config path's file stem for the ``config`` axis).
    config_path: the run config file of this cell.
    arg: the merged config argument string.
    name: the cell's directory name, ``axis1=v1,axis2=v2``.
  """

  index: int
  values: dict[str, Any]
  labels: dict[str, str]
  config_path: str
  arg: str

  @property
  def name(self) -> str:
    return ",".join(f"{k}={v}" for k, v in self.labels.items())

  @property
  def config_flag(self) -> str:
    return f"{self.config_path}:{self.arg}" if self.arg else self.config_path


@dataclasses.dataclass
class SweepOutcome:
  """What ``run_sweep`` did.

  Attributes:
    cells: every cell of the grid.
    ran: names of the cells run by this call.
    skipped: names of finished cells skipped.
    failed: names of cells whose run exited with an error (this call).
    pending: names of cells neither finished nor run (``only_cells`` or
      ``dry_run``).
    rows: the aggregated table (one dict per cell), empty on a dry run.
    files: files written by the aggregation.
  """

  cells: list[Cell]
  ran: list[str] = dataclasses.field(default_factory=list)
  skipped: list[str] = dataclasses.field(default_factory=list)
  failed: list[str] = dataclasses.field(default_factory=list)
  pending: list[str] = dataclasses.field(default_factory=list)
  rows: list[dict[str, Any]] = dataclasses.field(default_factory=list)
  files: list[str] = dataclasses.field(default_factory=list)


# --------------------------------------------------------------------------
# Loading configs.


# Directories (besides the cwd) where relative config paths are looked up:
# a sweep file's own folder and its parents, so ``configs/x.py`` named in
# ``configs/sweeps/y.py`` is found from any working directory.
_SEARCH_DIRS: list[str] = []


def resolve_path(path: str) -> str:
  """``path`` as given (absolute or from the cwd), else from a sweep's folder.

  Relative paths are tried from the cwd, then from the folder of the sweep
  file being loaded and its two parents (``configs/sweeps/x.py`` names base
  configs as ``configs/<name>.py``).
  """
  if os.path.isabs(path) or os.path.exists(path):
    return os.path.abspath(path)
  for d in _SEARCH_DIRS:
    candidate = os.path.join(d, path)
    if os.path.exists(candidate):
      return os.path.abspath(candidate)
  raise FileNotFoundError(f"no such config file: {path!r} (looked in the "
                          f"current directory and in {_SEARCH_DIRS})")


def _import_file(path: str):
  path = resolve_path(path)
  name = "_dicofun_cfg_" + os.path.splitext(os.path.basename(path))[0]
  spec = importlib.util.spec_from_file_location(name, path)
  if spec is None or spec.loader is None:
    raise SweepError(f"cannot import {path}")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def load_config(path: str, arg: str = "") -> ml_collections.ConfigDict:
  """Calls ``get_config(arg)`` of a run config file (strict arg parsing)."""
  module = _import_file(path)
  return module.get_config(arg or None)


def load_sweep(spec: str) -> ml_collections.ConfigDict:
  """Loads ``configs/sweeps/<x>.py[:arg]`` and checks its fields."""
  path, _, arg = spec.partition(":")
  here = os.path.dirname(resolve_path(path))
  for d in (here, os.path.dirname(here), os.path.dirname(os.path.dirname(here))):
    if d not in _SEARCH_DIRS:
      _SEARCH_DIRS.append(d)
  module = _import_file(path)
  if not hasattr(module, "get_sweep"):
    raise SweepError(f"{path} defines no get_sweep(arg)")
  sweep = module.get_sweep(arg or None)
  check_sweep(sweep)
  return sweep


def _get(sweep: Any, key: str, default: Any = None) -> Any:
  # ConfigDict and dict both have .get; a locked ConfigDict too.
  return sweep.get(key, default)


def axes_of(sweep: Any) -> list[tuple[str, list[Any]]]:
  """The sweep's axes, ordered ``rows``, ``cols``, then the others.

  ConfigDict sorts its keys, so the written order of ``axes`` is not kept;
  the table axes come first **(ours)** so cell names read like the table.
  """
  raw = _get(sweep, "axes")
  if isinstance(raw, (ml_collections.ConfigDict, collections.abc.Mapping)):
    items = [(str(k), list(v)) for k, v in raw.items()]
  elif isinstance(raw, (list, tuple)):
    items = [(str(k), list(v)) for k, v in raw]
  else:
    raise SweepError("sweep.axes must map axis names to lists of values")
  names = [k for k, _ in items]
  order = [a for a in (_get(sweep, "rows"), _get(sweep, "cols"))
           if a and a in names]
  order += [n for n in names if n not in order]
  values = dict(items)
  return [(n, values[n]) for n in order]


def table_axes(sweep: Any) -> tuple[str, Optional[str]]:
  """(rows axis, cols axis or None) of the sweep's table and heat map."""
  names = [n for n, _ in axes_of(sweep)]
  rows = _get(sweep, "rows") or names[0]
  cols = _get(sweep, "cols")
  if cols is None and len(names) > 1:
    cols = next(n for n in names if n != rows)
  return rows, cols


def metrics_of(sweep: Any) -> list[str]:
  m = _get(sweep, "metric", "test.image_auroc")
  return [m] if isinstance(m, str) else [str(x) for x in m]


def check_sweep(sweep: Any) -> None:
  """Raises SweepError naming the first problem of a sweep config."""
  base = _get(sweep, "base")
  if not isinstance(base, str) or not base:
    raise SweepError("sweep.base must be 'configs/<file>.py[:arg]'")
  axes = axes_of(sweep)
  if not axes:
    raise SweepError("sweep.axes is empty")
  names = [n for n, _ in axes]
  for name, values in axes:
    if not values:
      raise SweepError(f"sweep axis {name!r} has no values")
    if len(set(_label(name, v) for v in values)) != len(values):
      raise SweepError(f"sweep axis {name!r} repeats a value: {values}")
  for key in ("rows", "cols"):
    a = _get(sweep, key)
    if a is not None and a not in names:
      raise SweepError(f"sweep.{key}={a!r} is not an axis; axes: {names}")
  if _get(sweep, "rows") and _get(sweep, "rows") == _get(sweep, "cols"):
    raise SweepError("sweep.rows and sweep.cols name the same axis")
  for m in metrics_of(sweep):
    if "." not in m:
      raise SweepError(f"sweep.metric {m!r} must be '<view>.<metric>', e.g. "
                       "'test.image_auroc'")


# --------------------------------------------------------------------------
# Cells.


def format_value(value: Any) -> str:
  """A value as written in a config argument (the inverse of parse_arg)."""
  if isinstance(value, (bool, np.bool_)):
    return "true" if value else "false"
  if isinstance(value, (list, tuple)):
    return "+".join(format_value(v) for v in value)
  if isinstance(value, (float, np.floating)):
    return repr(float(value))
  text = str(value)
  if "," in text or ":" in text:
    raise SweepError(f"sweep value {text!r} cannot be written in a config "
                     "argument (no ',' or ':')")
  return text


def _label(axis: str, value: Any) -> str:
  if axis == CONFIG_AXIS:
    return os.path.splitext(os.path.basename(str(value)))[0]
  return format_value(value).replace(os.sep, "-")


def merge_arg(base_arg: str, overrides: Sequence[tuple[str, Any]]) -> str:
  """Base argument string with ``key=value`` overrides (replacing the key).

  ``merge_arg("category=bottle,runlocal", [("rho", 0.25)])`` gives
  ``"category=bottle,runlocal,rho=0.25"``; an override of a key already in
  the base replaces it in place.
  """
  items: dict[str, Optional[str]] = {}
  for item in (base_arg or "").split(","):
    item = item.strip()
    if not item:
      continue
    key, sep, raw = item.partition("=")
    items[key.strip()] = raw.strip() if sep else None
  for key, value in overrides:
    items[key] = format_value(value)
  return ",".join(k if v is None else f"{k}={v}" for k, v in items.items())


def expand_cells(sweep: Any) -> list[Cell]:
  """Every cell of the grid, row-major over ``axes_of(sweep)``."""
  check_sweep(sweep)
  base_path, _, base_arg = _get(sweep, "base").partition(":")
  axes = axes_of(sweep)
  cells = []
  for i, combo in enumerate(itertools.product(*[v for _, v in axes])):
    values = {name: v for (name, _), v in zip(axes, combo)}
    path = str(values.get(CONFIG_AXIS, base_path))
    overrides = [(k, v) for k, v in values.items() if k != CONFIG_AXIS]
    cells.append(Cell(index=i, values=values,
                      labels={k: _label(k, v) for k, v in values.items()},
                      config_path=path, arg=merge_arg(base_arg, overrides)))
  return cells


def validate_cells(cells: Sequence[Cell]) -> None:
  """Builds every cell's config; the first bad one raises before any run.

  Raises:
    SweepError: naming the cell, with the config's own error message.
  """
  for cell in cells:
    try:
      load_config(cell.config_path, cell.arg)
    except Exception as e:  # pylint: disable=broad-except
      raise SweepError(f"sweep cell {cell.name!r} ({cell.config_flag}) has an "
                       f"invalid config: {e}") from e


def cell_dir(workdir: str, cell: Cell) -> str:
  return os.path.join(workdir, cell.name)


def is_finished(workdir: str, cell: Cell) -> bool:
  return os.path.exists(os.path.join(cell_dir(workdir, cell), RESULTS))


def check_cell_info(workdir: str, cell: Cell) -> None:
  """Refuses a cell directory left by a sweep with another config."""
  path = os.path.join(cell_dir(workdir, cell), CELL_INFO)
  if not os.path.exists(path):
    return
  with open(path) as f:
    info = json.load(f)
  same = (info.get("arg") == cell.arg and
          os.path.basename(info.get("config", "")) ==
          os.path.basename(cell.config_path))
  if not same:
    raise SweepError(
        f"{cell_dir(workdir, cell)} holds a run of {info.get('config')}:"
        f"{info.get('arg')}, not {cell.config_flag}; use a new --workdir or "
        "remove that directory")


def write_cell_info(workdir: str, cell: Cell, **extra: Any) -> None:
  d = cell_dir(workdir, cell)
  os.makedirs(d, exist_ok=True)
  info = dict(config=cell.config_path, arg=cell.arg, values=cell.values,
              **extra)
  fileio.write_json_atomic(os.path.join(d, CELL_INFO), info, indent=1,
                           default=str)


def cell_command(cell: Cell, workdir: str) -> list[str]:
  """The command line that runs one cell as an ordinary run."""
  return [sys.executable, "-m", "dicofun", "run",
          f"--config={resolve_path(cell.config_path)}"
          + (f":{cell.arg}" if cell.arg else ""),
          f"--workdir={cell_dir(workdir, cell)}"]


def run_cell(cell: Cell, workdir: str) -> int:
  """Runs one cell in a subprocess; its output goes to the cell's log.

  Returns:
    The process's exit status (0 = success).
  """
  cmd = cell_command(cell, workdir)
  d = cell_dir(workdir, cell)
  os.makedirs(d, exist_ok=True)
  with open(os.path.join(d, CELL_LOG), "a") as log:
    log.write(f"\n$ {' '.join(cmd)}\n")
    log.flush()
    proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT,
                          cwd=os.getcwd(), check=False)
  return proc.returncode


def _log_tail(workdir: str, cell: Cell, n: int = 15) -> str:
  try:
    with open(os.path.join(cell_dir(workdir, cell), CELL_LOG)) as f:
      return "".join(f.readlines()[-n:])
  except OSError:
    return ""


def _fmt_seconds(s: float) -> str:
  s = max(0, int(round(s)))
  h, rem = divmod(s, 3600)
  m, sec = divmod(rem, 60)
  return f"{h}h{m:02d}m" if h else f"{m}m{sec:02d}s"


def run_cells(cells: Sequence[Cell], workdir: str, *,
              only_cells: Optional[int] = None, dry_run: bool = False,
              runner: Optional[Callable[[Cell, str], int]] = None,
              name: str = "", plan: Optional[dict[str, Any]] = None
              ) -> SweepOutcome:
  """Runs the pending cells (each an ordinary run in ``workdir/<name>``).

  Every cell's config is built first (a bad one raises before anything
  runs); a cell whose results.json exists is skipped; a cell directory left
  by another config is refused. ``plan`` goes into ``workdir/sweep.json``
  with the cell list. Used by ``run_sweep`` and ``benchmarks/suite.py``.

  Returns:
    A SweepOutcome without rows (the caller aggregates).
  """
  plan = plan or {"name": name}
  validate_cells(cells)
  names = [c.name for c in cells]
  if len(set(names)) != len(names):
    raise SweepError(f"two sweep cells share a directory name: {names}")
  for cell in cells:
    check_cell_info(workdir, cell)
  outcome = SweepOutcome(cells=cells)
  todo = [c for c in cells if not is_finished(workdir, c)]
  outcome.skipped = [c.name for c in cells if is_finished(workdir, c)]
  logging.info("%s: %d cells, %d finished, %d to run",
               name or workdir, len(cells), len(outcome.skipped), len(todo))
  if dry_run:
    for cell in cells:
      state = "finished" if cell.name in outcome.skipped else "pending"
      logging.info("cell %d/%d [%s] %s", cell.index + 1, len(cells), state,
                   " ".join(cell_command(cell, workdir)))
    outcome.pending = [c.name for c in todo]
    return outcome
  os.makedirs(workdir, exist_ok=True)
  fileio.write_json_atomic(
      os.path.join(workdir, "sweep.json"),
      {**plan, "cells": [{"name": c.name, "config": c.config_path,
                          "arg": c.arg} for c in cells]},
      indent=1, default=str)
  runner = runner or run_cell
  budget = len(todo) if only_cells is None else min(len(todo), only_cells)
  durations: list[float] = []
  # Before the first cell of this call ends, finished cells' run times give
  # the ETA (a resumed sweep shows one from the start).
  earlier = [_results_seconds(workdir, c) for c in cells
             if c.name in outcome.skipped]
  earlier = [t for t in earlier if t is not None]
  for k, cell in enumerate(todo[:budget]):
    eta = ""
    if durations or earlier:
      per_cell = np.mean(durations or earlier)
      eta = f", ETA {_fmt_seconds(per_cell * (budget - k))}"
    logging.info("Cell %d/%d (%d of %d to run%s): %s", cell.index + 1,
                 len(cells), k + 1, budget, eta, cell.name)
    write_cell_info(workdir, cell)
    t0 = time.time()
    status = runner(cell, workdir)
    durations.append(time.time() - t0)
    write_cell_info(workdir, cell, returncode=int(status),
                     seconds=durations[-1])
    if status == 0 and is_finished(workdir, cell):
      outcome.ran.append(cell.name)
      logging.info("Cell %s finished in %s", cell.name,
                   _fmt_seconds(durations[-1]))
    else:
      outcome.failed.append(cell.name)
      logging.error("Cell %s failed (exit status %s); log tail:\n%s",
                    cell.name, status, _log_tail(workdir, cell))
  outcome.pending = [c.name for c in todo[budget:]]
  if outcome.pending:
    logging.info("Stopped with %d cells pending (--only_cells=%s); run "
                 "the same command again to continue", len(outcome.pending),
                 only_cells)
  return outcome


def run_sweep(sweep: Any, workdir: str, *, only_cells: Optional[int] = None,
              dry_run: bool = False,
              runner: Optional[Callable[[Cell, str], int]] = None,
              name: str = "") -> SweepOutcome:
  """Runs the pending cells of ``sweep`` and aggregates the results.

  Args:
    sweep: a sweep ConfigDict (``load_sweep``).
    workdir: the sweep directory; cell ``c`` runs in ``workdir/c.name``.
    only_cells: run at most this many pending cells, then aggregate and stop
      (None = all).
    dry_run: validate and log the plan without running or aggregating.
    runner: ``runner(cell, workdir) -> exit status`` (default ``run_cell``,
      a subprocess per cell).
    name: a title for the tables and heat maps.

  Returns:
    A SweepOutcome.

  Raises:
    SweepError: an invalid sweep or cell config, before anything runs.
  """
  cells = expand_cells(sweep)
  outcome = run_cells(cells, workdir, only_cells=only_cells, dry_run=dry_run,
                      runner=runner, name=name,
                      plan={"name": name, "sweep": _plain(sweep)})
  if dry_run:
    return outcome
  outcome.rows = collect_results(cells, workdir)
  outcome.files = write_aggregates(sweep, outcome.rows, workdir, name=name)
  return outcome


def _results_seconds(workdir: str, cell: Cell) -> Optional[float]:
  try:
    with open(os.path.join(cell_dir(workdir, cell), RESULTS)) as f:
      t = json.load(f).get("seconds")
  except (OSError, ValueError):
    return None
  return float(t) if isinstance(t, (int, float)) else None


def _plain(x: Any) -> Any:
  if isinstance(x, ml_collections.ConfigDict):
    return x.to_dict()
  return x


# --------------------------------------------------------------------------
# Aggregation.


def flatten_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
  """``{view: {metric: v}}`` → ``{"view.metric": v}`` (scalars only)."""
  out = {}
  for view, m in metrics.items():
    if not isinstance(m, dict):
      continue
    for key, v in m.items():
      if isinstance(v, (int, float, str, bool)) or v is None:
        out[f"{view}.{key}"] = v
  return out


def last_epoch_values(res: dict[str, Any]) -> dict[str, Any]:
  """``{"last.<key>": v}``: the numeric values of the training history's
  last row in a results.json (losses, DiCo's gate quantiles and item usage,
  FUN-AD's pseudo-label counts); ``{}`` for runs without a history."""
  history = (res.get("extra") or {}).get("history") or []
  if not history:
    return {}
  return {f"last.{k}": v for k, v in history[-1].items()
          if k not in ("epoch", "step") and isinstance(v, (int, float))
          and not isinstance(v, bool)}


def collect_results(cells: Sequence[Cell],
                    workdir: str) -> list[dict[str, Any]]:
  """One row per cell: axis labels, status, seconds and flattened metrics.

  Status is ``done`` (results.json present), ``failed`` (the last run of the
  cell exited with an error) or ``pending``.
  """
  rows = []
  for cell in cells:
    row: dict[str, Any] = dict(cell.labels)
    d = cell_dir(workdir, cell)
    path = os.path.join(d, RESULTS)
    if os.path.exists(path):
      with open(path) as f:
        res = json.load(f)
      row["status"] = "done"
      row["seconds"] = res.get("seconds")
      row.update(flatten_metrics(res.get("metrics", {})))
      row.update(last_epoch_values(res))
    else:
      status = "pending"
      info_path = os.path.join(d, CELL_INFO)
      if os.path.exists(info_path):
        with open(info_path) as f:
          if json.load(f).get("returncode", 0) != 0:
            status = "failed"
      row["status"] = status
    rows.append(row)
  return rows


def write_csv(path: str, rows: Sequence[dict[str, Any]],
              axis_names: Sequence[str]) -> None:
  """Axis columns first, then status, seconds and metrics (sorted)."""
  fixed = list(axis_names) + ["status", "seconds"]
  rest = sorted({k for r in rows for k in r} - set(fixed))
  with fileio.open_atomic(path, newline="") as f:
    w = csv.DictWriter(f, fieldnames=fixed + rest, restval="")
    w.writeheader()
    for r in rows:
      w.writerow({k: ("" if r.get(k) is None else r.get(k))
                  for k in fixed + rest})


def metric_grids(sweep: Any, rows: Sequence[dict[str, Any]], metric: str
                 ) -> list[tuple[str, np.ndarray, list[str], list[str]]]:
  """The metric as rows × cols matrices, one per combination of other axes.

  Returns:
    A list of (suffix, matrix, row labels, col labels); ``suffix`` names the
    fixed values of the other axes ("" when there are none). Missing cells
    are NaN.
  """
  axes = axes_of(sweep)
  labels = {n: [_label(n, v) for v in vals] for n, vals in axes}
  r_axis, c_axis = table_axes(sweep)
  others = [n for n, _ in axes if n not in (r_axis, c_axis)]
  r_labels = labels[r_axis]
  c_labels = labels[c_axis] if c_axis else [metric]
  out = []
  for combo in itertools.product(*[labels[o] for o in others]):
    fixed = dict(zip(others, combo))
    m = np.full((len(r_labels), len(c_labels)), np.nan)
    for row in rows:
      if any(row.get(o) != v for o, v in fixed.items()):
        continue
      v = row.get(metric)
      if not isinstance(v, (int, float)) or isinstance(v, bool):
        continue
      i = r_labels.index(row[r_axis])
      j = c_labels.index(row[c_axis]) if c_axis else 0
      m[i, j] = float(v)
    suffix = ",".join(f"{k}={v}" for k, v in fixed.items())
    out.append((suffix, m, r_labels, c_labels))
  return out


def markdown_table(matrix: np.ndarray, row_labels: Sequence[str],
                   col_labels: Sequence[str], *, corner: str = "",
                   fmt: str = ".4f") -> str:
  """A markdown table of ``matrix`` ("—" for NaN)."""
  lines = ["| " + corner + " | " + " | ".join(col_labels) + " |",
           "|---" * (len(col_labels) + 1) + "|"]
  for label, vals in zip(row_labels, matrix):
    cells = ["—" if math.isnan(v) else format(v, fmt) for v in vals]
    lines.append(f"| {label} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def write_aggregates(sweep: Any, rows: Sequence[dict[str, Any]], workdir: str,
                     *, name: str = "") -> list[str]:
  """Writes the CSV, the markdown tables and the heat maps.

  Returns:
    The paths written.
  """
  os.makedirs(workdir, exist_ok=True)
  axis_names = [n for n, _ in axes_of(sweep)]
  r_axis, c_axis = table_axes(sweep)
  written = []
  csv_path = os.path.join(workdir, CSV_NAME)
  write_csv(csv_path, rows, axis_names)
  written.append(csv_path)
  done = sum(r.get("status") == "done" for r in rows)
  title = name or os.path.basename(os.path.normpath(workdir))
  md = [f"# Sweep {title}\n",
        f"Base: `{_get(sweep, 'base')}`; {done}/{len(rows)} cells finished.\n"]
  grids = {m: metric_grids(sweep, rows, m) for m in metrics_of(sweep)}
  corner = f"{r_axis} \\ {c_axis}" if c_axis else r_axis
  for metric, items in grids.items():
    for suffix, matrix, r_labels, c_labels in items:
      md.append(f"## {metric}" + (f" ({suffix})" if suffix else "") + "\n")
      md.append(markdown_table(matrix, r_labels, c_labels, corner=corner))
  md_path = os.path.join(workdir, MD_NAME)
  fileio.write_text_atomic(md_path, "\n".join(md))
  written.append(md_path)
  # Heat maps last: the tables above are already on disk if plotting fails.
  for metric, items in grids.items():
    for suffix, matrix, r_labels, c_labels in items:
      stem = "heatmap_" + metric.replace(".", "_")
      if suffix:
        stem += "_" + suffix.replace(",", "_").replace("=", "-")
      path = os.path.join(workdir, stem + ".png")
      viz.save_heatmap(
          path, matrix, row_labels=list(r_labels), col_labels=list(c_labels),
          title=f"{title}: {metric}" + (f" ({suffix})" if suffix else ""),
          fmt="{:.3f}", xlabel=c_axis or "", ylabel=r_axis)
      written.append(path)
  logging.info("Sweep results: %s", ", ".join(written))
  return written
