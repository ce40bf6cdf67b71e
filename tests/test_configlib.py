"""Config parsing: strict args, every config file loads."""

import glob
import importlib.util
import os

import ml_collections
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


def test_unknown_key_error_carries_the_known_keys():
  with pytest.raises(configlib.ConfigArgError) as e:
    configlib.parse_arg("colour=red", rho=0.5, epochs=3)
  assert str(e.value) == ("unknown config arg 'colour'; known args: "
                          "['epochs', 'rho']")
  assert e.value.known == ("epochs", "rho")


def test_flag_in_reads_one_boolean_and_the_last_mention_wins():
  assert configlib.flag_in("category=x,runlocal", "runlocal") is True
  assert configlib.flag_in("runlocal=false", "runlocal") is False
  assert configlib.flag_in("runlocal,runlocal=0", "runlocal") is False
  assert configlib.flag_in(None, "runlocal") is False
  assert configlib.flag_in("colour=red", "runlocal") is False
  with pytest.raises(configlib.ConfigArgError, match="runlocal"):
    configlib.flag_in("runlocal=maybe", "runlocal")


def _tiny_config():
  return ml_collections.ConfigDict(dict(
      seed=0, m=ml_collections.ConfigDict(dict(rho=0.5, kind="a", n=4))))


def test_apply_args_defaults_are_the_fields_values():
  args = {"rho": "m.rho", "kind": "m.kind", "seed": "seed"}
  assert configlib.arg_defaults(_tiny_config(), args) == dict(
      rho=0.5, kind="a", seed=0, runlocal=False)
  cfg = configlib.apply_args(_tiny_config(), "rho=0.25,runlocal", args)
  assert (cfg.m.rho, cfg.m.kind, cfg.seed, cfg.m.n) == (0.25, "a", 0, 4)
  cfg = _tiny_config()
  cfg.m.kind = "b"  # E.g. a runlocal block: the new default.
  assert configlib.apply_args(cfg, "seed=3", args).m.kind == "b"
  assert configlib.apply_args(cfg, "kind=c", args).m.kind == "c"
  with pytest.raises(configlib.ConfigArgError, match="'n'"):
    configlib.apply_args(_tiny_config(), "n=3", args)


def test_check_helpers_name_field_value_and_expectation():
  cases = [
      (lambda: configlib.check_choice("m.kind", "z", ("a", "b")),
       "config.m.kind='z': expected one of ['a', 'b']"),
      (lambda: configlib.check_positive_int("m.n", 0),
       "config.m.n=0: expected an integer >= 1"),
      (lambda: configlib.check_positive_int("m.n", 2.5),
       "config.m.n=2.5: expected an integer >= 1"),
      (lambda: configlib.check_positive("m.lr", -1.0),
       "config.m.lr=-1.0: expected a number > 0"),
      (lambda: configlib.check_fraction("m.rho", 1.01),
       "config.m.rho=1.01: expected a fraction in (0, 1]"),
  ]
  for call, message in cases:
    with pytest.raises(configlib.ConfigArgError) as e:
      call()
    assert str(e.value) == message
  configlib.check_fraction("m.rho", 1.0)
  configlib.check_positive_int("m.n", 1)


def test_run_config_has_the_dataset_defaults_and_no_overlap():
  cfg = configlib.run_config(method="m",
                             method_config=ml_collections.ConfigDict(dict(a=1)),
                             dataset="visa", backbone="efficientnet_lite0",
                             image_size=160)
  assert (cfg.dataset.category, cfg.dataset.crop_fraction,
          cfg.dataset.image_size, cfg.backbone.name, cfg.m.a) == (
              "candle", 0.875, 160, "efficientnet_lite0", 1)
  assert "overlap" not in cfg.dataset
  with pytest.raises(AttributeError):
    cfg.dataset.overlap = True
