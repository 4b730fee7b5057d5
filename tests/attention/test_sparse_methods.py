"""Registered block-sparse methods agree with dense attention's reference for the same mask."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxllm import attention as attn
from jaxllm.attention.methods import dense
from pallas_kernels.block_sparse import masks, reference
from tests.numerics import rel_err


def _qkv(t=45, s=45, h=4, hkv=2, d=16, seed=0):
  kq, kk, kv = jax.random.split(jax.random.key(seed), 3)
  return (jax.random.normal(kq, (1, t, h, d)), jax.random.normal(kk, (1, s, hkv, d)),
          jax.random.normal(kv, (1, s, hkv, d)))


def _call(q, k, v, **kw):
  return jax.jit(lambda q, k, v: attn.attention(q, k, v, **kw))(q, k, v)


def test_methods_are_registered_with_all_impls():
  for name in ("dense", "sliding_window", "sink_window", "streaming", "block_sparse"):
    assert attn.get(name).impls == ("xla", "pallas", "auto")


@pytest.mark.parametrize("impl", ["xla", "pallas"])
def test_sliding_window_equals_dense_window(impl):
  q, k, v = _qkv()
  got = _call(q, k, v, method="sliding_window", impl=impl, window=10, block_q=16, block_k=16)
  assert rel_err(got, dense.reference(q, k, v, window=10)) < 1e-5


@pytest.mark.parametrize("impl", ["xla", "pallas"])
def test_sink_window_equals_dense_sinks_and_window(impl):
  q, k, v = _qkv(t=40, s=70)
  got = _call(q, k, v, method="sink_window", impl=impl, sinks=4, window=12, block_q=16,
              block_k=16)
  assert rel_err(got, dense.reference(q, k, v, window=12, sinks=4)) < 1e-5


def test_streaming_is_a_deprecated_alias_of_sink_window():
  q, k, v = _qkv(t=40, s=40, seed=3)
  opts = dict(impl="xla", sinks=2, window=9, block_q=8, block_k=8)
  with pytest.warns(DeprecationWarning, match="sink_window"):
    old = attn.attention(q, k, v, method="streaming", **opts)
  new = attn.attention(q, k, v, method="sink_window", **opts)
  np.testing.assert_array_equal(np.asarray(old), np.asarray(new))
  assert attn.get("streaming").options == attn.get("sink_window").options


def test_sink_window_gradients_match_dense():
  q, k, v = _qkv(t=33, s=33, seed=1)
  loss = lambda fn: lambda q, k, v: jnp.sum(jnp.sin(fn(q, k, v)))
  got = jax.jit(jax.grad(loss(lambda q, k, v: attn.attention(
      q, k, v, method="sink_window", impl="xla", sinks=3, window=8, block_q=8, block_k=8)),
      (0, 1, 2)))(q, k, v)
  want = jax.grad(loss(lambda q, k, v: dense.reference(q, k, v, window=8, sinks=3)),
                  (0, 1, 2))(q, k, v)
  for g, w in zip(got, want):
    assert rel_err(g, w) < 1e-5


def test_dense_pallas_equals_dense_reference():
  q, k, v = _qkv(t=50, s=50)
  got = _call(q, k, v, method="dense", impl="pallas", softcap=5.0)
  assert rel_err(got, dense.reference(q, k, v, softcap=5.0)) < 1e-5


def test_block_sparse_method_runs_given_table():
  q, k, v = _qkv(t=48, s=64, seed=2)
  table = masks.from_block_mask(jax.random.bernoulli(jax.random.key(3), 0.5, (1, 4, 3, 4)),
                                block_q=16, block_k=16)
  got = _call(q, k, v, method="block_sparse", impl="xla", table=table)
  want, _ = reference.attention(q, k, v, table)
  assert rel_err(got, want) < 1e-5
  assert np.isfinite(np.asarray(got)).all()


def test_bad_options_raise():
  q, k, v = _qkv(t=16, s=16)
  with pytest.raises(ValueError, match="window"):
    attn.attention(q, k, v, method="sliding_window", impl="xla")
  with pytest.raises(ValueError, match="sinks"):
    attn.attention(q, k, v, method="sink_window", impl="xla", sinks=0, window=4)
  with pytest.raises(ValueError, match="table"):
    attn.attention(q, k, v, method="block_sparse", impl="xla")
  with pytest.raises(ValueError, match="block_q"):
    attn.attention(q, k, v, method="sliding_window", impl="pallas", window=4, block_q=48)
  with pytest.raises(ValueError, match="unknown options"):
    attn.attention(q, k, v, method="sliding_window", impl="xla", window=4, block=16)
