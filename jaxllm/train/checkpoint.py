"""Orbax checkpoints of the whole train state (params, optimizer state, RNG, data position).

Each step directory holds three orbax items: ``state`` (the arrays), ``meta`` (JSON: step, data
position, the step's metrics) and, for tasks that keep an input-pipeline state, ``data`` (JSON).
"""

import os
import shutil
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp


class CheckpointError(RuntimeError):
  """A checkpoint exists but none can be restored (corrupt, or written by another config)."""


class ConfigMismatchError(CheckpointError):
  """The checkpoint's arrays do not fit the current model / optimizer config."""


class CheckpointWriteError(RuntimeError):
  """A checkpoint could not be written (unwritable directory, full disk)."""


def _reason(e: BaseException) -> str:
  """One line for an orbax / TensorStore / OS error (their messages run to dozens of lines)."""
  if isinstance(e, OSError) and e.strerror:
    return f"{e.strerror}: {e.filename}" if e.filename else e.strerror
  first = (str(e).strip().splitlines() or [""])[0]
  return f"{type(e).__name__}: {first[:200]}"


class _DropClosedLoopTracebacks:
  """A stderr wrapper that drops the tracebacks TensorStore prints around a failed restore.

  When one array of a damaged checkpoint fails to read, orbax closes its event loop while the
  other reads still run; each of them then prints, from its own thread and interleaved with the
  others, a traceback ending in "RuntimeError: Event loop is closed". Their lines are dropped
  one by one (a "Traceback" header only when the next line is one of them); every other line
  passes through.
  """

  _HEADER = "Traceback (most recent call last):"

  def __init__(self, stream):
    self._stream, self._headers, self._partial = stream, 0, ""

  @staticmethod
  def _noise(line: str) -> bool:
    s = line.strip()
    return (s in ("self._check_closed()", "raise RuntimeError('Event loop is closed')",
                  "RuntimeError: Event loop is closed")
            or (s.startswith('File "') and "asyncio/base_events.py" in s
                and s.endswith(("in call_soon_threadsafe", "in _check_closed"))))

  def write(self, text):
    self._partial += text
    *lines, self._partial = self._partial.split("\n")
    for line in lines:
      if line.strip() == self._HEADER:
        self._headers += 1
      elif self._noise(line):
        self._headers = 0
      else:
        self._stream.write((self._HEADER + "\n") * self._headers + line + "\n")
        self._headers = 0
    return len(text)

  def flush(self):
    if self._partial and not self._HEADER.startswith(self._partial.strip()):
      self._stream.write(self._partial)
      self._partial = ""
    self._stream.flush()

  def __getattr__(self, name):
    return getattr(self._stream, name)


def _quiet_failed_restores():
  if not isinstance(sys.stderr, _DropClosedLoopTracebacks):
    sys.stderr = _DropClosedLoopTracebacks(sys.stderr)


def _leaf_name(path) -> str:
  """Orbax's name for a leaf: its key path joined by dots (``opt_state.1.0.mu.layer.kernel``)."""
  parts = []
  for k in path:
    for attr in ("key", "idx", "name"):
      if hasattr(k, attr):
        parts.append(str(getattr(k, attr)))
        break
  return ".".join(parts)


class Checkpointer:
  """Saves/restores ``{"params", "opt_state", "rng", "step"}`` plus JSON metadata.

  Orbax writes each step into a temporary directory and renames it when complete, so a run killed
  mid-save leaves the previous checkpoint as the latest readable one; leftover temporary
  directories are removed when the next run opens the workdir. Saves are synchronous: the loop
  waits for every save anyway, and a failed asynchronous save leaves orbax threads waiting on
  each other that keep the process alive for minutes.
  """

  def __init__(self, workdir: str, *, max_to_keep: int = 2):
    self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
    self.corrupt_directory = os.path.abspath(os.path.join(workdir, "checkpoints_corrupt"))
    self._max_to_keep = max_to_keep
    self._mngr = self._open()

  def _open(self):
    try:
      return ocp.CheckpointManager(
          self.directory,
          options=ocp.CheckpointManagerOptions(
              max_to_keep=self._max_to_keep, create=True, enable_async_checkpointing=False,
              cleanup_tmp_directories=True),
          item_handlers={"state": ocp.StandardCheckpointHandler(),
                         "meta": ocp.JsonCheckpointHandler(),
                         "data": ocp.JsonCheckpointHandler()})
    except OSError as e:
      raise CheckpointWriteError(
          f"cannot open checkpoint directory {self.directory} ({_reason(e)})") from e

  def latest_step(self) -> int | None:
    return self._mngr.latest_step()

  def save(self, step: int, state, meta: dict, data: dict | None = None):
    """Writes step ``step``; on failure removes the partial step and raises CheckpointWriteError."""
    items = {"state": ocp.args.StandardSave(state), "meta": ocp.args.JsonSave(meta)}
    if data is not None:
      items["data"] = ocp.args.JsonSave(data)
    try:
      self._mngr.save(step, args=ocp.args.Composite(**items), force=True)
      self._mngr.wait_until_finished()
    except Exception as e:  # orbax raises OSError, ValueError, TensorStore errors, ...
      self._remove_partial(step)
      try:
        last = self._mngr.latest_step()
      except OSError:
        last = None
      raise CheckpointWriteError(
          f"could not write checkpoint step {step} to {self.directory} ({_reason(e)}); the last "
          f"complete checkpoint is {'none' if last is None else f'step {last}'}") from e

  def _remove_partial(self, step: int):
    """Deletes the temporary directory a failed save left (a full disk gets its space back)."""
    try:
      names = os.listdir(self.directory)
    except OSError:
      return
    for name in names:
      if name.startswith(f"{step}.orbax-checkpoint-tmp"):
        shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)

  def _structure_mismatch(self, step: int, abstract_state) -> str | None:
    """How the saved arrays differ from ``abstract_state`` (None if they match or are unreadable)."""
    try:
      tree = self._mngr.item_metadata(step)["state"].tree
    except Exception:  # unreadable metadata is corruption, which the restore reports
      return None
    saved = {m.name: (tuple(m.shape), np.dtype(m.dtype).name)
             for m in jax.tree_util.tree_leaves(tree) if hasattr(m, "shape")}
    want = {_leaf_name(p): (tuple(x.shape), np.dtype(x.dtype).name)
            for p, x in jax.tree_util.tree_flatten_with_path(abstract_state)[0]}
    for name in sorted(want, key=lambda n: (not n.startswith("params."), n)):
      if name not in saved:
        return f"it has no {name}"
      if saved[name] != want[name]:
        return f"{name} is {saved[name]} there, {want[name]} now"
    extra = sorted(set(saved) - set(want))
    return f"it has {extra[0]}, which this config does not" if extra else None

  def _restore_step(self, step: int, abstract_state, with_data: bool):
    """(state, meta, data) of ``step``; raises ValueError naming what does not check out."""
    items = {"state": ocp.args.StandardRestore(abstract_state), "meta": ocp.args.JsonRestore()}
    if with_data:
      items["data"] = ocp.args.JsonRestore()
    out = self._mngr.restore(step, args=ocp.args.Composite(**items))
    meta = out.meta
    if not isinstance(meta, dict):
      raise ValueError("its metadata is not a JSON object")
    for key in ("step", "data_position"):
      if meta.get(key) != step:
        raise ValueError(f"its metadata says {key}={meta.get(key)!r}, not its own step {step}")
    saved_step = int(np.asarray(jax.device_get(out.state["step"])))
    if saved_step != step:
      raise ValueError(f"its state holds step {saved_step}, not {step}")
    data = None
    if with_data:
      data = out.data
      if not isinstance(data, dict) or not isinstance(data.get("state"), dict):
        raise ValueError("its data state is missing or not a JSON object")
      if data.get("step") != step:
        raise ValueError(f"its data state is for step {data.get('step')!r}, not {step}")
      data = data["state"]
    return out.state, meta, data

  def _set_aside(self, step: int) -> str:
    os.makedirs(self.corrupt_directory, exist_ok=True)
    dest = os.path.join(self.corrupt_directory, f"{step}-{time.strftime('%Y%m%dT%H%M%S')}")
    os.replace(os.path.join(self.directory, str(step)), dest)
    return dest

  def restore_latest(self, abstract_state, *, with_data: bool = False):
    """Restores the newest intact checkpoint.

    A step that cannot be read, or whose metadata disagrees with its own step number, is moved
    to ``checkpoints_corrupt/`` and the next older step is tried. A step whose arrays have other
    names or shapes than ``abstract_state`` was written by another config: that is an error, and
    nothing is moved.

    Returns:
      ``None`` if there is no checkpoint, else ``(step, state, meta, data, set_aside)`` with
      ``data`` the task's data state (``with_data``) and ``set_aside`` a list of
      ``(step, reason, new path)`` for the corrupt steps skipped.
    """
    set_aside = []
    steps = sorted(self._mngr.all_steps(), reverse=True)
    if steps:
      _quiet_failed_restores()
    for step in steps:
      mismatch = self._structure_mismatch(step, abstract_state)
      if mismatch:
        raise ConfigMismatchError(
            f"checkpoint step {step} in {self.directory} was written by a different model or "
            f"optimizer config ({mismatch}); use the config it was trained with or another "
            "--workdir")
      try:
        state, meta, data = self._restore_step(step, abstract_state, with_data)
      except Exception as e:  # orbax raises many types for unreadable data
        set_aside.append((step, _reason(e), self._set_aside(step)))
        continue
      if set_aside:
        self._mngr.close()
        self._mngr = self._open()
      return step, state, meta, data, set_aside
    if set_aside:
      self._mngr.close()
      self._mngr = self._open()
      steps = ", ".join(f"step {s} ({why})" for s, why, _ in set_aside)
      raise CheckpointError(
          f"no intact checkpoint in {self.directory}: {steps}; moved to "
          f"{self.corrupt_directory}, so the next run starts from step 0")
    return None

  def close(self):
    try:
      self._mngr.close()
    except Exception:  # closing after a failed save must not hide that failure
      pass
