"""One writer per workdir: an exclusive lock held while a run uses the directory."""

import contextlib
import datetime
import errno
import fcntl
import json
import os
import socket

import jax

LOCK_NAME = ".lock"


class WorkdirBusyError(RuntimeError):
  """Another live process holds the workdir."""


class WorkdirError(ValueError):
  """The workdir path cannot be used (a file, not writable)."""


def check_workdir(workdir: str) -> None:
  """Raises WorkdirError if ``workdir`` exists and is not a writable directory."""
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise WorkdirError(f"--workdir {workdir} is a file, not a directory")
  parent = workdir
  while not os.path.exists(parent):  # the first existing ancestor is where mkdir would write
    parent = os.path.dirname(os.path.abspath(parent))
  if not os.path.isdir(parent):
    raise WorkdirError(f"--workdir {workdir}: {parent} is a file, not a directory")
  if not os.access(parent, os.W_OK | os.X_OK):
    raise WorkdirError(f"--workdir {workdir}: permission denied writing to {parent}")


def _describe(info: dict) -> str:
  return (f"pid {info.get('pid', '?')} on host {info.get('host', '?')} "
          f"(since {info.get('started', '?')})")


_HELD: set[str] = set()  # realpaths this process holds: the lock is re-entrant within a process


@contextlib.contextmanager
def lock(workdir: str):
  """Holds ``workdir/.lock`` exclusively; a second process gets WorkdirBusyError at once.

  The lock is a ``flock`` on the file, so the kernel releases it when the holder dies, even by
  ``kill -9``: a lock left by a killed run never blocks the next one. The file names the holder
  (pid, host, start time) for the message another run prints, and is deleted on release. In a
  multi-process run process 0 holds it for the whole run; the other processes share the run.
  """
  os.makedirs(workdir, exist_ok=True)
  key = os.path.realpath(workdir)
  if key in _HELD or jax.process_index() != 0:
    yield
    return
  path = os.path.join(key, LOCK_NAME)
  fd = _acquire(path)
  _HELD.add(key)
  try:
    yield
  finally:
    _HELD.discard(key)
    try:
      os.unlink(path)  # while still locked, so no other process can hold this inode
    finally:
      os.close(fd)


def _acquire(path: str) -> int:
  while True:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      if e.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
        if _holder_alive(_read(path)):  # a filesystem without flock: fall back to a pid check
          os.close(fd)
          raise _busy(path) from None
        break
      os.close(fd)
      if e.errno not in (errno.EAGAIN, errno.EACCES):
        raise
      raise _busy(path) from None
    try:
      same = os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
      same = False
    if same:
      break
    os.close(fd)  # the holder released and deleted the file between our open and flock: retry
  info = {"pid": os.getpid(), "host": socket.gethostname(),
          "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
  os.ftruncate(fd, 0)
  os.write(fd, json.dumps(info).encode())
  return fd


def _busy(path: str) -> WorkdirBusyError:
  return WorkdirBusyError(
      f"workdir {os.path.dirname(path)} is in use by {_describe(_read(path))}; wait for that run "
      "to finish or use another --workdir")


def _holder_alive(info: dict) -> bool:
  """Whether the process a lock file names may still run (without flock to tell for us)."""
  if not info or info.get("pid") == os.getpid():
    return False
  if info.get("host") != socket.gethostname():
    return True  # a process on another host cannot be checked from here
  try:
    os.kill(int(info["pid"]), 0)
  except (ProcessLookupError, KeyError, TypeError, ValueError):
    return False
  except PermissionError:  # it exists, under another user
    return True
  return True


def _read(path: str) -> dict:
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return {}
