"""The block-sparse gather path (``xla.blocks_attention``): it runs only the listed pairs, and its
hand-written backward matches autodiff of the dense-mask spec on random shapes (odd T, T < S and
T > S, GQA, batch > 1, windows, sinks, soft cap, packed segments, both dtypes, the lse output)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pallas_kernels.block_sparse import api, masks, reference, xla
from tests.numerics import qkv, rel_err

slow = pytest.mark.slow


def _table(key, b, h, t, s, bq, bk, density):
  nq, nk = masks.num_blocks(t, bq), masks.num_blocks(s, bk)
  mask = jax.random.bernoulli(key, density, (b, h, nq, nk)).at[-1, -1, 0].set(False)
  return masks.from_block_mask(mask, block_q=bq, block_k=bk)


def _loss(fn, w, u):
  def loss(q, k, v):
    o, lse = fn(q, k, v)
    return jnp.sum(o.astype(jnp.float32) * w) + jnp.sum(jnp.where(jnp.isfinite(lse), lse, 0) * u)
  return loss


def _check(q, k, v, table, tol, pairs_per_step=None, **opts):
  b, t, h, _ = q.shape
  w = jax.random.normal(jax.random.key(11), q.shape, jnp.float32)
  u = jax.random.normal(jax.random.key(12), (b, h, t), jnp.float32)
  got_fn = lambda q, k, v: xla.blocks_attention(
      q, k, v, api._fit_table(table, b, t, k.shape[1], h, k.shape[2]),
      scale=q.shape[-1] ** -0.5, pairs_per_step=pairs_per_step,
      **{"window": None, "sinks": 0, "softcap": None, **opts})
  f32 = lambda x: x.astype(jnp.float32)
  want_fn = lambda q, k, v: reference.attention(f32(q), f32(k), f32(v), table, **opts)
  run = lambda fn: jax.jit(lambda q, k, v: (fn(q, k, v), jax.grad(_loss(fn, w, u), (0, 1, 2))(
      q, k, v)))(q, k, v)
  (o, lse), grads = run(got_fn)
  (o_want, lse_want), grads_want = run(want_fn)
  assert o.dtype == q.dtype and o.shape == q.shape
  assert rel_err(o, o_want) < tol, "output"
  np.testing.assert_array_equal(np.isfinite(lse), np.isfinite(lse_want))
  fin = np.isfinite(np.asarray(lse_want))
  assert np.abs(np.asarray(lse)[fin] - np.asarray(lse_want)[fin]).max() < tol * 10, "lse"
  for name, g, g_want, x in zip(("dq", "dk", "dv"), grads, grads_want, (q, k, v)):
    assert g.dtype == x.dtype and g.shape == x.shape
    assert rel_err(g, g_want) < tol, name
  return o


# (B, T, S, H, K, D, block_q, block_k, pairs per step, density, dtype, options)
CASES = [
    (2, 37, 53, 4, 2, 16, 8, 16, 3, 0.6, jnp.float32, dict(causal=True, window=9, sinks=2)),
    pytest.param(1, 40, 24, 3, 1, 8, 16, 8, 16, 0.7, jnp.float32,
                 dict(causal=False, softcap=2.0), marks=slow),
    pytest.param(3, 29, 29, 2, 2, 8, 8, 8, 5, 0.5, jnp.float32, dict(causal=True), marks=slow),
    (2, 45, 61, 2, 1, 32, 16, 16, 4, 0.6, jnp.bfloat16, dict(causal=True, softcap=5.0)),
]


@pytest.mark.parametrize("b,t,s,h,hkv,d,bq,bk,per_step,density,dtype,opts", CASES)
def test_forward_and_gradients_match_the_spec(b, t, s, h, hkv, d, bq, bk, per_step, density,
                                               dtype, opts):
  q, k, v = qkv(jax.random.key(t), b, t, s, h, hkv, d, dtype, cotangent=False)
  table = _table(jax.random.key(s), b, h, t, s, bq, bk, density)
  o = _check(q, k, v, table, 1e-5 if dtype == jnp.float32 else 2e-2, pairs_per_step=per_step,
             **opts)
  np.testing.assert_array_equal(np.asarray(o[-1, :bq, -1], np.float32), 0.0)  # the empty row


@slow
def test_packed_segments_forward_and_gradients():
  b, t, s, h, hkv, d = 2, 33, 33, 2, 1, 16
  q, k, v = qkv(jax.random.key(3), b, t, s, h, hkv, d, jnp.float32, cotangent=False)
  table = _table(jax.random.key(4), b, h, t, s, 8, 8, 0.8)
  seg = jnp.array([[0] * 10 + [1] * 15 + [2] * 8, [0] * 20 + [1] * 13])
  w = jax.random.normal(jax.random.key(5), q.shape, jnp.float32)
  got = lambda q, k, v: api.block_sparse_attention(q, k, v, table, impl="xla", segment_ids=seg)
  want = lambda q, k, v: reference.attention(q, k, v, table, segment_ids=seg)[0]
  loss = lambda fn: lambda q, k, v: jnp.sum(fn(q, k, v) * w)
  assert rel_err(jax.jit(got)(q, k, v), want(q, k, v)) < 1e-5
  for g, g_want in zip(jax.jit(jax.grad(loss(got), (0, 1, 2)))(q, k, v),
                       jax.grad(loss(want), (0, 1, 2))(q, k, v)):
    assert rel_err(g, g_want) < 1e-5


def test_pair_list_is_exactly_the_listed_blocks():
  table = _table(jax.random.key(6), 2, 3, 50, 70, 8, 16, 0.4)
  row, rank, kblk, count, rank_of_row = xla._listed_pairs(table, 7)
  cnt = np.asarray(table.kv_cnt)
  assert int(count) == cnt.sum() and row.shape[0] % 7 == 0 and row.shape[0] >= cnt.sum()
  idx = np.asarray(table.kv_idx).reshape(-1, table.max_blocks)
  want = [(r, int(idx[r, j]))
          for r, c in enumerate(cnt.reshape(-1)) for j in range(c)]
  assert list(zip(np.asarray(row[:count]).tolist(), np.asarray(kblk[:count]).tolist())) == want
  # Ranks number the rows that list a block, in order; empty rows have none.
  nonempty = cnt.reshape(-1) > 0
  want_rank = np.where(nonempty, np.cumsum(nonempty) - 1, -1)
  np.testing.assert_array_equal(np.asarray(rank_of_row), want_rank)
  np.testing.assert_array_equal(np.asarray(rank[:count]), want_rank[np.asarray(row[:count])])


@pytest.mark.parametrize("pairs_per_step", [2, 16])
def test_long_runs_of_empty_query_blocks_between_listed_ones(pairs_per_step):
  """Listed rows far apart (runs of empty query blocks longer than a step's pairs) still merge
  into their own rows: a step's pairs span consecutive ranks, not consecutive rows."""
  b, h, t, s, bq, bk = 2, 2, 96, 96, 4, 8
  nq, nk = masks.num_blocks(t, bq), masks.num_blocks(s, bk)
  mask = np.zeros((b, h, nq, nk), bool)
  mask[0, 0, 0, 0] = mask[0, 0, 23, :3] = mask[1, 1, 5, 0] = mask[1, 1, 20, 2:] = True
  table = masks.from_block_mask(jnp.asarray(mask), block_q=bq, block_k=bk)
  q, k, v = qkv(jax.random.key(13), b, t, s, h, 2, 8, jnp.float32, cotangent=False)
  _check(q, k, v, table, 1e-5, pairs_per_step=pairs_per_step, causal=False)


@slow
def test_result_does_not_depend_on_pairs_per_step():
  q, k, v = qkv(jax.random.key(7), 1, 64, 64, 2, 1, 16, jnp.float32, cotangent=False)
  table = api._fit_table(_table(jax.random.key(8), 1, 2, 64, 64, 8, 8, 0.5), 1, 64, 64, 2, 1)
  run = lambda c: jax.jit(lambda q, k, v: xla.blocks_attention(
      q, k, v, table, causal=True, scale=0.25, window=None, sinks=0, softcap=None,
      pairs_per_step=c)[0])(q, k, v)
  base = run(1)
  for c in (2, 9, 64, 1000):
    assert rel_err(run(c), base) < 1e-6


def test_pairs_per_step_keeps_the_step_tile_constant():
  assert [xla.pairs_per_step_for(b, b) for b in (64, 128, 256, 512, 1024)] == [128, 32, 8, 4, 4]
  assert xla.pairs_per_step_for(128, 256) == 16
  for b in (64, 128, 256):
    assert xla.pairs_per_step_for(b, b) * b * b == xla.TILE_ELEMENTS


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_bad_pairs_per_step_is_refused(bad):
  q, k, v = qkv(jax.random.key(3), 1, 16, 16, 2, 1, 8, jnp.float32, cotangent=False)
  table = api._fit_table(_table(jax.random.key(4), 1, 2, 16, 16, 8, 8, 0.5), 1, 16, 16, 2, 1)
  with pytest.raises(ValueError, match="pairs_per_step"):
    xla.blocks_attention(q, k, v, table, causal=True, scale=0.25, window=None, sinks=0,
                         softcap=None, pairs_per_step=bad)
