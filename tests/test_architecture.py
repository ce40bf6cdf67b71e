"""The import graph of dicofun: no cycles, and every import points downwards.

Built with ``ast`` from the sources (nothing is imported), so it also sees
function-level imports. The layers are those of docs/architecture.md:

0 core      constants, cpu, progress, parallel, fileio
1 rooms     data.*, models.*, ops.*, metrics, summary
2 services  api, configlib, features, evaluate, checkpoint, viz, training
3 methods   methods.*
4 runner    protocol, results, runner, predict, sweep, inspection, report, export
5 cli       cli, __main__

A module may import any module of a lower layer, and a module of its own
layer only inside the same room (``data`` may import ``data``, a method its
own package or another method, the runner layer its peers).
"""

import ast
import os

import pytest

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))), "dicofun")

# Top-level module (or package) → (layer, room).
_LAYERS = {
    "dicofun": (0, "core"),
    "dicofun.constants": (0, "core"),
    "dicofun.cpu": (0, "core"),
    "dicofun.progress": (0, "core"),
    "dicofun.parallel": (0, "core"),
    "dicofun.fileio": (0, "core"),
    "dicofun.data": (1, "data"),
    "dicofun.models": (1, "models"),
    "dicofun.ops": (1, "ops"),
    "dicofun.metrics": (1, "metrics"),
    "dicofun.summary": (1, "summary"),
    "dicofun.api": (2, "api"),
    "dicofun.configlib": (2, "configlib"),
    "dicofun.features": (2, "features"),
    "dicofun.evaluate": (2, "evaluate"),
    "dicofun.checkpoint": (2, "checkpoint"),
    "dicofun.viz": (2, "viz"),
    # The training loop and the checkpoints it writes share a room.
    "dicofun.training": (2, "checkpoint"),
    "dicofun.methods": (3, "methods"),
    "dicofun.protocol": (4, "runner"),
    "dicofun.results": (4, "runner"),
    "dicofun.runner": (4, "runner"),
    "dicofun.predict": (4, "runner"),
    "dicofun.sweep": (4, "runner"),
    "dicofun.inspection": (4, "runner"),
    "dicofun.report": (4, "runner"),
    "dicofun.export": (4, "runner"),
    "dicofun.cli": (5, "cli"),
    "dicofun.__main__": (5, "cli"),
}


def _modules() -> dict[str, str]:
  mods = {}
  for root, _, files in os.walk(PACKAGE):
    for f in files:
      if f.endswith(".py"):
        path = os.path.join(root, f)
        rel = os.path.relpath(path, os.path.dirname(PACKAGE))[:-3]
        name = rel.replace(os.sep, ".")
        if name.endswith(".__init__"):
          name = name[:-len(".__init__")]
        mods[name] = path
  return mods


def _imports(path: str, mods: dict[str, str]) -> set[str]:
  """dicofun modules imported by the file at ``path`` (anywhere in it)."""
  out = set()
  for node in ast.walk(ast.parse(open(path).read())):
    if isinstance(node, ast.ImportFrom) and node.module and (
        node.module.startswith("dicofun")):
      for a in node.names:
        full = f"{node.module}.{a.name}"
        out.add(full if full in mods else node.module)
    elif isinstance(node, ast.Import):
      out.update(a.name for a in node.names if a.name.startswith("dicofun"))
  return {m for m in out if m in mods}


def _layer(name: str) -> tuple[int, str]:
  parts = name.split(".")
  for i in range(len(parts), 0, -1):
    key = ".".join(parts[:i])
    if key in _LAYERS:
      return _LAYERS[key]
  raise KeyError(name)


def _graph():
  mods = _modules()
  return mods, {m: _imports(p, mods) - {m} for m, p in mods.items()}


def test_every_module_has_a_layer():
  mods, _ = _graph()
  missing = []
  for m in mods:
    try:
      _layer(m)
    except KeyError:
      missing.append(m)
  assert not missing, f"add these modules to _LAYERS: {missing}"


def test_imports_point_downwards():
  _, edges = _graph()
  bad = []
  for m, targets in edges.items():
    lm, rm = _layer(m)
    for t in targets:
      if m.startswith(t + "."):  # A package's own __init__ (parent).
        continue
      lt, rt = _layer(t)
      if lt > lm or (lt == lm and rt != rm):
        bad.append(f"{m} (layer {lm}, {rm}) imports {t} (layer {lt}, {rt})")
  assert not bad, "upward or sideways imports:\n" + "\n".join(sorted(bad))


def test_no_import_cycle():
  _, edges = _graph()
  edges = {m: {t for t in ts if not m.startswith(t + ".")}
           for m, ts in edges.items()}
  state: dict[str, int] = {}
  stack: list[str] = []

  def visit(v):
    state[v] = 1
    stack.append(v)
    for w in sorted(edges[v]):
      if state.get(w) == 1:
        raise AssertionError("import cycle: " + " -> ".join(
            stack[stack.index(w):] + [w]))
      if w not in state:
        visit(w)
    stack.pop()
    state[v] = 2

  for v in sorted(edges):
    if v not in state:
      visit(v)


def test_no_import_error_guard_around_own_modules():
  mods, _ = _graph()
  guards = []
  for m, path in mods.items():
    for node in ast.walk(ast.parse(open(path).read())):
      if not isinstance(node, ast.Try):
        continue
      names = []
      for h in node.handlers:
        t = h.type
        elts = t.elts if isinstance(t, ast.Tuple) else [t]
        names += [e.id for e in elts if isinstance(e, ast.Name)]
      if not {"ImportError", "ModuleNotFoundError"} & set(names):
        continue
      for sub in node.body:
        for n in ast.walk(sub):
          if isinstance(n, ast.ImportFrom) and (n.module or "").startswith(
              "dicofun"):
            guards.append(f"{path}:{n.lineno}")
          elif isinstance(n, ast.Import) and any(
              a.name.startswith("dicofun") for a in n.names):
            guards.append(f"{path}:{n.lineno}")
  assert not guards, f"ImportError guards around dicofun imports: {guards}"


def test_library_never_looks_for_the_source_tree():
  """No library code reaches for ../shared or the checkout's own folders."""
  mods, _ = _graph()
  hits = []
  for path in mods.values():
    text = open(path).read()
    for needle in ('"shared"', "'shared'", '"experiments"', "REPO ="):
      if needle in text:
        hits.append(f"{path}: {needle}")
  assert not hits, hits


@pytest.mark.parametrize("name", ["patchcore", "softpatch", "funad", "dico"])
def test_method_configs_do_not_import_jax(name):
  """Loading a config must not build JAX or the method (ast-level check)."""
  mods, edges = _graph()
  seen, todo = set(), [f"dicofun.methods.{name}.config"]
  while todo:
    m = todo.pop()
    if m in seen:
      continue
    seen.add(m)
    todo += edges[m]
  heavy = []
  for m in seen:
    for node in ast.walk(ast.parse(open(mods[m]).read())):
      if isinstance(node, (ast.Import, ast.ImportFrom)):
        names = ([node.module or ""] if isinstance(node, ast.ImportFrom)
                 else [a.name for a in node.names])
        heavy += [f"{m}: {n}" for n in names
                  if n.split(".")[0] in ("jax", "flax", "optax", "orbax")]
  assert not heavy, heavy
