"""Block-table format and the pattern builders: invariants and agreement with element-wise masks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxllm.attention import masks as pos_masks
from jaxllm.attention.sparse import patterns
from pallas_kernels.block_sparse import masks


def _check_format(table, seq_q, seq_k):
  """Ascending valid entries, tail repeating the last, everything in range."""
  idx, cnt = np.asarray(table.kv_idx), np.asarray(table.kv_cnt)
  nq, nk = masks.num_blocks(seq_q, table.block_q), masks.num_blocks(seq_k, table.block_k)
  assert idx.shape[2] == nq and cnt.shape == idx.shape[:3]
  assert idx.dtype == np.int32 and cnt.dtype == np.int32
  assert (idx >= 0).all() and (idx < nk).all()
  assert (cnt >= 0).all() and (cnt <= idx.shape[-1]).all()
  for row, c in zip(idx.reshape(-1, idx.shape[-1]), cnt.reshape(-1)):
    assert (np.diff(row[:c]) > 0).all()
    assert (row[c:] == (row[c - 1] if c else 0)).all()


def _blocks_touched(visible, block_q, block_k):
  """Bool [nq, nk]: blocks of a [T, S] element mask that hold at least one True."""
  t, s = visible.shape
  nq, nk = masks.num_blocks(t, block_q), masks.num_blocks(s, block_k)
  pad = np.zeros((nq * block_q, nk * block_k), bool)
  pad[:t, :s] = visible
  return pad.reshape(nq, block_q, nk, block_k).any(axis=(1, 3))


SHAPES = [(37, 50, 8, 16), (64, 64, 16, 16), (50, 37, 16, 8), (100, 300, 32, 64)]


@pytest.mark.parametrize("seq_q,seq_k,block_q,block_k", SHAPES)
@pytest.mark.parametrize("causal", [True, False])
def test_causal_table_is_exact(seq_q, seq_k, block_q, block_k, causal):
  table = patterns.causal_table(seq_q, seq_k, block_q=block_q, block_k=block_k, causal=causal)
  _check_format(table, seq_q, seq_k)
  want = pos_masks.visible(*pos_masks.positions(seq_q, seq_k), causal=causal)
  got = masks.dense_mask(table, seq_q, seq_k, causal=causal)[0, 0]
  np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("seq_q,seq_k,block_q,block_k", SHAPES)
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("window,sinks", [(1, 0), (20, 3), (33, 17)])
def test_window_tables_list_exactly_the_touched_blocks(seq_q, seq_k, block_q, block_k, causal,
                                                       window, sinks):
  table = patterns.sliding_window_table(seq_q, seq_k, window=window, sinks=sinks, block_q=block_q,
                                     block_k=block_k, causal=causal, batch=2, heads=3)
  _check_format(table, seq_q, seq_k)
  assert table.kv_idx.shape[:2] == (2, 3)
  visible = np.asarray(pos_masks.visible(*pos_masks.positions(seq_q, seq_k), causal=causal,
                                         window=window, sinks=sinks))
  got = np.asarray(masks.block_mask(table, masks.num_blocks(seq_k, block_k))[1, 2])
  np.testing.assert_array_equal(got, _blocks_touched(visible, block_q, block_k))


def test_sink_window_table_matches_sliding_with_sinks():
  a = patterns.sink_window_table(70, 70, sinks=4, window=20, block_q=16, block_k=16)
  b = patterns.sliding_window_table(70, 70, window=20, sinks=4, block_q=16, block_k=16)
  np.testing.assert_array_equal(a.kv_idx, b.kv_idx)
  np.testing.assert_array_equal(a.kv_cnt, b.kv_cnt)
  assert (np.asarray(a.kv_idx)[0, 0, :, 0] == 0).all()  # every block keeps the sink block


def test_causal_table_with_more_queries_than_keys_has_empty_rows():
  table = patterns.causal_table(40, 8, block_q=8, block_k=8)
  np.testing.assert_array_equal(table.kv_cnt[0, 0], [0, 0, 0, 0, 1])


def test_from_block_mask_round_trips():
  mask = jax.random.bernoulli(jax.random.key(0), 0.4, (2, 3, 5, 7))
  mask = mask.at[0, 0, 1].set(False)  # an empty row
  table = masks.from_block_mask(mask, block_q=16, block_k=16)
  _check_format(table, 5 * 16, 7 * 16)
  assert int(table.kv_cnt[0, 0, 1]) == 0
  np.testing.assert_array_equal(masks.block_mask(table, 7), mask)
  narrow = masks.from_block_mask(mask, block_q=16, block_k=16, max_blocks=2)
  np.testing.assert_array_equal(narrow.kv_cnt, np.minimum(np.asarray(mask).sum(-1), 2))


def test_transpose_table_lists_query_blocks_of_each_key_block():
  mask = jax.random.bernoulli(jax.random.key(1), 0.5, (1, 2, 6, 4))
  table = masks.from_block_mask(mask, block_q=8, block_k=8)
  q_idx, q_cnt = masks.transpose_table(table, 4)
  back = masks.from_block_mask(jnp.swapaxes(mask, -1, -2), block_q=8, block_k=8)
  np.testing.assert_array_equal(q_idx, back.kv_idx)
  np.testing.assert_array_equal(q_cnt, back.kv_cnt)


@pytest.mark.parametrize("causal", [True, False])
def test_topk_table_picks_the_best_visible_blocks(causal):
  seq_q, seq_k, bq, bk, k = 70, 90, 16, 16, 3
  nq, nk = masks.num_blocks(seq_q, bq), masks.num_blocks(seq_k, bk)
  scores = jax.random.normal(jax.random.key(2), (2, 2, nq, nk))
  scores = scores.at[0, 1, 4, :].set(-jnp.inf)  # nothing selectable in this row
  table = patterns.topk_table(scores, k, seq_q=seq_q, seq_k=seq_k, block_q=bq, block_k=bk,
                           causal=causal)
  _check_format(table, seq_q, seq_k)
  ok = np.asarray(patterns.visible_blocks(seq_q, seq_k, block_q=bq, block_k=bk, causal=causal))
  s = np.where(ok, np.asarray(scores), -np.inf)
  for b in range(2):
    for h in range(2):
      for i in range(nq):
        order = np.argsort(-s[b, h, i], kind="stable")[:k]
        want = sorted(j for j in order if np.isfinite(s[b, h, i, j]))
        c = int(table.kv_cnt[b, h, i])
        assert list(np.asarray(table.kv_idx[b, h, i, :c])) == want
  assert int(table.kv_cnt[0, 1, 4]) == 0


def _vertical_slash_elements(cols, diags, seq_q, seq_k):
  """Exact element mask [T, S] of columns + diagonals (causal)."""
  q_pos, k_pos = (np.asarray(x) for x in pos_masks.positions(seq_q, seq_k))
  hit = np.isin(k_pos[None, :], cols) | np.isin(q_pos[:, None] - k_pos[None, :], diags)
  return hit & (k_pos[None, :] <= q_pos[:, None])


@pytest.mark.parametrize("seq_q,seq_k,block_q,block_k", [(70, 90, 16, 16), (64, 64, 32, 16)])
def test_vertical_slash_covers_columns_and_diagonals(seq_q, seq_k, block_q, block_k):
  key = jax.random.key(3)
  cols = jax.random.randint(key, (2, 3, 6), 0, seq_k)
  cols = cols.at[..., 1].set(cols[..., 0])  # duplicates are dropped
  diags = jnp.broadcast_to(jnp.array([0, 5, 40]), (2, 3, 3))
  vs = patterns.vertical_slash(cols, diags, seq_q=seq_q, seq_k=seq_k, block_q=block_q,
                            block_k=block_k)
  _check_format(vs.table, seq_q, seq_k)
  nk = masks.num_blocks(seq_k, block_k)
  blocks = np.asarray(masks.block_mask(vs.table, nk))
  dense = np.asarray(masks.dense_mask(vs, seq_q, seq_k, causal=True))
  col_idx, col_cnt = np.asarray(vs.col_idx), np.asarray(vs.col_cnt)
  for b in range(2):
    for h in range(3):
      exact = _vertical_slash_elements(np.asarray(cols[b, h]), np.asarray(diags[b, h]), seq_q,
                                       seq_k)
      assert (dense[b, h] >= exact).all()
      only_diags = _vertical_slash_elements(np.array([], int), np.asarray(diags[b, h]), seq_q,
                                            seq_k)
      np.testing.assert_array_equal(blocks[b, h], _blocks_touched(only_diags, block_q, block_k))
      for i in range(blocks.shape[2]):
        left = col_idx[b, h, i, :col_cnt[b, h, i]]
        assert (np.diff(left) > 0).all()  # ascending, no duplicates
        assert not blocks[b, h, i, left // block_k].any()  # leftovers sit outside listed blocks


def test_builders_reject_bad_arguments():
  with pytest.raises(ValueError, match="block_q"):
    patterns.causal_table(10, 10, block_q=0, block_k=8)
  with pytest.raises(ValueError, match="window"):
    patterns.sliding_window_table(10, 10, window=0, block_q=8, block_k=8)
  with pytest.raises(ValueError, match="sinks"):
    patterns.sink_window_table(10, 10, sinks=-1, window=4, block_q=8, block_k=8)
  with pytest.raises(ValueError, match="k must be"):
    patterns.topk_table(jnp.zeros((1, 1, 2, 2)), 3, seq_q=16, seq_k=16, block_q=8, block_k=8)
  with pytest.raises(ValueError, match="scores"):
    patterns.topk_table(jnp.zeros((1, 1, 3, 2)), 1, seq_q=16, seq_k=16, block_q=8, block_k=8)
  with pytest.raises(ValueError, match="max_blocks"):
    masks.from_block_mask(jnp.ones((1, 1, 2, 2), bool), block_q=8, block_k=8, max_blocks=3)
