"""Every config file builds, in its full and smoke variants, and names an importable experiment."""

import glob
import importlib.util
import os

import pytest

from jaxllm import main as launcher

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_FILES = sorted(
    p for p in glob.glob(os.path.join(ROOT, "configs", "**", "*.py"), recursive=True)
    if not p.endswith("__init__.py"))


def load(path):
  spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_there_are_configs():
  assert any(p.endswith(os.path.join("icl", "linear_regression.py")) for p in CONFIG_FILES)


@pytest.mark.parametrize("path", CONFIG_FILES, ids=lambda p: os.path.relpath(p, ROOT))
@pytest.mark.parametrize("arg", [None, "smoke"])
def test_config_builds(path, arg):
  module = load(path)
  assert "python -m jaxllm.main --config=" in (module.__doc__ or ""), "docstring needs the command"
  config = module.get_config(arg)
  assert isinstance(config.seed, int)
  assert launcher.load_experiment(config.experiment).run
