"""The methods: one folder each, one registry.

``METHODS`` maps a ``config.method`` name to the module that implements it.
Every such module exposes::

    def run(config, data: api.RunData, workdir: str) -> api.Predictions
    def predict(config, state, records) -> (scores, maps)

(see ``dicofun.api``). Modules are imported when first asked for, so that
loading a config (``methods/<name>/config.py``) never builds JAX programs.
To add a method: a folder ``methods/<name>/`` with ``config.py`` (its
``default_config()``, ``apply_args`` and ``check(config)``) and ``method.py``
(``run``/``predict``), and one line here. A method whose ``config.py``
defines ``min_train_images(config)`` is refused on fewer training images
(``check_train_count``), before any work.
"""

from __future__ import annotations

import importlib
import types

from dicofun import user_errors

METHODS: dict[str, str] = {
    "patchcore": "dicofun.methods.patchcore.method",
    "softpatch": "dicofun.methods.softpatch.method",
    "funad": "dicofun.methods.funad.method",
    "dico": "dicofun.methods.dico.method",
}


class UnknownMethodError(user_errors.UserError, ValueError):
  """``config.method`` names no registered method."""


class TooFewImagesError(user_errors.UserError, ValueError):
  """Fewer training images than ``config.method`` needs."""


def check_method(name: str) -> None:
  """Raises ``UnknownMethodError`` naming the known methods."""
  if name not in METHODS:
    raise UnknownMethodError(
        f"config.method={name!r} is not a dicofun method; known methods: "
        f"{sorted(METHODS)}")


def get_method(name: str) -> types.ModuleType:
  """The method module registered under ``name``."""
  check_method(name)
  return importlib.import_module(METHODS[name])


def check_config(config) -> None:
  """The checks of ``config.method``'s ``config.py`` on a finished config.

  A config file runs them when it parses its arguments; ``dicofun run`` runs
  them again after any ``--config.<field>=...`` flag override, so a value out
  of range fails before any work.

  Raises:
    UnknownMethodError: ``config.method`` names no registered method.
    configlib.ConfigArgError: naming the field, its value and what is
      expected.
  """
  check_method(config.method)
  _config_module(config.method).check(config)


def _config_module(name: str):
  """``methods/<name>/config.py``, or None for a method registered without
  one (a test double)."""
  package = METHODS[name].rpartition(".")[0]
  return importlib.import_module(f"{package}.config") if package else None


def min_train_images(config) -> int:
  """The fewest training images ``config.method`` can be fitted on.

  ``min_train_images(config)`` of the method's ``config.py``; 1 where it
  states none.
  """
  check_method(config.method)
  module = _config_module(config.method)
  fn = getattr(module, "min_train_images", None)
  return int(fn(config)) if fn is not None else 1


def check_train_count(config, n: int) -> None:
  """Raises ``TooFewImagesError`` when ``n`` training images are too few.

  Called by ``dicofun run`` and ``dicofun inspect`` before any work (feature
  extraction, training).

  Args:
    config: a run config.
    n: the number of training images.
  """
  need = min_train_images(config)
  if n < need:
    raise TooFewImagesError(
        f"{config.method} needs at least {need} training images, got {n}")
