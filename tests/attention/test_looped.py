"""The looped exact path (query-block loop with a flash-style backward) against the reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxllm.attention.methods import dense, looped

CASES = [  # (b, t, s, h, hkv, causal, window, sinks, softcap, block_q, key_chunk)
    (2, 37, 37, 4, 2, True, None, 0, None, 8, 16),
    (1, 37, 53, 4, 1, True, None, 0, None, 8, 16),
    (1, 37, 53, 2, 2, False, None, 0, None, 8, 16),
    (1, 45, 45, 4, 2, True, 7, 0, None, 8, 16),
    (1, 45, 45, 4, 2, True, 7, 3, None, 8, 16),
    (1, 45, 60, 4, 2, False, 9, 2, None, 16, 8),
    (1, 45, 60, 4, 2, True, None, 0, 5.0, 16, 8),
    (1, 45, 60, 4, 2, True, 20, 4, 5.0, 8, 32),
]


def _inputs(b, t, s, h, hkv, dtype, seed=0):
  rng = np.random.default_rng(seed)
  q, k, v = (jnp.asarray(rng.normal(size=shape), dtype)
             for shape in ((b, t, h, 16), (b, s, hkv, 16), (b, s, hkv, 16)))
  w = jnp.asarray(rng.normal(size=(b, t, h, 16)), jnp.float32)
  return q, k, v, w


def _compare(case, dtype, tol):
  b, t, s, h, hkv, causal, window, sinks, softcap, bq, kc = case
  q, k, v, w = _inputs(b, t, s, h, hkv, dtype)
  opts = dict(causal=causal, window=window, sinks=sinks, softcap=softcap)
  fast = lambda q, k, v: looped.looped(q, k, v, block_q=bq, key_chunk=kc, **opts)
  ref = lambda q, k, v: dense.reference(q, k, v, **opts)
  loss = lambda f: lambda *a: jnp.sum(f(*a).astype(jnp.float32) * w)
  got = (jax.jit(fast)(q, k, v),) + jax.jit(jax.grad(loss(fast), argnums=(0, 1, 2)))(q, k, v)
  want = (ref(q, k, v),) + jax.grad(loss(ref), argnums=(0, 1, 2))(q, k, v)
  for name, a, e in zip(("out", "dq", "dk", "dv"), got, want):
    np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(e, np.float32), atol=tol,
                               rtol=tol, err_msg=name)


@pytest.mark.parametrize("case", CASES)
def test_matches_reference_float32(case):
  _compare(case, jnp.float32, 1e-5)


@pytest.mark.parametrize("case", CASES[:2] + CASES[4:5])
def test_matches_reference_bfloat16(case):
  _compare(case, jnp.bfloat16, 5e-2)


@pytest.mark.parametrize("field,value", [("block_q", 0), ("key_chunk", 2.5), ("block_q", True)])
def test_bad_sizes_raise(field, value):
  q, k, v, _ = _inputs(1, 8, 8, 2, 1, jnp.float32)
  with pytest.raises(ValueError, match=field):
    looped.looped(q, k, v, **{field: value})


def test_more_queries_than_keys_raise():
  q, _, _, _ = _inputs(1, 9, 9, 2, 1, jnp.float32)
  _, k, v, _ = _inputs(1, 8, 8, 2, 1, jnp.float32)
  with pytest.raises(ValueError, match="T must be <= S"):
    looped.looped(q, k, v)
