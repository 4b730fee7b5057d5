"""Launcher: ``python -m jaxllm.main --config=configs/<name>.py[:arg] --workdir=DIR``.

Config fields can be overridden on the command line (``--config.train.steps=100``; a field whose
default is None takes any Python literal, e.g. ``--config.model.num_kv_heads=2``). With no flags
it runs the default job (in-context linear regression, smoke scale) into ``runs/``. The config's
``experiment`` field names a module under ``experiments/`` whose ``run(config, workdir)`` returns a
results dict (also written to ``<workdir>/results.json``).

Exit status: 0 done; 2 bad input (flag, config file, config value, unusable or busy workdir,
checkpoint from another config, non-finite loss), one line on stderr; 1 a failure while running
(a checkpoint or results file that cannot be written), one line; 128 + signal number when
SIGTERM / SIGINT stopped the run (after saving a checkpoint, if it was training).
"""

if __name__ == "__main__":  # before jax loads: glibc reads its tunables at process start
  from jaxllm import host
  host.reexec_with_huge_pages()

import importlib  # pylint: disable=g-import-not-at-top,wrong-import-position
import importlib.util
import json
import logging
import os
import pkgutil
import signal
import sys

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_dict, config_flags

import configs
import experiments
from jaxllm import sharding
from jaxllm.results import write_text
from jaxllm.train import workdir as workdir_lib
from jaxllm.train.validate import check_numbers

DEFAULT_CONFIG = os.path.join(os.path.dirname(configs.__file__), "icl", "linear_regression.py")
DEFAULT_ARG = "smoke"


def _overridable(config: config_dict.ConfigDict) -> None:
  """Lets command-line overrides set fields whose default is None (to any Python literal).

  ml_collections infers an override's type from the current value and refuses NoneType.
  """
  for key in list(config.keys()):
    value = config[key]
    if isinstance(value, config_dict.ConfigDict):
      _overridable(value)
    elif value is None:
      config[key] = config_dict.FieldReference(None, field_type=object)


def load_config(spec: str) -> config_dict.ConfigDict:
  """``path[:arg]`` -> the locked ConfigDict of ``get_config(arg)`` (``get_config()`` without a
  colon); every way the file can fail to give one is a ValueError of one line."""
  path, colon, arg = spec.partition(":")
  if not os.path.isfile(path):
    raise ValueError(f"no config file at {path!r}")
  name = "config_" + os.path.splitext(os.path.basename(path))[0]
  spec_ = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec_)
  try:
    spec_.loader.exec_module(module)
  except SyntaxError as e:
    raise ValueError(f"{path} line {e.lineno}: {e.msg}") from None
  except Exception as e:  # an import error, a NameError, ... inside the config file
    raise ValueError(f"{path} cannot be loaded ({type(e).__name__}: {e})") from None
  get_config = getattr(module, "get_config", None)
  if not callable(get_config):
    raise ValueError(f"{path} defines no get_config(arg)")
  try:
    config = get_config(arg) if colon else get_config()
  except ValueError:
    raise
  except Exception as e:
    raise ValueError(f"{path}: get_config({arg!r}) failed ({type(e).__name__}: {e})") from None
  if not isinstance(config, config_dict.ConfigDict):
    raise ValueError(f"{path}: get_config({arg!r}) returned {type(config).__name__}, "
                     "not an ml_collections.ConfigDict")
  _overridable(config)
  config.lock()
  return config


class _ConfigFileParser(flags.ArgumentParser):
  """The ``--config`` flag's parser: :func:`load_config`, remembering the last config loaded."""

  loaded = None

  def parse(self, argument):
    self.loaded = load_config(argument)
    return self.loaded

  def flag_type(self):
    return "config object"


_CONFIG = config_flags.DEFINE_config_file(
    "config", None, f"Config file (python, get_config(arg)) as path[:arg]; default "
    f"{DEFAULT_CONFIG}:{DEFAULT_ARG}.", lock_config=True)
_PARSER = _ConfigFileParser()
flags.FLAGS["config"].parser = _PARSER
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "Call jax.distributed.initialize() first (a multi-host run: every "
    "host runs the same command; also set by JAXLLM_DISTRIBUTED=1). Only process 0 writes "
    "config.json, results.json, metrics and progress.")
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


def _remove_empty_dirs(top: str) -> None:
  for root, _, _ in sorted(os.walk(top), key=lambda w: -len(w[0])):
    try:
      os.rmdir(root)
    except OSError:  # not empty: something of value was written there
      pass


def launch(config, workdir: str) -> dict:
  """Runs the experiment named by ``config.experiment`` (callable from notebooks too).

  Checks the config's numbers and the workdir before writing anything, holds the workdir lock
  (one run per workdir) for the whole experiment, and writes ``config.json`` once the experiment
  has accepted the config. A launch refused before training leaves an existing workdir as it was
  and removes one it created.
  """
  if "experiment" not in config:
    raise ValueError("config has no 'experiment' field; it must name a module under experiments/")
  module = load_experiment(config.experiment)
  check_numbers(config)
  workdir_lib.check_workdir(workdir)
  created = not os.path.exists(workdir)
  try:
    with workdir_lib.lock(workdir):
      results = module.run(config, workdir)
      write_text(os.path.join(workdir, "config.json"), config.to_json_best_effort(indent=1))
  except BaseException:
    if created:
      _remove_empty_dirs(workdir)
    raise
  return results


def _summary(results: dict) -> str:
  keep = {k: v for k, v in results.items() if not isinstance(v, (list, dict)) or k == "at"}
  return json.dumps(keep, indent=1, default=str)


def _one_line(e: BaseException) -> str:
  return " ".join(str(e).split()) or type(e).__name__


def _fail(message: str, code: int):
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.exit(code)


def _unknown_override(argv) -> str | None:
  """The first ``--config.a.b`` of ``argv`` naming no field of the loaded config, as a message."""
  config = _PARSER.loaded
  if config is None:
    return None
  for arg in argv[1:]:
    if not arg.startswith("--config."):
      continue
    path = arg[len("--config."):].split("=", 1)[0]
    node, parts = config, path.split(".")
    for i, part in enumerate(parts):
      if not isinstance(node, config_dict.ConfigDict):
        break
      if part not in node:
        parent = ".".join(parts[:i]) or "config"
        fields = ", ".join(sorted(node.keys())) or "no fields"
        return f"--config.{path}: no such config field; {parent} has: {fields}"
      node = node[part]
  return None


def _parse_flags(argv):
  """absl flag parsing where every bad flag, config file or override is one line and exit 2."""
  if not any(a == "--config" or a.startswith("--config=") for a in argv[1:]):
    argv = [argv[0], f"--config={DEFAULT_CONFIG}:{DEFAULT_ARG}", *argv[1:]]
  try:
    return flags.FLAGS(argv)
  except (KeyError, AttributeError) as e:  # ml_collections' errors for unknown override fields
    _fail(_unknown_override(argv) or _one_line(e), 2)
  except flags.Error as e:
    _fail(_one_line(e), 2)


def _terminated(signum, frame):
  del frame
  from jaxllm.train.loop import Interrupted  # pylint: disable=g-import-not-at-top
  raise Interrupted(signum, f"stopped by {signal.Signals(signum).name} outside the training "
                    "loop; the checkpoints already written are kept; run the same command again "
                    "to resume")


def main(argv):
  logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)  # no "no TPU found" noise
  if not flags.FLAGS["verbosity"].present:
    absl_logging.set_verbosity(absl_logging.ERROR)  # orbax logs every save at INFO
  if len(argv) > 1:
    _fail(f"unexpected arguments: {argv[1:]}", 2)
  # pylint: disable=g-import-not-at-top
  from jaxllm.train.checkpoint import CheckpointError, CheckpointWriteError
  from jaxllm.train.loop import Interrupted
  flag_value = flags.FLAGS["config"].config_filename
  workdir = _WORKDIR.value or default_workdir(flag_value)
  signal.signal(signal.SIGTERM, _terminated)
  if _DISTRIBUTED.value or sharding.distributed_requested():
    try:
      sharding.initialize_distributed()
    except (ValueError, RuntimeError) as e:
      _fail(f"--distributed: {_one_line(e)}", 2)
  try:
    results = launch(_CONFIG.value, workdir)
  except Interrupted as e:
    print(e, file=sys.stderr, flush=True)
    sys.exit(128 + e.signum)
  except KeyboardInterrupt:
    print("stopped by SIGINT without a checkpoint of the current step; the checkpoints already "
          "written are kept; run the same command again to resume", file=sys.stderr, flush=True)
    sys.exit(128 + signal.SIGINT)
  except (ValueError, FileNotFoundError, FloatingPointError, CheckpointError,
          workdir_lib.WorkdirBusyError) as e:
    _fail(_one_line(e), 2)
  except (CheckpointWriteError, OSError) as e:
    _fail(_one_line(e), 1)
  if sharding.is_primary():
    print(_summary(results))
  print(f"results: {os.path.join(workdir, 'results.json')}", file=sys.stderr)


def run_cli():
  app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
  run_cli()
