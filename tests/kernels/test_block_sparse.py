"""Block-sparse attention: gather path and Triton kernels (compiled on GPU, interpreted on CPU)
vs the dense-mask spec; the table contract (GQA-shared selection, full blocks, transposed table,
log-sum-exp) and the one validation."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxllm.attention import masks as rules
from jaxllm.attention.methods import dense
from jaxllm.attention.sparse import patterns
from pallas_kernels import common
from pallas_kernels.block_sparse import api, masks, reference
from tests.kernels.modes import impl_modes, modes, running
from tests.numerics import forward_and_grads, qkv, rel_err

slow = pytest.mark.slow
GPU = modes("gpu")


def _random_table(key, b, h, t, s, bq, bk, density=0.5):
  nq, nk = masks.num_blocks(t, bq), masks.num_blocks(s, bk)
  mask = jax.random.bernoulli(key, density, (b, h, nq, nk))
  mask = mask.at[0, 0, 0].set(False)  # an empty row must output zeros
  return masks.from_block_mask(mask, block_q=bq, block_k=bk)


def _compare(kernel_fn, q, k, v, w, mask, tol, **opts):
  spec = lambda q, k, v: reference.attention(
      q.astype(jnp.float32), k.astype(jnp.float32), v.astype(jnp.float32), mask, **opts)[0]
  o_want, g_want = forward_and_grads(spec, q, k, v, w)
  o_got, g_got = forward_and_grads(kernel_fn, q, k, v, w)
  assert o_got.dtype == q.dtype
  assert rel_err(o_got, o_want) < tol, "output"
  for name, got, want in zip(("dq", "dk", "dv"), g_got, g_want):
    assert got.dtype == q.dtype
    assert rel_err(got, want) < tol, name
  return o_got


# (B, T, S, H, K, D, block_q, block_k, dtype, options)
XLA_CASES = [
    pytest.param(2, 37, 37, 4, 2, 16, 8, 16, jnp.float32, dict(causal=True), marks=slow),
    pytest.param(1, 50, 77, 3, 1, 8, 16, 8, jnp.float32, dict(causal=True, window=11, sinks=3),
                 marks=slow),
    (2, 33, 20, 2, 2, 16, 16, 16, jnp.float32, dict(causal=False, softcap=2.0)),
    (1, 64, 64, 4, 1, 32, 16, 16, jnp.bfloat16, dict(causal=True)),
]


@pytest.mark.parametrize("b,t,s,h,hkv,d,bq,bk,dtype,opts", XLA_CASES)
def test_xla_path_matches_reference(b, t, s, h, hkv, d, bq, bk, dtype, opts):
  q, k, v, w = qkv(jax.random.key(0), b, t, s, h, hkv, d, dtype)
  table = _random_table(jax.random.key(1), b, h, t, s, bq, bk)
  fn = functools.partial(api.block_sparse_attention, mask=table, impl="xla", **opts)
  o = _compare(fn, q, k, v, w, table, 1e-5 if dtype == jnp.float32 else 2e-2, **opts)
  np.testing.assert_array_equal(np.asarray(o[0, :bq, 0], np.float32), 0.0)  # empty row


PALLAS_CASES = [
    pytest.param(2, 37, 37, 4, 2, 16, 16, 16, jnp.float32, dict(causal=True), marks=slow),
    (1, 45, 70, 2, 1, 24, 16, 32, jnp.float32, dict(causal=True, window=13, sinks=2,
                                                       softcap=3.0)),
    pytest.param(1, 40, 24, 2, 2, 16, 32, 16, jnp.float32, dict(causal=False), marks=slow),
    (1, 48, 48, 4, 2, 32, 16, 16, jnp.bfloat16, dict(causal=True)),
]


@pytest.mark.parametrize("mode", GPU)
@pytest.mark.parametrize("b,t,s,h,hkv,d,bq,bk,dtype,opts", PALLAS_CASES)
def test_pallas_kernel_matches_reference(b, t, s, h, hkv, d, bq, bk, dtype, opts, mode):
  q, k, v, w = qkv(jax.random.key(2), b, t, s, h, hkv, d, dtype)
  table = _random_table(jax.random.key(3), b, h, t, s, bq, bk)
  fn = functools.partial(api.block_sparse_attention, mask=table, impl="pallas", **opts)
  with running("gpu", mode):
    o = _compare(fn, q, k, v, w, table, 1e-5 if dtype == jnp.float32 else 2e-2, **opts)
  np.testing.assert_array_equal(np.asarray(o[0, :bq, 0], np.float32), 0.0)


@pytest.mark.parametrize("impl,mode", impl_modes("gpu", xla_marks=[slow]))
def test_vertical_slash_columns_and_gradients(impl, mode):
  b, t, s, h, hkv, d, bq, bk = 1, 45, 60, 2, 1, 16, 16, 16
  q, k, v, w = qkv(jax.random.key(4), b, t, s, h, hkv, d, jnp.float32)
  cols = jax.random.randint(jax.random.key(5), (b, h, 5), 0, s)
  diags = jnp.broadcast_to(jnp.array([0, 20]), (b, h, 2))
  vs = patterns.vertical_slash(cols, diags, seq_q=t, seq_k=s, block_q=bq, block_k=bk)
  assert int(vs.col_cnt.sum()) > 0  # the case really exercises leftover columns
  fn = functools.partial(api.block_sparse_attention, mask=vs, impl=impl, causal=True)
  with running("gpu", mode):
    _compare(fn, q, k, v, w, vs, 1e-5, causal=True)


@pytest.mark.parametrize("impl,mode", impl_modes("gpu"))
def test_full_causal_table_equals_dense_attention(impl, mode):
  # Every block below the diagonal is full, so this runs the unmasked branch of the kernels.
  b, t, s, h, hkv, d = 1, 50, 50, 4, 2, 16
  q, k, v = qkv(jax.random.key(6), b, t, s, h, hkv, d, jnp.float32, cotangent=False)
  table = patterns.causal_table(t, s, block_q=16, block_k=16)
  with running("gpu", mode):
    got = jax.jit(lambda q, k, v: api.block_sparse_attention(q, k, v, table, impl=impl))(q, k, v)
  assert rel_err(got, dense.reference(q, k, v, causal=True)) < 1e-5


@pytest.mark.parametrize("impl,mode", impl_modes("gpu"))
def test_lse_matches_reference(impl, mode):
  q, k, v = qkv(jax.random.key(7), 1, 30, 40, 2, 1, 16, jnp.float32, cotangent=False)
  table = _random_table(jax.random.key(8), 1, 2, 30, 40, 16, 16)
  with running("gpu", mode):
    _, lse = jax.jit(lambda q, k, v: api.block_sparse_attention(
        q, k, v, table, impl=impl, return_lse=True))(q, k, v)
  _, want = reference.attention(q, k, v, table)
  np.testing.assert_allclose(lse, want, rtol=1e-5, atol=1e-5)
  assert np.isneginf(np.asarray(lse[0, 0, :16])).all()


@pytest.mark.parametrize("impl,mode", impl_modes("gpu", xla_marks=[slow]))
def test_selection_shared_by_a_gqa_group_with_its_transpose_built_once(impl, mode):
  """A table with K head rows serves each group of H / K query heads; its transposed table,
  built once beforehand, serves the dK/dV pass."""
  b, t, s, h, hkv, d, bq = 1, 40, 40, 4, 2, 16, 16
  q, k, v, w = qkv(jax.random.key(12), b, t, s, h, hkv, d, jnp.float32)
  shared = masks.with_transpose(_random_table(jax.random.key(13), b, hkv, t, s, bq, bq), s)
  assert shared.q_idx.shape == (b, hkv, masks.num_blocks(s, bq), masks.num_blocks(t, bq))
  per_head = masks.BlockTable(jnp.repeat(shared.kv_idx, h // hkv, axis=1),
                              jnp.repeat(shared.kv_cnt, h // hkv, axis=1), bq, bq)
  fn = functools.partial(api.block_sparse_attention, mask=shared, impl=impl)
  with running("gpu", mode):
    _compare(fn, q, k, v, w, per_head, 1e-5, causal=True)


@pytest.mark.parametrize("causal,window,sinks", [(True, None, 0), (True, 30, 3), (False, 17, 0),
                                                 (False, None, 0), (True, 9, 16)])
def test_full_blocks_are_exactly_the_unmasked_tiles(causal, window, sinks):
  t, s, bq, bk = 45, 70, 8, 16
  table = patterns.causal_table(t, s, block_q=bq, block_k=bk, causal=False)
  full = np.asarray(masks.full_blocks(table, t, s, causal=causal, window=window, sinks=sinks))
  ok = np.asarray(rules.visible(*rules.positions(t, s), causal=causal, window=window,
                                sinks=sinks))
  nq, nk = masks.num_blocks(t, bq), masks.num_blocks(s, bk)
  pad = np.zeros((nq * bq, nk * bk), bool)
  pad[:t, :s] = ok
  want = pad.reshape(nq, bq, nk, bk).all(axis=(1, 3))
  idx = np.asarray(table.kv_idx[0, 0])
  np.testing.assert_array_equal(full[0, 0], want[np.arange(nq)[:, None], idx])
  assert want.any() and not want.all()  # both kinds occur


def test_impl_resolution():
  assert common.choose("op", "xla") == (None, False)
  assert common.choose("op", "auto") == (None, False)  # no native kernel on this host
  with common.interpret_as("tpu"):
    assert common.choose("op", "pallas") == ("tpu", True)
  if jax.default_backend() == "cpu":
    assert common.choose("op", "pallas") == ("gpu", True)
  with pytest.raises(ValueError, match="platform must be one of"):
    with common.interpret_as("ipu"):
      pass


def test_bad_inputs_raise_clear_errors():
  q, k, v = qkv(jax.random.key(9), 1, 32, 32, 2, 1, 16, jnp.float32, cotangent=False)
  table = patterns.causal_table(32, 32, block_q=16, block_k=16)
  with pytest.raises(ValueError, match="impl"):
    api.block_sparse_attention(q, k, v, table, impl="cuda")
  with pytest.raises(ValueError, match="nq"):
    api.block_sparse_attention(q[:, :10], k, v, table)
  odd = patterns.causal_table(32, 32, block_q=24, block_k=16)
  with pytest.raises(ValueError, match="power of two"):
    api.block_sparse_attention(q, k, v, odd, impl="pallas")
  with pytest.raises(ValueError, match="window"):
    api.block_sparse_attention(q, k, v, table, window=0)
  with pytest.raises(ValueError, match="BlockTable"):
    api.block_sparse_attention(q, k, v, np.ones((1, 1, 2, 2)))
  three_heads = masks.BlockTable(jnp.zeros((1, 3, 2, 1), jnp.int32),
                                 jnp.ones((1, 3, 2), jnp.int32), 16, 16)
  with pytest.raises(ValueError, match="heads H=2, K=1"):
    api.block_sparse_attention(q, k, v, three_heads)
  bad_t = masks.BlockTable(table.kv_idx, table.kv_cnt, 16, 16, q_idx=jnp.zeros((1, 1, 5, 2)),
                           q_cnt=jnp.zeros((1, 1, 5)))
  with pytest.raises(ValueError, match="q_idx"):
    api.block_sparse_attention(q, k, v, bad_t)


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
  table = patterns.sliding_window_table(200, 200, window=70, sinks=4, block_q=64, block_k=32)
  fn = lambda q, k, v: api.block_sparse_attention(
      q, k, v, table, impl="pallas", interpret=False, window=70, sinks=4, softcap=30.0)
  grad = jax.grad(lambda q, k, v: jnp.sum(fn(q, k, v).astype(jnp.float32)), (0, 1, 2))
  with common.interpret_as("gpu"):
    exported = export.export(
        jax.jit(grad), platforms=["cuda"],
        disabled_checks=[export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")])(q, k, k)
  text = exported.mlir_module()
  for name in ("block_sparse_fwd", "block_sparse_dq", "block_sparse_dkv"):
    assert f'name = "{name}"' in text
