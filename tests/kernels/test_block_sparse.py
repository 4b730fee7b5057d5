"""Block-sparse attention: gather path and Pallas kernels (interpreted) vs the dense-mask spec."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxllm.attention.methods import dense
from pallas_kernels.block_sparse import masks, ops, reference


def _inputs(key, b, t, s, h, hkv, d, dtype):
  kq, kk, kv, kw = jax.random.split(key, 4)
  q = jax.random.normal(kq, (b, t, h, d), jnp.float32).astype(dtype)
  k = jax.random.normal(kk, (b, s, hkv, d), jnp.float32).astype(dtype)
  v = jax.random.normal(kv, (b, s, hkv, d), jnp.float32).astype(dtype)
  w = jax.random.normal(kw, (b, t, h, d), jnp.float32)  # output cotangent
  return q, k, v, w


def _random_table(key, b, h, t, s, bq, bk, density=0.5):
  nq, nk = masks.num_blocks(t, bq), masks.num_blocks(s, bk)
  mask = jax.random.bernoulli(key, density, (b, h, nq, nk))
  mask = mask.at[0, 0, 0].set(False)  # an empty row must output zeros
  return masks.from_block_mask(mask, block_q=bq, block_k=bk)


def _rel(got, want):
  got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
  return np.abs(got - want).max() / max(np.abs(want).max(), 1e-6)


def _forward_and_grads(fn, q, k, v, w):
  """fn(q, k, v) -> o; returns (o, (dq, dk, dv)) of sum(o * w), jitted once."""
  def loss(q, k, v):
    return jnp.sum(fn(q, k, v).astype(jnp.float32) * w)
  run = jax.jit(lambda q, k, v: (fn(q, k, v), jax.grad(loss, (0, 1, 2))(q, k, v)))
  return run(q, k, v)


def _compare(kernel_fn, q, k, v, w, mask, tol, **opts):
  spec = lambda q, k, v: reference.attention(
      q.astype(jnp.float32), k.astype(jnp.float32), v.astype(jnp.float32), mask, **opts)[0]
  o_want, g_want = _forward_and_grads(spec, q, k, v, w)
  o_got, g_got = _forward_and_grads(kernel_fn, q, k, v, w)
  assert o_got.dtype == q.dtype
  assert _rel(o_got, o_want) < tol, "output"
  for name, got, want in zip(("dq", "dk", "dv"), g_got, g_want):
    assert got.dtype == q.dtype
    assert _rel(got, want) < tol, name
  return o_got


slow = pytest.mark.slow

# (B, T, S, H, Hkv, D, block_q, block_k, dtype, options)
XLA_CASES = [
    pytest.param(2, 37, 37, 4, 2, 16, 8, 16, jnp.float32, dict(causal=True), marks=slow),
    pytest.param(1, 50, 77, 3, 1, 8, 16, 8, jnp.float32, dict(causal=True, window=11, sinks=3),
                 marks=slow),
    (2, 33, 20, 2, 2, 16, 16, 16, jnp.float32, dict(causal=False, softcap=2.0)),
    (1, 64, 64, 4, 1, 32, 16, 16, jnp.bfloat16, dict(causal=True)),
]


@pytest.mark.parametrize("b,t,s,h,hkv,d,bq,bk,dtype,opts", XLA_CASES)
def test_xla_path_matches_reference(b, t, s, h, hkv, d, bq, bk, dtype, opts):
  q, k, v, w = _inputs(jax.random.key(0), b, t, s, h, hkv, d, dtype)
  table = _random_table(jax.random.key(1), b, h, t, s, bq, bk)
  fn = functools.partial(ops.block_sparse_attention, mask=table, impl="xla", **opts)
  o = _compare(fn, q, k, v, w, table, 1e-5 if dtype == jnp.float32 else 2e-2, **opts)
  np.testing.assert_array_equal(np.asarray(o[0, :bq, 0], np.float32), 0.0)  # empty row


PALLAS_CASES = [
    pytest.param(2, 37, 37, 4, 2, 16, 16, 16, jnp.float32, dict(causal=True), marks=slow),
    (1, 45, 70, 2, 1, 24, 16, 32, jnp.float32, dict(causal=True, window=13, sinks=2,
                                                       softcap=3.0)),
    pytest.param(1, 40, 24, 2, 2, 16, 32, 16, jnp.float32, dict(causal=False), marks=slow),
    (1, 48, 48, 4, 2, 32, 16, 16, jnp.bfloat16, dict(causal=True)),
]


@pytest.mark.parametrize("b,t,s,h,hkv,d,bq,bk,dtype,opts", PALLAS_CASES)
def test_pallas_kernel_matches_reference(b, t, s, h, hkv, d, bq, bk, dtype, opts):
  q, k, v, w = _inputs(jax.random.key(2), b, t, s, h, hkv, d, dtype)
  table = _random_table(jax.random.key(3), b, h, t, s, bq, bk)
  fn = functools.partial(ops.block_sparse_attention, mask=table, impl="pallas", interpret=True,
                         **opts)
  o = _compare(fn, q, k, v, w, table, 1e-5 if dtype == jnp.float32 else 2e-2, **opts)
  np.testing.assert_array_equal(np.asarray(o[0, :bq, 0], np.float32), 0.0)


@pytest.mark.parametrize("impl", [pytest.param("xla", marks=slow), "pallas"])
def test_vertical_slash_columns_and_gradients(impl):
  b, t, s, h, hkv, d, bq, bk = 1, 45, 60, 2, 1, 16, 16, 16
  q, k, v, w = _inputs(jax.random.key(4), b, t, s, h, hkv, d, jnp.float32)
  cols = jax.random.randint(jax.random.key(5), (b, h, 5), 0, s)
  diags = jnp.broadcast_to(jnp.array([0, 20]), (b, h, 2))
  vs = masks.vertical_slash(cols, diags, seq_q=t, seq_k=s, block_q=bq, block_k=bk)
  assert int(vs.col_cnt.sum()) > 0  # the case really exercises leftover columns
  fn = functools.partial(ops.block_sparse_attention, mask=vs, impl=impl, causal=True,
                         interpret=True)
  _compare(fn, q, k, v, w, vs, 1e-5, causal=True)


def test_vertical_slash_through_the_tpu_kernel_merges_columns():
  """The Mosaic kernel (interpreted) serves the blocks; columns merge through its lse."""
  b, t, s, h, hkv, d = 1, 200, 260, 2, 1, 32
  q, k, v, w = _inputs(jax.random.key(10), b, t, s, h, hkv, d, jnp.float32)
  cols = jax.random.randint(jax.random.key(11), (b, h, 6), 0, s)
  vs = masks.vertical_slash(cols, jnp.zeros((b, h, 1), jnp.int32), seq_q=t, seq_k=s,
                            block_q=128, block_k=128)
  assert int(vs.col_cnt.sum()) > 0
  fn = functools.partial(ops.block_sparse_attention, mask=vs, impl="pallas_tpu", interpret=True)
  _compare(fn, q, k, v, w, vs, 1e-5, causal=True)


@pytest.mark.parametrize("impl", ["xla", "pallas"])
def test_full_causal_table_equals_dense_attention(impl):
  b, t, s, h, hkv, d = 1, 50, 50, 4, 2, 16
  q, k, v, _ = _inputs(jax.random.key(6), b, t, s, h, hkv, d, jnp.float32)
  table = masks.causal_table(t, s, block_q=16, block_k=16)
  got = jax.jit(lambda q, k, v: ops.block_sparse_attention(
      q, k, v, table, impl=impl, interpret=True))(q, k, v)
  want = dense.reference(q, k, v, causal=True)
  assert _rel(got, want) < 1e-5


def test_lse_matches_reference():
  q, k, v, _ = _inputs(jax.random.key(7), 1, 30, 40, 2, 1, 16, jnp.float32)
  table = _random_table(jax.random.key(8), 1, 2, 30, 40, 8, 8)
  _, lse = jax.jit(lambda q, k, v: ops.block_sparse_attention(
      q, k, v, table, impl="xla", return_lse=True))(q, k, v)
  _, want = reference.attention(q, k, v, table)
  np.testing.assert_allclose(lse, want, rtol=1e-5, atol=1e-5)
  assert np.isneginf(np.asarray(lse[0, 0, :8])).all()


def test_bad_inputs_raise_clear_errors():
  q, k, v, _ = _inputs(jax.random.key(9), 1, 32, 32, 2, 1, 16, jnp.float32)
  table = masks.causal_table(32, 32, block_q=16, block_k=16)
  with pytest.raises(ValueError, match="impl"):
    ops.block_sparse_attention(q, k, v, table, impl="cuda")
  with pytest.raises(ValueError, match="nq"):
    ops.block_sparse_attention(q[:, :10], k, v, table)
  odd = masks.causal_table(32, 32, block_q=24, block_k=16)
  with pytest.raises(ValueError, match="power of two"):
    ops.block_sparse_attention(q, k, v, odd, impl="pallas", interpret=True)
  with pytest.raises(ValueError, match="window"):
    ops.block_sparse_attention(q, k, v, table, window=0)
  with pytest.raises(ValueError, match="BlockTable"):
    ops.block_sparse_attention(q, k, v, np.ones((1, 1, 2, 2)))


def test_gpu_kernels_lower_to_triton(monkeypatch):
  """Interpret mode skips Triton's rules (power-of-two tiles, supported ops); lowering checks them.

  Lowers forward and backward for CUDA from this CPU host, posing as an H100 (jax only needs
  the device's compute capability to emit Triton IR).
  """
  from jax import export  # pylint: disable=g-import-not-at-top
  # pylint: disable-next=g-import-not-at-top
  from jax._src.pallas.triton import gpu_info, pallas_call_registration
  monkeypatch.setattr(pallas_call_registration.gpu_info_lib, "get_gpu_info",
                      lambda: gpu_info._get_gpu_info_impl(gpu_info.GpuVersion.H100))
  q = jax.ShapeDtypeStruct((1, 200, 4, 80), jnp.bfloat16)
  k = jax.ShapeDtypeStruct((1, 200, 2, 80), jnp.bfloat16)
  table = masks.sliding_window_table(200, 200, window=70, sinks=4, block_q=64, block_k=32)
  fn = lambda q, k, v: ops.block_sparse_attention(
      q, k, v, table, impl="pallas", window=70, sinks=4, softcap=30.0)
  grad = jax.grad(lambda q, k, v: jnp.sum(fn(q, k, v).astype(jnp.float32)), (0, 1, 2))
  exported = export.export(
      jax.jit(grad), platforms=["cuda"],
      disabled_checks=[export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")])(q, k, k)
  text = exported.mlir_module()
  for name in ("block_sparse_fwd", "block_sparse_dq", "block_sparse_dkv"):
    assert f'name = "{name}"' in text
