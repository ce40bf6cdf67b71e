"""Config parsing: strict args, every config file loads."""

import glob
import importlib.util
import os

import pytest

from dicofun import configlib
from dicofun import data as data_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_parse_arg_types_and_flags():
  cfg = configlib.parse_arg("category=bottle,contamination=0.1,runlocal,n=3,"
                            "layers=4+8", category="x", contamination=0.0,
                            runlocal=False, n=1, layers=(8,))
  assert cfg.category == "bottle"
  assert cfg.contamination == pytest.approx(0.1)
  assert cfg.runlocal is True
  assert cfg.n == 3
  assert cfg.layers == (4, 8)


def test_parse_arg_defaults_when_empty():
  cfg = configlib.parse_arg(None, category="x")
  assert cfg.category == "x"


def test_unknown_key_is_an_error_naming_the_key():
  with pytest.raises(configlib.ConfigArgError, match="categry"):
    configlib.parse_arg("categry=bottle", category="x")


def test_bad_value_is_an_error():
  with pytest.raises(configlib.ConfigArgError, match="contamination"):
    configlib.parse_arg("contamination=lots", contamination=0.0)
  with pytest.raises(configlib.ConfigArgError, match="runlocal"):
    configlib.parse_arg("runlocal=maybe", runlocal=False)


def test_parsed_config_is_locked():
  cfg = configlib.parse_arg("", category="x")
  with pytest.raises(AttributeError):
    cfg.other = 1


@pytest.mark.parametrize(
    "path", sorted(glob.glob(os.path.join(REPO, "configs", "*.py"))),
    ids=os.path.basename)
def test_every_config_file_loads(path):
  spec = importlib.util.spec_from_file_location("cfg", path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  cfg = mod.get_config()
  assert cfg.method in path
  assert cfg.dataset.name in data_lib.DATASETS
  assert mod.__doc__ and "experiments/main.py" in mod.__doc__
  with pytest.raises(configlib.ConfigArgError):
    mod.get_config("no_such_key=1")
