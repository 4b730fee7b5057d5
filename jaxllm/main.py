"""Launcher: ``python -m jaxllm.main --config=configs/<name>.py[:arg] --workdir=DIR``.

Config fields can be overridden on the command line (``--config.train.steps=100``). With no flags
it runs the default job (in-context linear regression, smoke scale) into ``runs/``. The config's
``experiment`` field names a module under ``experiments/`` whose ``run(config, workdir)`` returns a
results dict (also written to ``<workdir>/results.json``).
"""

import importlib
import json
import logging
import os
import pkgutil
import sys

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

import configs
import experiments

DEFAULT_CONFIG = os.path.join(os.path.dirname(configs.__file__), "icl", "linear_regression.py")
DEFAULT_ARG = "smoke"

_CONFIG = config_flags.DEFINE_config_file(
    "config", f"{DEFAULT_CONFIG}:{DEFAULT_ARG}",
    "Config file (python, get_config(arg)) as path[:arg].", lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Output directory (checkpoints, metrics, results.json). Default: "
    "runs/<config name>[_<arg>].")


def available_experiments() -> list[str]:
  prefix = experiments.__name__ + "."
  return sorted(info.name[len(prefix):]
                for info in pkgutil.walk_packages(experiments.__path__, prefix=prefix)
                if not info.ispkg)


def load_experiment(name: str):
  """Imports ``experiments.<name>``; an unknown name is a ValueError listing the valid ones."""
  if not isinstance(name, str) or not name:
    raise ValueError(f"config.experiment must name a module under experiments/; "
                     f"valid: {available_experiments()}")
  module_name = f"experiments.{name}"
  try:
    module = importlib.import_module(module_name)
  except ModuleNotFoundError as e:
    if e.name and module_name.startswith(e.name):
      raise ValueError(f"unknown experiment {name!r} (config.experiment); valid: "
                       f"{available_experiments()}") from e
    raise
  if not hasattr(module, "run"):
    raise ValueError(f"experiment module {module_name} has no run(config, workdir)")
  return module


def default_workdir(config_flag_value: str) -> str:
  path, _, arg = config_flag_value.partition(":")
  stem = os.path.splitext(os.path.basename(path))[0]
  return os.path.join("runs", stem + (f"_{arg}" if arg else ""))


def launch(config, workdir: str) -> dict:
  """Runs the experiment named by ``config.experiment`` (callable from notebooks too)."""
  if "experiment" not in config:
    raise ValueError("config has no 'experiment' field; it must name a module under experiments/")
  module = load_experiment(config.experiment)
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "config.json"), "w") as f:
    f.write(config.to_json_best_effort(indent=1))
  return module.run(config, workdir)


def _summary(results: dict) -> str:
  keep = {k: v for k, v in results.items() if not isinstance(v, (list, dict)) or k == "at"}
  return json.dumps(keep, indent=1, default=str)


def main(argv):
  logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)  # no "no TPU found" noise
  if not flags.FLAGS["verbosity"].present:
    absl_logging.set_verbosity(absl_logging.WARNING)  # orbax logs every save at INFO
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from jaxllm.train.checkpoint import CheckpointError  # pylint: disable=g-import-not-at-top
  flag_value = flags.FLAGS["config"].config_filename
  workdir = _WORKDIR.value or default_workdir(flag_value)
  try:
    results = launch(_CONFIG.value, workdir)
  except (ValueError, FileNotFoundError, FloatingPointError, CheckpointError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  print(_summary(results))
  print(f"results: {os.path.join(workdir, 'results.json')}", file=sys.stderr)


def run_cli():
  app.run(main)


if __name__ == "__main__":
  run_cli()
