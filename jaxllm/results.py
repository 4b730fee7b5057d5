"""Writing results files atomically, so a crash never leaves a half-written file behind."""

import json
import os
import tempfile

import numpy as np


def _jsonable(x):
  if isinstance(x, dict):
    return {str(k): _jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_jsonable(v) for v in x]
  if hasattr(x, "tolist") and hasattr(x, "dtype"):  # numpy / jax arrays and scalars
    return _jsonable(np.asarray(x).tolist())
  if isinstance(x, float) and not np.isfinite(x):
    return None if np.isnan(x) else (1e308 if x > 0 else -1e308)
  return x


def write_json(path: str, obj) -> str:
  """Writes ``obj`` as JSON to ``path`` via a temp file and an atomic rename."""
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".json")
  try:
    with os.fdopen(fd, "w") as f:
      json.dump(_jsonable(obj), f, indent=1)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise
  return path


def write_results(workdir: str, results: dict) -> str:
  """Writes ``workdir/results.json``."""
  return write_json(os.path.join(workdir, "results.json"), results)


def read_results(workdir_or_file: str) -> dict:
  path = workdir_or_file
  if os.path.isdir(path):
    path = os.path.join(path, "results.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"no results file at {path}; run the experiment first")
  with open(path) as f:
    return json.load(f)
