"""The same kernel test body compiled on hardware and interpreted on CPU.

jax's ``FusedAttentionTest`` / ``FusedAttentionInterpretTest`` pattern as a pytest parameter:
``modes("gpu")`` yields an ``interpret`` case (the Triton kernel in the Pallas interpreter, any
host, default tier) and a ``compiled`` case marked ``gpu`` that is skipped off a GPU; likewise
for ``tpu`` with the Mosaic kernel. Bodies run their op with ``impl="pallas"`` inside
:func:`running`.
"""

import contextlib

import jax
import pytest

from pallas_kernels import common


def modes(platform, *, interpret_marks=()):
  """[interpret, compiled] parameters for ``platform``'s kernel."""
  compiled = [getattr(pytest.mark, platform),
              pytest.mark.skipif(jax.default_backend() != platform,
                                 reason=f"compiled {platform} kernel needs a {platform}")]
  return [pytest.param("interpret", id=f"{platform}-interpret", marks=list(interpret_marks)),
          pytest.param("compiled", id=f"{platform}-compiled", marks=compiled)]


@contextlib.contextmanager
def running(platform, mode):
  """Context in which ``impl="pallas"`` runs ``platform``'s kernel compiled or interpreted.

  Trace (call ``jax.jit``) inside it: the choice is made when the op is traced.
  """
  if mode == "compiled":
    yield
    return
  with common.interpret_as(platform):
    yield


def impl_modes(platform, *, xla_marks=()):
  """(impl, mode) parameters: the xla path once, then ``platform``'s kernel in both modes."""
  return [pytest.param("xla", "interpret", id="xla", marks=list(xla_marks))] + [
      pytest.param("pallas", *p.values[1:], id=p.id, marks=p.marks)
      for p in platform_modes(platform)]


def platform_modes(*platforms):
  """(platform, mode) parameters: every platform's kernel in both modes."""
  return [pytest.param(p, m.values[0], id=m.id, marks=m.marks) for p in platforms
          for m in modes(p)]
