"""Host-process settings that have to be in place when the interpreter starts.

On Linux, without huge pages every training step of a small model on XLA:CPU touches freshly
mapped 4 KiB pages: the 4-layer default job's step took about 20k minor page faults and 55.5 ms
(measured idle on the 2-core CPU), 410 faults and 42.8 ms with glibc's malloc asked to back its
memory with transparent huge pages; glibc's mmap and trim thresholds changed nothing. glibc
reads that request (``GLIBC_TUNABLES=glibc.malloc.hugetlb=1``, glibc 2.35 and later) only at
process start, so the command lines re-execute themselves once with it set. Results do not
change: only how memory is mapped. ``JAXLLM_HUGE_PAGES=0`` keeps the process as it was started.
"""

import os
import sys

TUNABLE = "glibc.malloc.hugetlb"
OPT_OUT = "JAXLLM_HUGE_PAGES"
THP_MODE = "/sys/kernel/mm/transparent_hugepage/enabled"


def glibc_version() -> tuple[int, int] | None:
  """(major, minor) of the running glibc, or None on other C libraries and platforms."""
  try:
    name, version = os.confstr("CS_GNU_LIBC_VERSION").split()
  except (AttributeError, ValueError, OSError):
    return None
  if name != "glibc":
    return None
  try:
    major, minor = version.split(".")[:2]
    return int(major), int(minor)
  except ValueError:
    return None


def transparent_huge_pages() -> str | None:
  """The kernel's transparent-huge-page mode (``always``, ``madvise`` or ``never``), or None."""
  try:
    with open(THP_MODE) as f:
      text = f.read()
  except OSError:
    return None
  start, end = text.find("["), text.find("]")
  return text[start + 1:end] if 0 <= start < end else None


def huge_pages_env(environ, *, platform: str = sys.platform, glibc=None, thp=None):
  """``environ`` with glibc's malloc asked for transparent huge pages, or None where there is
  nothing to change: not Linux with glibc >= 2.35, the kernel's mode ``never``, the tunable
  already set (to anything), or ``JAXLLM_HUGE_PAGES=0``.

  ``glibc`` ((major, minor)) and ``thp`` (the kernel mode) default to this machine's.
  """
  if platform != "linux" or environ.get(OPT_OUT, "1") == "0":
    return None
  glibc = glibc_version() if glibc is None else glibc
  thp = transparent_huge_pages() if thp is None else thp
  if glibc is None or glibc < (2, 35) or thp in (None, "never"):
    return None
  tunables = environ.get("GLIBC_TUNABLES", "")
  if TUNABLE + "=" in tunables:
    return None
  env = dict(environ)
  env["GLIBC_TUNABLES"] = f"{tunables}:{TUNABLE}=1" if tunables else f"{TUNABLE}=1"
  return env


def reexec_with_huge_pages() -> None:
  """Starts this same command again (same PID, arguments and interpreter options) with the
  huge-page tunable when :func:`huge_pages_env` has something to change; returns otherwise."""
  env = huge_pages_env(os.environ)
  if env is None or not getattr(sys, "orig_argv", None):
    return
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, sys.orig_argv, env)
