"""attention() refuses inputs it would silently get wrong."""

import jax.numpy as jnp
import numpy as np
import pytest

from jaxllm.attention import attention


def _qkv(t=4, s=4, dtype=jnp.float32):
  rng = np.random.default_rng(0)
  q = jnp.asarray(rng.normal(size=(1, t, 2, 8)), dtype)
  k = jnp.asarray(rng.normal(size=(1, s, 2, 8)), dtype)
  return q, k, k


@pytest.mark.parametrize("which", [0, 1, 2])
@pytest.mark.parametrize("dtype", [jnp.int32, jnp.bool_, jnp.uint8])
def test_non_floating_inputs_are_value_errors(which, dtype):
  args = list(_qkv())
  args[which] = args[which].astype(dtype)
  with pytest.raises(ValueError, match=f"{'qkv'[which]} must be a floating-point array"):
    attention(*args, method="dense", impl="xla")


@pytest.mark.parametrize("method", ["dense", "linear"])
def test_causal_with_more_queries_than_keys_is_a_value_error(method):
  with pytest.raises(ValueError, match="T <= S is needed; got T=5 > S=3"):
    attention(*_qkv(t=5, s=3), method=method, impl="xla", causal=True)


def test_no_keys_is_a_value_error():
  q, k, v = _qkv(t=2, s=0)
  for causal in (True, False):
    with pytest.raises(ValueError, match=r"no positions \(S=0\)"):
      attention(q, k, v, method="dense", impl="xla", causal=causal)


def test_causal_must_be_a_bool():
  with pytest.raises(ValueError, match="causal must be True or False, got 1"):
    attention(*_qkv(), method="dense", impl="xla", causal=1)


def test_valid_shapes_still_work():
  q, k, v = _qkv(t=3, s=5)
  causal = attention(q, k, v, method="dense", impl="xla", causal=True)
  cross = attention(*_qkv(t=6, s=5), method="dense", impl="xla", causal=False)
  assert causal.shape == (1, 3, 2, 8) and cross.shape == (1, 6, 2, 8)
  # The last query sees every key: its output is the softmax average over all of them.
  w = jnp.einsum("hd,shd->hs", q[0, -1], k[0]) / np.sqrt(8)
  want = jnp.einsum("hs,shd->hd", jax_softmax(w), v[0])
  np.testing.assert_allclose(causal[0, -1], want, rtol=1e-5, atol=1e-6)


def jax_softmax(x):
  e = jnp.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)
