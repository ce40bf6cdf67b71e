"""The config files: docstrings that match their parsers, run commands that
parse, the experiment each file states, and named errors at parse time."""

import glob
import importlib.util
import os
import re
import subprocess
import sys

import ml_collections
import pytest

from dicofun import configlib
from dicofun import methods
from dicofun import sweep as sweep_lib
from dicofun.methods.dico import config as dico_config
from dicofun.methods.funad import config as funad_config
from dicofun.methods.patchcore import config as patchcore_config
from dicofun.methods.softpatch import config as softpatch_config
from dicofun.models import names
from dicofun.models import registry

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN_CONFIGS = sorted(glob.glob(os.path.join(REPO, "configs", "*.py")))
SWEEP_CONFIGS = sorted(glob.glob(os.path.join(REPO, "configs", "sweeps",
                                              "*.py")))
ALL_CONFIGS = RUN_CONFIGS + SWEEP_CONFIGS
METHOD_CONFIGS = {"funad": funad_config, "dico": dico_config,
                  "patchcore": patchcore_config, "softpatch": softpatch_config}


def _rel(path):
  return os.path.relpath(path, REPO)


def _load(path):
  spec = importlib.util.spec_from_file_location(
      "cfg_" + os.path.basename(path)[:-3], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _entry(module):
  """``get_config`` of a run config, ``get_sweep`` of a sweep config."""
  return getattr(module, "get_config", None) or module.get_sweep


def _get_config(name, arg=None):
  return _load(os.path.join(REPO, "configs", name + ".py")).get_config(arg)


def documented_args(doc):
  """The names of a docstring's ``Args:`` paragraph.

  The paragraph starts at ``Args:`` and ends at its first full stop outside
  parentheses; notes in parentheses are dropped; ``none`` means no args.
  """
  match = re.search(r"^Args:(.*)", doc, re.S | re.M)
  assert match, "the docstring has no 'Args:' paragraph"
  text = re.sub(r"\([^()]*\)", "", match.group(1))
  text = text.split(".", 1)[0]
  items = {i.strip() for i in text.split(",")}
  return set() if items == {"none"} else items


def documented_commands(doc):
  """(config path, arg) of every ``--config=``/``--sweep=`` in a docstring."""
  return re.findall(r"--(?:config|sweep)=(configs/\S+?\.py)(?::(\S+))?", doc)


def accepted_args(module):
  """The keys the file's own parser accepts (from its unknown-key error)."""
  with pytest.raises(configlib.ConfigArgError) as e:
    _entry(module)("no_such_arg_probe=1")
  return set(e.value.known)


@pytest.mark.parametrize("path", ALL_CONFIGS, ids=_rel)
def test_docstring_lists_exactly_the_args_the_parser_accepts(path):
  module = _load(path)
  documented, accepted = documented_args(module.__doc__), accepted_args(module)
  assert not documented - accepted, (
      f"{_rel(path)} documents args its parser rejects: "
      f"{sorted(documented - accepted)}")
  assert not accepted - documented, (
      f"{_rel(path)} accepts args its docstring omits: "
      f"{sorted(accepted - documented)}")


def test_documented_args_reads_names_not_notes():
  doc = ("x\n\nArgs: a, b (1 = c, d), e (f|g\nh), runlocal (i).\n"
         "Defaults: j, k.\n")
  assert documented_args(doc) == {"a", "b", "e", "runlocal"}
  assert documented_args("Args: none.\n") == set()


@pytest.mark.parametrize("path", ALL_CONFIGS, ids=_rel)
def test_documented_run_commands_parse(path):
  module = _load(path)
  commands = documented_commands(module.__doc__)
  assert commands, f"{_rel(path)} documents no run command"
  for config_path, arg in commands:
    assert config_path == _rel(path), (
        f"{_rel(path)}'s docstring runs {config_path}")
    result = _entry(module)(arg or None)
    if path in SWEEP_CONFIGS:
      sweep_lib.check_sweep(result)
      sweep_lib.validate_cells(sweep_lib.expand_cells(result))


# The user docs whose run commands must parse (docs/reliability.md quotes a
# deliberately bad one).
_DOCS = ("README.md", "docs/experiments.md", "docs/datasets.md",
         "docs/inspect.md", "docs/scaling.md", "docs/backbones.md")


def test_readme_run_commands_parse():
  texts = {}
  for doc in _DOCS:
    with open(os.path.join(REPO, doc)) as f:
      texts[doc] = f.read()
  # The design's headline command stays in README.
  assert ("python experiments/main.py --config=configs/funad_visa.py\n"
          in texts["README.md"])
  commands = [c for text in texts.values() for c in re.findall(
      r"--config=(configs/[a-z_]+\.py)(?::([^\s`]+))?", text)]
  assert len(commands) >= 15
  for config_path, arg in commands:
    _load(os.path.join(REPO, config_path)).get_config(arg or None)


def test_benchmark_run_args_parse():
  """BENCHMARKS.md's ``benchmarks/methods.py --runs="<method>:<args>"``."""
  with open(os.path.join(REPO, "BENCHMARKS.md")) as f:
    text = f.read()
  # Each command: from ``benchmarks/methods.py`` to the end of its block.
  commands = [c.split("```", 1)[0]
              for c in text.split("benchmarks/methods.py")[1:]]
  datasets = set(re.findall(r"--dataset=(\w+)", text))
  assert datasets == {"magnetic_tile", "elpv"}
  runs = [(dataset, method, arg) for c in commands
          for dataset in re.findall(r"--dataset=(\w+)", c)[:1]
          for method, arg in re.findall(r'--runs="(\w+):([^"]*)"', c)]
  assert len(runs) == len(re.findall(r'--runs="', text)) >= 13
  assert {d for d, _, _ in runs} == datasets
  for dataset, method, arg in runs:
    _get_config(f"{method}_{dataset}", arg + ",contamination=0.1")


@pytest.mark.parametrize("path", RUN_CONFIGS, ids=_rel)
def test_config_states_its_method_and_dataset(path):
  method, dataset = os.path.basename(path)[:-3].split("_", 1)
  config = _load(path).get_config()
  assert config.method == method
  assert config.dataset.name == dataset
  assert config.backbone.name in names.BACKBONE_NAMES
  assert method in config


@pytest.mark.parametrize("path", RUN_CONFIGS, ids=_rel)
def test_overlap_is_gone(path):
  module = _load(path)
  assert "overlap" not in module.get_config().dataset
  with pytest.raises(configlib.ConfigArgError,
                     match="^unknown config arg 'overlap'; known args: "):
    module.get_config("overlap=true")


@pytest.mark.parametrize("path", RUN_CONFIGS, ids=_rel)
def test_a_misspelt_field_in_a_config_is_refused(path):
  config = _load(path).get_config("runlocal")
  with pytest.raises(AttributeError):
    config[config.method].epochz = 3


@pytest.mark.parametrize("method,field,value,arg", [
    ("funad", "rho", 0.3, "rho"),
    ("funad", "lr", 5e-4, "lr"),
    ("funad", "d_norm", "rank", "d_norm"),
    ("funad", "smoothness", "kl", "smoothness"),
    ("dico", "memory_size", 7, "memory"),
    ("dico", "score_mode", "max", "score"),
    ("patchcore", "coreset_fraction", 0.4, "coreset"),
    ("softpatch", "coreset_fraction", 0.4, "coreset"),
    ("patchcore", "coreset_method", "approximate", "coreset_method"),
    ("softpatch", "coreset_method", "approximate", "coreset_method"),
])
def test_arg_defaults_come_from_default_config(monkeypatch, method, field,
                                               value, arg):
  """One source: a changed ``default_config()`` moves the arg's default."""
  lib = METHOD_CONFIGS[method]
  original = lib.default_config

  def changed(*args, **kwargs):
    cfg = original(*args, **kwargs)
    cfg[field] = value
    return cfg

  monkeypatch.setattr(lib, "default_config", changed)
  assert _get_config(f"{method}_synthetic")[method][field] == value
  explicit = original()[field]
  assert _get_config(f"{method}_synthetic",
                     f"{arg}={explicit}")[method][field] == explicit


def test_funad_synthetic_runlocal_block():
  config = _get_config("funad_synthetic", "runlocal,contamination=0.1")
  assert config.dataset.image_size == 112
  assert config.dataset.contamination == 0.1
  assert (config.dataset.synthetic.num_train,
          config.dataset.synthetic.num_test_good,
          config.dataset.synthetic.num_test_anomalous) == (30, 10, 10)
  funad = config.funad
  assert (funad.epochs, funad.batch_size, funad.eval_every,
          funad.checkpoint_every) == (3, 8, 1, 1)
  full = _get_config("funad_synthetic")
  assert full.dataset.image_size == 224
  # The default preset's budget is in optimiser steps (issue 27).
  assert (full.funad.steps, full.funad.min_epochs, full.funad.eval_every,
          full.funad.checkpoint_every) == (100, 2, 25, 25)
  paper = _get_config("funad_synthetic", "preset=paper")
  assert (paper.funad.epochs, paper.funad.steps,
          paper.funad.eval_every) == (1500, 0, 50)
  # An explicit epochs= counts the budget in epochs, steps= wins with it.
  assert (_get_config("funad_synthetic", "epochs=30").funad.steps,
          _get_config("funad_synthetic", "epochs=30,steps=500").funad.steps
          ) == (0, 500)


def test_funad_preset_then_runlocal_then_explicit_args():
  """The preset builds the block, runlocal shrinks it, explicit args win."""
  paper = _get_config("funad_synthetic", "runlocal,preset=paper")
  assert paper.funad.preset == "paper"
  assert (paper.funad.epochs, paper.funad.batch_size, paper.funad.lr,
          paper.funad.d_norm, paper.funad.bce) == (3, 8, 2e-5, "minmax",
                                                   "clamped")
  assert paper.funad.to_dict() == {
      **funad_config.default_config("paper").to_dict(),
      "epochs": 3, "batch_size": 8, "eval_every": 1, "checkpoint_every": 1}
  mixed = _get_config("funad_magnetic_tile",
                      "preset=paper,d_norm=percentile,d_lo=90,bce=logit,"
                      "soft,ema=0.9,batch=16,exclude=1,dist_input=1")
  f = mixed.funad
  assert (f.refresh_every, f.lr, f.d_norm, f.d_norm_lo, f.bce, f.soft_labels,
          f.ema, f.batch_size, f.bank_exclude_batch,
          f.distance_on_input) == (1, 2e-5, "percentile", 90.0, "logit",
                                   True, 0.9, 16, True, True)
  default = _get_config("funad_mvtec", "refresh_every=5").funad
  assert (default.preset, default.refresh_every, default.bank_patches) == (
      "default", 5, 8192)


@pytest.mark.parametrize("arg,message", [
    ("preset=fast", "config.funad.preset='fast': expected one of "
     "['default', 'paper']"),
    ("preset=paper,soft", "config.funad.soft_labels=True: expected False "
     "unless funad.bce='logit' (soft targets)"),
    ("d_norm=zscore", "config.funad.d_norm='zscore': expected one of "
     "['minmax', 'percentile', 'rank']"),
    ("d_lo=99.9,d_hi=99", "config.funad.d_norm_lo/d_norm_hi=(99.9, 99.0): "
     "expected percentiles 0 <= lo < hi <= 100"),
    ("ema=1", "config.funad.ema=1.0: expected a decay in [0, 1) (0 = off)"),
    ("schedule=step", "config.funad.schedule='step': expected one of "
     "['constant', 'cosine']"),
])
def test_funad_knob_errors_are_named(arg, message):
  with pytest.raises(configlib.ConfigArgError) as e:
    _get_config("funad_synthetic", arg)
  assert str(e.value) == message


def test_funad_preset_must_match_the_block():
  config = configlib.run_config(
      method="funad", method_config=funad_config.default_config("paper"),
      dataset="synthetic", backbone="dinov2_vits14", image_size=224)
  with pytest.raises(configlib.ConfigArgError,
                     match=r"^config\.funad\.preset='default': expected the "
                     r"preset the method block was built with \('paper'\)"):
    funad_config.apply_args(config, "preset=default")


def test_explicit_args_win_over_runlocal():
  config = _get_config("funad_synthetic", "runlocal,epochs=5,image_size=56,"
                       "eval_every=2")
  assert (config.funad.epochs, config.dataset.image_size,
          config.funad.eval_every) == (5, 56, 2)
  assert config.funad.batch_size == 8  # Not an arg: runlocal's.
  dico = _get_config("dico_mvtec", "runlocal,batch_size=12,epochs=4")
  assert (dico.dico.batch_size, dico.backbone.batch_size,
          dico.dico.epochs) == (12, 12, 4)
  assert dico.dataset.image_size == 128
  assert _get_config("dico_mvtec").dataset.image_size == 256
  assert _get_config("funad_synthetic",
                     "runlocal,runlocal=false").dataset.image_size == 224


def test_smoothness_is_an_arg():
  assert _get_config("funad_visa", "smoothness=mse").funad.smoothness == "mse"


_LITES = [f"efficientnet_lite{v}" for v in range(5)]


@pytest.mark.parametrize("name,arg,message", [
    ("funad_synthetic", "contamination=1",
     "config.dataset.contamination=1.0: expected a ratio in [0, 1)"),
    ("patchcore_mvtec", "contamination=-0.1",
     "config.dataset.contamination=-0.1: expected a ratio in [0, 1)"),
    ("funad_synthetic", "rho=0",
     "config.funad.rho=0.0: expected a fraction in (0, 1]"),
    ("funad_mvtec", "rho=1.5",
     "config.funad.rho=1.5: expected a fraction in (0, 1]"),
    ("funad_synthetic", "smoothness=l1",
     "config.funad.smoothness='l1': expected one of ['mae', 'mse', 'kl']"),
    ("dico_synthetic", "score=mean",
     "config.dico.score_mode='mean': expected one of "
     "['adaptive', 'max', 'topk_mean']"),
    ("funad_synthetic", "image_size=100",
     "config.dataset.image_size=100: expected a multiple of 14, the patch "
     "size of dinov2_vits14 (e.g. 98 or 112)"),
    ("softpatch_visa", "backbone=dinov2_vits14,image_size=230",
     "config.dataset.image_size=230: expected a multiple of 14, the patch "
     "size of dinov2_vits14 (e.g. 224 or 238)"),
    ("funad_synthetic", "runlocal,image_size=10",
     "config.dataset.image_size=10: expected a multiple of 14, the patch "
     "size of dinov2_vits14 (e.g. 14 or 28)"),
    ("funad_synthetic", "epochs=0",
     "config.funad.epochs=0: expected an integer >= 1"),
    ("dico_visa", "epochs=-2",
     "config.dico.epochs=-2: expected an integer >= 1"),
    ("funad_synthetic", "lr=0",
     "config.funad.lr=0.0: expected a number > 0"),
    ("funad_magnetic_tile", "lr=-1e-5",
     "config.funad.lr=-1e-05: expected a number > 0"),
    ("funad_synthetic", "backbone=resnet50",
     f"config.backbone.name='resnet50': expected one of "
     f"{list(names.BACKBONE_NAMES)}"),
    ("patchcore_synthetic", "coreset=0",
     "config.patchcore.coreset_fraction=0.0: expected a fraction in (0, 1]"),
    ("dico_synthetic", "backbone=dinov2_vits14,image_size=112",
     "config.backbone.name='dinov2_vits14': expected a CNN, one of "
     f"{_LITES + ['wide_resnet50_2']} (DiCo decodes its stride levels)"),
    ("dico_magnetic_tile", "memory=-1",
     "config.dico.memory_size=-1: expected an integer >= 0 (0 disables the "
     "memory)"),
])
def test_named_errors_at_parse_time(name, arg, message):
  with pytest.raises(configlib.ConfigArgError) as e:
    _get_config(name, arg)
  assert str(e.value) == message


def test_unknown_dataset_is_named():
  message = ("config.dataset.name='nope': expected one of "
             "['elpv', 'folder', 'magnetic_tile', 'mvtec', 'mvtec_layout', 'synthetic', 'visa']")
  with pytest.raises(configlib.ConfigArgError) as e:
    configlib.run_config(method="funad",
                         method_config=funad_config.default_config(),
                         dataset="nope", backbone="dinov2_vits14",
                         image_size=224)
  assert str(e.value) == message
  with pytest.raises(configlib.ConfigArgError) as e:
    sweep_lib.load_sweep(os.path.join(REPO, "configs", "sweeps",
                                      "funad_memory_contamination.py")
                         + ":dataset=nope")
  assert str(e.value) == message


def test_method_checks_see_fields_set_in_python():
  """A config changed after get_config is checked by the method's check."""
  config = _get_config("funad_synthetic")
  config.funad.smoothness = "huber"
  with pytest.raises(configlib.ConfigArgError,
                     match=r"^config\.funad\.smoothness='huber': "):
    funad_config.check(config)
  config = _get_config("softpatch_synthetic")
  config.softpatch.drop_fraction = 1.0
  with pytest.raises(configlib.ConfigArgError) as e:
    softpatch_config.check(config)
  assert str(e.value) == ("config.softpatch.drop_fraction=1.0: expected a "
                          "fraction in [0, 1)")


def _funad_args():
  return sorted([*funad_config.ARGS, configlib.RUNLOCAL])


def test_sweep_axis_the_base_config_rejects_fails_before_any_cell(tmp_path):
  base = os.path.join(REPO, "configs", "funad_synthetic.py")
  sweep = ml_collections.ConfigDict(dict(
      base=f"{base}:runlocal", axes=dict(overlap=[False, True]),
      metric="test.image_auroc"))
  calls = []
  with pytest.raises(sweep_lib.SweepError) as e:
    sweep_lib.run_sweep(sweep, str(tmp_path / "sw"),
                        runner=lambda cell, wd: calls.append(cell) or 0)
  assert str(e.value) == (
      f"sweep cell 'overlap=false' ({base}:runlocal,overlap=false) has an "
      f"invalid config: unknown config arg 'overlap'; known args: "
      f"{_funad_args()}")
  assert calls == [] and not (tmp_path / "sw").exists()


def test_sweep_value_out_of_range_fails_before_any_cell(tmp_path):
  base = os.path.join(REPO, "configs", "funad_synthetic.py")
  sweep = ml_collections.ConfigDict(dict(
      base=f"{base}:runlocal", axes=dict(rho=[0.5, 1.5]),
      metric="test.image_auroc"))
  calls = []
  with pytest.raises(sweep_lib.SweepError) as e:
    sweep_lib.run_sweep(sweep, str(tmp_path / "sw"),
                        runner=lambda cell, wd: calls.append(cell) or 0)
  assert str(e.value) == (
      f"sweep cell 'rho=1.5' ({base}:runlocal,rho=1.5) has an invalid "
      "config: config.funad.rho=1.5: expected a fraction in (0, 1]")
  assert calls == []


def test_backbone_names_match_the_registry():
  assert set(registry.BACKBONES) == set(names.BACKBONE_NAMES)
  for name, spec in registry.BACKBONES.items():
    assert spec.patch == names.PATCH_SIZES[name], name


def test_loading_every_config_imports_no_jax():
  pattern = os.path.join(REPO, "configs", "*.py")
  code = (
      "import glob, importlib.util, sys\n"
      f"for p in sorted(glob.glob({pattern!r})):\n"
      "  s = importlib.util.spec_from_file_location('c', p)\n"
      "  m = importlib.util.module_from_spec(s); s.loader.exec_module(m)\n"
      "  m.get_config('runlocal')\n"
      "heavy = sorted(n for n in sys.modules if n.split('.')[0] in\n"
      "               ('jax', 'flax', 'optax', 'orbax'))\n"
      "print(heavy)\n")
  proc = subprocess.run([sys.executable, "-c", code], capture_output=True,
                        text=True, timeout=120, cwd=REPO, check=True)
  assert proc.stdout.strip() == "[]"


@pytest.mark.parametrize("name,field,value,message", [
    ("funad_synthetic", "rho", 2.0,
     "config.funad.rho=2.0: expected a fraction in (0, 1]"),
    ("dico_synthetic", "lr", 0.0, "config.dico.lr=0.0: expected a number > 0"),
    ("patchcore_synthetic", "coreset_fraction", 1.5,
     "config.patchcore.coreset_fraction=1.5: expected a fraction in (0, 1]"),
    ("softpatch_synthetic", "lof_k", 0,
     "config.softpatch.lof_k=0: expected an integer >= 1"),
    ("softpatch_synthetic", "coreset_method", "exact",
     "config.softpatch.coreset_method='exact': expected one of "
     "['greedy', 'approximate']"),
])
def test_methods_check_config_runs_the_method_checks(name, field, value,
                                                     message):
  """What ``dicofun run`` calls after the ``--config.*`` flag overrides."""
  config = _get_config(name, "runlocal")
  methods.check_config(config)
  config[config.method][field] = value
  with pytest.raises(configlib.ConfigArgError) as e:
    methods.check_config(config)
  assert str(e.value) == message
  config = _get_config(name)
  config.dataset.name = "nowhere"
  with pytest.raises(configlib.ConfigArgError, match=(
      r"^config\.dataset\.name='nowhere': expected one of \[")):
    methods.check_config(config)
