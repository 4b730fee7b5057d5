"""Every config file builds in every variant it lists in ``ARGS`` and names an importable
experiment; the ICL study configs share one schema (``configs/icl/common.py``)."""

import glob
import importlib.util
import os

import pytest

from jaxllm import main as launcher

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_FILES = sorted(
    p for p in glob.glob(os.path.join(ROOT, "configs", "**", "*.py"), recursive=True)
    if not p.endswith("__init__.py") and not p.endswith(os.path.join("icl", "common.py")))
ICL_FILES = [p for p in CONFIG_FILES if os.sep + os.path.join("configs", "icl") + os.sep in p]
# Studies whose task is regression prompts, so their size is task.n_dims x task.n_points.
REGRESSION_STUDIES = ("linear_regression", "function_classes", "bayesian_prism", "higher_order",
                      "representations", "which_algorithm", "lsa_gd", "lsa_closed_form")


def load(path):
  spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _variants(paths):
  return [(p, arg) for p in paths for arg in load(p).ARGS]


def _id(case):
  path, arg = case
  return f"{os.path.relpath(path, ROOT)}:{arg}"


def test_there_are_configs():
  assert any(p.endswith(os.path.join("icl", "linear_regression.py")) for p in CONFIG_FILES)
  assert {os.path.basename(p)[:-3] for p in ICL_FILES} >= set(REGRESSION_STUDIES)


@pytest.mark.parametrize("case", _variants(CONFIG_FILES), ids=_id)
def test_config_builds(case):
  path, arg = case
  module = load(path)
  assert "python -m jaxllm.main --config=" in (module.__doc__ or ""), "docstring needs the command"
  config = module.get_config(arg)
  assert isinstance(config.seed, int)
  assert launcher.load_experiment(config.experiment).run


@pytest.mark.parametrize("case", _variants(ICL_FILES), ids=_id)
def test_icl_configs_share_the_nested_schema(case):
  path, arg = case
  config = load(path).get_config(arg)
  for block in ("task", "model", "optimizer", "train"):
    assert block in config, f"{_id(case)} has no {block} block"
  assert int(config.train.steps) >= 1
  assert config.optimizer.learning_rate > 0 and config.optimizer.name
  flat = set(config) - {"experiment", "seed", "task", "model", "optimizer", "train", "eval",
                        "runs", "methods", "grid", "algorithms", "num_trials"}
  assert not flat, f"{_id(case)} keeps top-level fields {sorted(flat)}"
  for old in ("dim", "num_steps", "num_iterations", "batch_size", "learning_rate"):
    assert old not in config and old not in config.task, f"{_id(case)} still uses {old}"
  if os.path.basename(path)[:-3] in REGRESSION_STUDIES:
    assert int(config.task.n_dims) >= 1 and int(config.task.n_points) >= 2


def test_unknown_variants_name_the_file_and_the_allowed_ones():
  for path in ICL_FILES:
    module = load(path)
    with pytest.raises(ValueError, match=os.path.basename(path)) as err:
      module.get_config("no_such_variant")
    assert "smoke" in str(err.value)
