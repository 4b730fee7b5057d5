"""Mosaic TPU block-sparse flash attention (compiled on TPU, interpreted on CPU) vs the
dense-mask spec; its dk/dv walk; its block rule through the one validation."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental.pallas import tpu as pltpu

from jaxllm.attention.methods import dense
from jaxllm.attention.sparse import patterns
from pallas_kernels import common
from pallas_kernels.block_sparse import api, masks, reference
from pallas_kernels.block_sparse import mosaic_tpu_tables as tables
from pallas_kernels.block_sparse.mosaic_tpu_config import Config
from tests.kernels.modes import modes, running
from tests.numerics import TOL, qkv, rel_err, value_and_vjp

TPU = modes("tpu")


@functools.partial(jax.jit, static_argnames=("b", "h", "t", "s", "block_q", "block_k", "top",
                                             "causal", "empty_rows"))
def _random_table(key, *, b, h, t, s, block_q, block_k, top, causal, empty_rows=0):
  """Random top-``top`` key blocks per row, the diagonal block forced in under causality."""
  nq, nk = masks.num_blocks(t, block_q), masks.num_blocks(s, block_k)
  scores = jax.random.uniform(key, (b, h, nq, nk))
  if causal:
    _, last = masks.query_block_positions(t, s, block_q)
    diag = jnp.asarray(np.minimum(last // block_k, nk - 1))
    scores = jnp.where(jnp.arange(nk) == diag[:, None], 2.0, scores)
  table = patterns.topk_table(scores, top, seq_q=t, seq_k=s, block_q=block_q, block_k=block_k,
                              causal=causal)
  kv_idx, kv_cnt = table.kv_idx, table.kv_cnt
  if empty_rows:  # the first rows of head 0 attend nothing
    kv_cnt = kv_cnt.at[:, 0, :empty_rows].set(0)
    kv_idx = kv_idx.at[:, 0, :empty_rows].set(0)
  return kv_idx, kv_cnt


def _check(b, t, s, h, hkv, d, dtype, causal, *, top, mode="interpret", empty_rows=0,
           block_q=128, block_k=128, interpret=None, grads=True, seed=0, with_lse=False,
           **options):
  key_in, key_tab, key_lse = jax.random.split(jax.random.key(seed), 3)
  q, k, v, do = qkv(key_in, b, t, s, h, hkv, d, dtype)
  do = do.astype(dtype)
  kv_idx, kv_cnt = _random_table(key_tab, b=b, h=h, t=t, s=s, block_q=block_q, block_k=block_k,
                                 top=top, causal=causal, empty_rows=empty_rows)
  table = masks.BlockTable(kv_idx, kv_cnt, block_q, block_k)
  kernel = functools.partial(api.block_sparse_attention, mask=table, causal=causal,
                             impl="pallas", interpret=interpret, return_lse=with_lse, **options)

  def spec(q, k, v):
    o, lse = reference.attention(q, k, v, table, causal=causal, **options)
    return (o, lse) if with_lse else o

  cotangent = (do, jax.random.normal(key_lse, (b, h, t))) if with_lse else do
  with running("tpu", mode):
    out, grads = value_and_vjp(kernel, (q, k, v), cotangent, grads)
  out_ref, grads_ref = value_and_vjp(spec, (q, k, v), cotangent, bool(grads))
  o, o_ref = (out[0], out_ref[0]) if with_lse else (out, out_ref)
  assert o.shape == q.shape and o.dtype == q.dtype
  assert rel_err(o, o_ref) < TOL[dtype]
  if with_lse:
    lse, lse_ref = np.asarray(out[1]), np.asarray(out_ref[1])
    np.testing.assert_array_equal(np.isneginf(lse), np.isneginf(lse_ref))
    seen = np.isfinite(lse_ref)
    np.testing.assert_allclose(lse[seen], lse_ref[seen], rtol=1e-5, atol=1e-5)
  if empty_rows:
    np.testing.assert_array_equal(np.asarray(o[:, :empty_rows * block_q, 0], np.float32), 0.0)
  for name, g, g_ref in zip("qkv", grads, grads_ref):
    assert rel_err(g, g_ref) < TOL[dtype], f"d{name}"


@pytest.mark.parametrize("mode", TPU)
def test_gqa_causal_odd_lengths_float32(mode):
  # T and S not multiples of the block; queries are the last T of S keys.
  _check(1, 200, 300, 4, 2, 64, jnp.float32, causal=True, top=2, mode=mode)


@pytest.mark.parametrize("mode", TPU)
def test_bidirectional_bfloat16_with_empty_rows(mode):
  _check(1, 256, 384, 2, 1, 128, jnp.bfloat16, causal=False, top=2, empty_rows=1, mode=mode)


@pytest.mark.parametrize("mode", TPU)
def test_window_sinks_softcap_and_lse_gradient(mode):
  # Element-wise window and sinks inside listed blocks, tanh cap, and the lse as a second output
  # with its own cotangent (how vertical-slash columns are merged with the block part).
  _check(1, 256, 384, 2, 1, 64, jnp.float32, causal=True, top=3, empty_rows=1, window=150,
         sinks=4, softcap=5.0, with_lse=True, mode=mode)


@pytest.mark.parametrize("mode", TPU)
def test_full_table_is_dense_attention(mode):
  # The blocks below the diagonal are full: the kernels take their unmasked branch there.
  b, t, h, hkv, d = 1, 256, 2, 1, 64
  q, k, v = qkv(jax.random.key(1), b, t, t, h, hkv, d, jnp.float32, cotangent=False)
  table = patterns.causal_table(t, t, block_q=128, block_k=128, batch=b, heads=h)
  with running("tpu", mode):
    o = jax.jit(functools.partial(api.block_sparse_attention, mask=table, impl="pallas"))(q, k, v)
  assert rel_err(o, dense.reference(q, k, v, causal=True)) < 1e-5


@pytest.mark.parametrize("mode", TPU)
def test_vertical_slash_through_the_tpu_kernel_merges_columns(mode):
  """The Mosaic kernel serves the blocks; columns merge through its lse."""
  b, t, s, h, hkv, d = 1, 200, 260, 2, 1, 32
  q, k, v, w = qkv(jax.random.key(10), b, t, s, h, hkv, d, jnp.float32)
  cols = jax.random.randint(jax.random.key(11), (b, h, 6), 0, s)
  vs = patterns.vertical_slash(cols, jnp.zeros((b, h, 1), jnp.int32), seq_q=t, seq_k=s,
                               block_q=128, block_k=128)
  assert int(vs.col_cnt.sum()) > 0
  fn = functools.partial(api.block_sparse_attention, mask=vs, impl="pallas")
  spec = lambda q, k, v: reference.attention(q, k, v, vs)[0]
  with running("tpu", mode):
    out, grads = value_and_vjp(fn, (q, k, v), w)
  out_ref, grads_ref = value_and_vjp(spec, (q, k, v), w)
  for got, want in zip((out,) + tuple(grads), (out_ref,) + tuple(grads_ref)):
    assert rel_err(got, want) < 1e-5


def test_tpu_interpreter_simulating_vmem_and_dma():
  # The TPU interpreter fills uninitialised VMEM with nan and raises on out-of-bounds reads.
  with pltpu.force_tpu_interpret_mode():
    _check(1, 160, 256, 2, 1, 64, jnp.float32, causal=True, top=1, interpret=False)


def test_lowers_to_mosaic_for_tpu():
  """Forward, dq and dk/dv kernels, with every option on, pass jax's Mosaic lowering (TPU target,
  from CPU)."""
  b, t, s, h, hkv, d = 1, 200, 300, 4, 2, 128
  q = jax.ShapeDtypeStruct((b, t, h, d), jnp.bfloat16)
  k = jax.ShapeDtypeStruct((b, s, hkv, d), jnp.bfloat16)
  idx = jax.ShapeDtypeStruct((b, h, 2, 2), jnp.int32)
  cnt = jax.ShapeDtypeStruct((b, h, 2), jnp.int32)

  def loss(q, k, v, kv_idx, kv_cnt):
    table = masks.BlockTable(kv_idx, kv_cnt, 128, 128)
    o, lse = api.block_sparse_attention(q, k, v, table, impl="pallas", interpret=False,
                                        window=200, sinks=4, softcap=30.0, return_lse=True)
    return o.astype(jnp.float32).sum() + jnp.where(jnp.isfinite(lse), lse, 0.0).sum()

  with common.interpret_as("tpu"):
    grad = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
    text = grad.trace(q, k, k, idx, cnt).lower(lowering_platforms=("tpu",)).as_text()
  assert text.count("tpu_custom_call") == 3


def test_key_block_runs_visit_every_pair_once():
  b, t, s, h, hkv, bq, bk = 2, 384, 640, 4, 2, 128, 128
  kv_idx, kv_cnt = _random_table(jax.random.key(3), b=b, h=h, t=t, s=s, block_q=bq, block_k=bk,
                                 top=2, causal=True, empty_rows=1)
  cfg = Config(block_q=bq, block_k=bk, t=t, s=s, heads=h, kv_heads=hkv, causal=True, scale=1.0,
               window=None, sinks=0, softcap=None, interpret=True)
  kb, entry, flags = (np.asarray(x) for x in jax.jit(tables.key_block_runs, static_argnums=2)(
      kv_idx, kv_cnt, cfg))
  kv_idx, kv_cnt = np.asarray(kv_idx), np.asarray(kv_cnt)
  g, nq, nk = h // hkv, cfg.num_q_blocks, cfg.num_kv_blocks
  assert kb.shape == (b, hkv, g * nq * kv_idx.shape[-1] + nk)
  for bi, hk in np.ndindex(b, hkv):
    expected = sorted((int(k), (hi % g) * nq + i) for hi in range(hk * g, (hk + 1) * g)
                      for i in range(nq) for k in kv_idx[bi, hi, i, :kv_cnt[bi, hi, i]])
    f, blocks = flags[bi, hk], kb[bi, hk]
    computed = [(int(k), int(e)) for k, e, fl in zip(blocks, entry[bi, hk], f)
                if fl & tables.COMPUTE]
    assert computed == expected
    # Every key block has one run: FIRST opens it, LAST closes it, nothing else touches it.
    assert list(blocks[(f & tables.FIRST) != 0]) == list(range(nk))
    assert list(blocks[(f & tables.LAST) != 0]) == list(range(nk))
    assert np.all(np.diff(blocks) >= 0)
    assert np.all(f[np.flatnonzero((f & tables.LAST) != 0)[-1] + 1:] == 0)  # idle tail
    assert np.all((entry[bi, hk] >= 0) & (entry[bi, hk] < g * nq))  # every step fetches in bounds


def test_normalize_repeats_last_valid_index():
  kv_idx = jnp.array([[[[0, 2, 7, 9], [5, 1, 1, 1]]]])
  kv_cnt = jnp.array([[[2, 0]]])
  idx, cnt = common.normalize_table(kv_idx, kv_cnt, num_blocks=4)
  np.testing.assert_array_equal(idx, [[[[0, 2, 2, 2], [3, 3, 3, 3]]]])
  np.testing.assert_array_equal(cnt, kv_cnt)


@pytest.mark.parametrize("field,kwargs,match", [
    ("block_q", dict(block_q=64), "block_q must be a positive multiple of 128"),
    ("block_k", dict(block_k=100), "block_k must be a positive multiple of 128"),
    ("kv_idx", dict(kv_idx=jnp.zeros((1, 2, 3, 1), jnp.int32)), "table needs kv_idx"),
    ("nq", dict(kv_idx=jnp.zeros((1, 2, 3, 1), jnp.int32), kv_cnt=jnp.ones((1, 2, 3), jnp.int32)),
     "query blocks, need nq"),
    ("kv_cnt", dict(kv_cnt=jnp.zeros((1, 2), jnp.int32)), "kv_cnt"),
    ("heads", dict(k=jnp.zeros((1, 128, 3, 64))), "multiple of kv heads"),
    ("window", dict(window=0), "window must be a positive int"),
    ("sinks", dict(sinks=2), "sinks only apply together with a window"),
    ("softcap", dict(softcap=-1.0), "softcap must be positive"),
    ("dtype", dict(q=jnp.zeros((1, 128, 2, 64), jnp.int32)), "share one dtype"),
])
def test_bad_inputs_raise(field, kwargs, match):
  args = dict(q=jnp.zeros((1, 128, 2, 64)), k=jnp.zeros((1, 128, 1, 64)),
              v=jnp.zeros((1, 128, 1, 64)), kv_idx=jnp.zeros((1, 2, 1, 1), jnp.int32),
              kv_cnt=jnp.ones((1, 2, 1), jnp.int32), block_q=128, block_k=128)
  args.update(kwargs)
  if field == "heads":
    args["v"] = args["k"]
  table = masks.BlockTable(args.pop("kv_idx"), args.pop("kv_cnt"), args.pop("block_q"),
                           args.pop("block_k"))
  with common.interpret_as("tpu"), pytest.raises(ValueError, match=match):
    api.block_sparse_attention(mask=table, impl="pallas", **args)


@pytest.mark.slow
@pytest.mark.parametrize("b,t,s,h,hkv,d,dtype,causal,top", [
    (2, 500, 500, 4, 1, 128, jnp.float32, True, 3),
    (2, 384, 640, 4, 4, 64, jnp.bfloat16, True, 2),
    (1, 300, 700, 6, 2, 64, jnp.float32, False, 4),
])
@pytest.mark.parametrize("mode", TPU)
def test_larger_shapes(b, t, s, h, hkv, d, dtype, causal, top, mode):
  _check(b, t, s, h, hkv, d, dtype, causal, top=top, empty_rows=1, mode=mode)


@pytest.mark.slow
@pytest.mark.parametrize("mode", TPU)
def test_bidirectional_window_bfloat16(mode):
  _check(2, 384, 384, 4, 2, 64, jnp.bfloat16, causal=False, top=2, window=200, softcap=20.0,
         with_lse=True, mode=mode)


@pytest.mark.slow
@pytest.mark.parametrize("mode", TPU)
def test_rectangular_blocks_bfloat16(mode):
  _check(1, 520, 520, 2, 1, 64, jnp.bfloat16, causal=True, top=2, block_q=256, block_k=128,
         mode=mode)
