"""``dense`` with ``impl="auto"``: the library kernel of the platform (tokamax on GPU, splash on
TPU) against the float32 reference, compiled on hardware and on CPU through the same dispatch.

On CPU the twins pose as the platform (``jax.default_backend`` patched) so ``dense`` takes the
library branch it takes there: splash then runs in the TPU interpreter, tokamax on its portable
XLA implementation (it picks its Triton kernels only on a GPU). Either way the test checks that
the library was called, with the options mapped right (window, soft cap, GQA, scale).
"""

from unittest import mock

import jax
import jax.numpy as jnp
import pytest
from jax.experimental.pallas import tpu as pltpu

from jaxllm import attention as A
from jaxllm.attention import splash
from jaxllm.attention.methods import dense
from tests.kernels.modes import platform_modes
from tests.numerics import rel_err, qkv

TOL = {jnp.float32: 1e-4, jnp.bfloat16: 2e-2}
# T = S = 256 fits splash's 128 blocks; H = 4 over K = 2 is GQA. One sequence: the TPU
# interpreter cannot run splash under the batch vmap.
CASES = [pytest.param(jnp.float32, dict(), marks=pytest.mark.slow),
         (jnp.bfloat16, dict(window=100, softcap=20.0))]


def _spy(module, name, calls):
  real = getattr(module, name)

  def spy(*args, **kwargs):
    out = real(*args, **kwargs)
    calls.append(out is not None)
    return out

  return mock.patch.object(module, name, spy)


def _posing_as(platform, mode):
  if mode == "compiled":
    return mock.patch.object(jax, "default_backend", jax.default_backend)
  return mock.patch.object(jax, "default_backend", lambda: platform)


@pytest.mark.parametrize("platform,mode", platform_modes("gpu", "tpu"))
@pytest.mark.parametrize("dtype,opts", CASES)
def test_dense_auto_runs_the_library_kernel(platform, mode, dtype, opts):
  import tokamax  # pylint: disable=g-import-not-at-top
  q, k, v = qkv(jax.random.key(0), 1, 256, 256, 4, 2, 64, dtype, cotangent=False)
  want = dense.reference(*(x.astype(jnp.float32) for x in (q, k, v)), causal=True, **opts)
  calls = []
  library = (_spy(tokamax, "dot_product_attention", calls) if platform == "gpu"
             else _spy(splash, "splash_dense", calls))
  with _posing_as(platform, mode), library:
    if platform == "tpu" and mode == "interpret":
      with pltpu.force_tpu_interpret_mode():
        got = A.attention(q, k, v, method="dense", impl="auto", **opts)
    else:
      got = A.attention(q, k, v, method="dense", impl="auto", **opts)
  assert calls == [True], "dense impl='auto' did not run the library kernel"
  assert got.dtype == dtype and got.shape == q.shape
  assert rel_err(got, want) < TOL[dtype]
