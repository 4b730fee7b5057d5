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


def _umask() -> int:
  try:  # Linux reports it without changing it (os.umask can only read it by setting it)
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith("Umask:"):
          return int(line.split()[1], 8)
  except OSError:
    pass
  mask = os.umask(0o022)
  os.umask(mask)
  return mask


def _process_index() -> int:
  import jax  # pylint: disable=g-import-not-at-top
  return jax.process_index()


def write_text(path: str, text: str) -> str:
  """Writes ``text`` to ``path`` via a temp file and an atomic rename.

  The file gets the mode ``open()`` would give it (0644 under the usual umask 022), not the
  0600 of the temp file. In a multi-process run only process 0 writes (every process computes
  the same results).
  """
  if _process_index() != 0:
    return path
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=os.path.splitext(path)[1])
  try:
    with os.fdopen(fd, "w") as f:
      f.write(text)
    os.chmod(tmp, 0o666 & ~_umask())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise
  return path


def write_json(path: str, obj) -> str:
  """Writes ``obj`` as JSON to ``path`` atomically (see :func:`write_text`)."""
  return write_text(path, json.dumps(_jsonable(obj), indent=1))


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
