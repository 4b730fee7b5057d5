"""The huge-page tunable the command lines start with (``jaxllm.host``)."""

import os
import subprocess
import sys

import pytest

from jaxllm import host

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LINUX = dict(platform="linux", glibc=(2, 36), thp="madvise")


def test_adds_the_tunable_and_keeps_the_others():
  assert host.huge_pages_env({"A": "1"}, **LINUX) == {
      "A": "1", "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}
  got = host.huge_pages_env({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, **LINUX)
  assert got["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"


@pytest.mark.parametrize("environ,overrides", [
    ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, {}),  # set by the user: left alone
    ({"JAXLLM_HUGE_PAGES": "0"}, {}),
    ({}, dict(platform="darwin")),
    ({}, dict(glibc=(2, 34))),  # the tunable is new in glibc 2.35
    ({}, dict(thp="never")),
])
def test_nothing_to_change(environ, overrides):
  assert host.huge_pages_env(environ, **dict(LINUX, **overrides)) is None


def test_a_process_restarts_with_the_tunable_once():
  """The process re-executes itself with the tunable (once: the new image sees it set and goes
  on); with the opt-out it runs as started."""
  code = ("import os\nprint('TUNABLES', os.environ.get('GLIBC_TUNABLES'))\n"
          "from jaxllm import host\nhost.reexec_with_huge_pages()\n"
          "print('AFTER', os.environ.get('GLIBC_TUNABLES'))")
  expected = host.huge_pages_env({})
  for opt_out in ("1", "0"):
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAXLLM_HUGE_PAGES=opt_out)
    env.pop("GLIBC_TUNABLES", None)
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=60, check=True).stdout.split("\n")
    if opt_out == "0" or expected is None:
      assert out[:2] == ["TUNABLES None", "AFTER None"]
    else:  # the first process execs before printing AFTER; the second one prints both
      assert out[:3] == ["TUNABLES None", f"TUNABLES {expected['GLIBC_TUNABLES']}",
                         f"AFTER {expected['GLIBC_TUNABLES']}"]
