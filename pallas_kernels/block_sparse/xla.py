"""Gather-based block-sparse attention in plain JAX: the ``xla`` path, usable on CPU at long T.

An online softmax walks the table's slots: step j gathers key block ``kv_idx[..., j]`` for every
query block at once, so memory stays O(T * block_k) per step and empty slots cost one masked
block. The step is rematerialised under autodiff, keeping only the running (acc, max, sum).
"""

import jax
import jax.numpy as jnp

from jaxllm.attention.masks import visible_pairs
from pallas_kernels.block_sparse import masks
from pallas_kernels.block_sparse.reference import cap_logits


def _to_blocks(x, block):
  """[B, L, N, D] -> [B, N, L_pad / block, block, D], zero-padding L up to a multiple of block."""
  b, length, n, d = x.shape
  nb = masks.num_blocks(length, block)
  x = jnp.pad(x, ((0, 0), (0, nb * block - length), (0, 0), (0, 0)))
  return x.reshape(b, nb, block, n, d).transpose(0, 3, 1, 2, 4)


def _flat_rows(x_BNLD, h):
  """Flattens kv [B, Hkv, L, ...] for take(); returns it and the row base of each query head."""
  b, hkv = x_BNLD.shape[:2]
  base_BH = (jnp.arange(b)[:, None] * hkv + jnp.arange(h)[None, :] // (h // hkv)) * x_BNLD.shape[2]
  return x_BNLD.reshape((-1,) + x_BNLD.shape[3:]), base_BH


def _finish(acc, m, l, t, dtype):
  """acc [B, H, nq, bq, D], m/l [B, H, nq, bq] -> (o [B, T, H, D], lse [B, H, T])."""
  b, h, nq, bq, d = acc.shape
  has = l > 0
  safe = jnp.where(has, l, 1.0)
  o = (acc / safe[..., None]).reshape(b, h, nq * bq, d)[:, :, :t]
  lse = jnp.where(has, m + jnp.log(safe), -jnp.inf).reshape(b, h, nq * bq)[:, :, :t]
  return jnp.swapaxes(o, 1, 2).astype(dtype), lse


def _update(carry, logits, ok, v_blk):
  """One online-softmax step over a [..., bq, n] logit tile and its [..., n, D] values."""
  acc, m, l = carry
  logits = jnp.where(ok, logits, -jnp.inf)
  # Outputs and lse = m + log(l) do not depend on the running max, so it carries no gradient.
  m_new = jax.lax.stop_gradient(jnp.maximum(m, jnp.max(logits, axis=-1)))
  m_safe = jnp.where(jnp.isfinite(m_new), m_new, 0.0)
  alpha = jnp.exp(m - m_safe)
  p = jnp.exp(logits - m_safe[..., None])
  acc = alpha[..., None] * acc + jnp.einsum(
      "...qk,...kd->...qd", p.astype(v_blk.dtype), v_blk, preferred_element_type=jnp.float32)
  return acc, m_new, alpha * l + jnp.sum(p, axis=-1)


def _query_positions(t, s, nq, bq):
  rows = jnp.arange(nq * bq).reshape(nq, bq)
  return rows + (s - t), rows < t


def _segments_at(segment_ids, pos):
  """Segment ids [B, ...] at the key positions ``pos`` [B, ...] of each row; positions past the
  row (padding, masked anyway) read its last id."""
  pos = jnp.minimum(pos, segment_ids.shape[1] - 1)
  return jax.vmap(lambda seg_S, pos_row: seg_S[pos_row])(segment_ids, pos)


def _query_segments(segment_ids, q_pos):
  """[B, 1, nq, bq, 1] segment ids of the query rows ``q_pos`` [nq, bq]."""
  b = segment_ids.shape[0]
  return _segments_at(segment_ids, jnp.broadcast_to(q_pos, (b,) + q_pos.shape))[:, None, ..., None]


def blocks_attention(q, k, v, table: masks.BlockTable, *, causal, scale, window, sinks,
                     softcap, segment_ids=None):
  """Attention over the table's key blocks; q [B, T, H, D], k/v [B, S, Hkv, D].

  The table must have full [B, H, nq, max_blocks] leading dims. ``segment_ids`` int [B, S]
  (packed rows) hide pairs of different segments inside the listed blocks. Returns
  (o, lse [B, H, T]).
  """
  t, h = q.shape[1], q.shape[2]
  s = k.shape[1]
  bq, bk = table.block_q, table.block_k
  q_blk = _to_blocks(q, bq)  # [B, H, nq, bq, D]
  nq = q_blk.shape[2]
  k_flat, base_BH = _flat_rows(_to_blocks(k, bk), h)  # [B * Hkv * nk, bk, D]
  v_flat, _ = _flat_rows(_to_blocks(v, bk), h)
  q_pos, q_real = _query_positions(t, s, nq, bq)
  cnt = table.kv_cnt
  if segment_ids is not None:
    q_seg = _query_segments(segment_ids, q_pos)

  @jax.checkpoint
  def step(carry, xs):
    j, idx_BHQ = xs
    rows = base_BH[..., None] + idx_BHQ
    k_blk = jnp.take(k_flat, rows, axis=0)  # [B, H, nq, bk, D]
    v_blk = jnp.take(v_flat, rows, axis=0)
    logits = jnp.einsum("bhqrd,bhqcd->bhqrc", q_blk, k_blk, preferred_element_type=jnp.float32)
    logits = cap_logits(logits * scale, softcap)
    k_pos = idx_BHQ[..., None] * bk + jnp.arange(bk)  # [B, H, nq, bk]
    seg = {} if segment_ids is None else dict(
        q_segment=q_seg, k_segment=_segments_at(segment_ids, k_pos)[..., None, :])
    ok = visible_pairs(q_pos[..., None], k_pos[..., None, :], causal=causal, window=window,
                       sinks=sinks, **seg)
    ok &= (k_pos < s)[..., None, :] & q_real[..., None] & (j < cnt)[..., None, None]
    return _update(carry, logits, ok, v_blk), None

  b, d = q.shape[0], q.shape[3]
  init = (jnp.zeros((b, h, nq, bq, d), jnp.float32), jnp.full((b, h, nq, bq), -jnp.inf),
          jnp.zeros((b, h, nq, bq), jnp.float32))
  slots = (jnp.arange(table.max_blocks), jnp.moveaxis(table.kv_idx, -1, 0))
  carry, _ = jax.lax.scan(step, init, slots)
  return _finish(*carry, t, q.dtype)


def columns_attention(q, k, v, col_idx, col_cnt, *, block_q, causal, scale, window, sinks,
                      softcap, segment_ids=None):
  """Attention over per-query-block key columns (vertical-slash leftovers); returns (o, lse).

  ``col_idx`` int [B, H, nq, n_cols] key positions, ``col_cnt`` int [B, H, nq] valid entries;
  ``segment_ids`` as in :func:`blocks_attention`.
  """
  t, h = q.shape[1], q.shape[2]
  s = k.shape[1]
  q_blk = _to_blocks(q, block_q)
  nq = q_blk.shape[2]
  k_flat, base_BH = _flat_rows(jnp.swapaxes(k, 1, 2), h)  # [B * Hkv * S, D]
  v_flat, _ = _flat_rows(jnp.swapaxes(v, 1, 2), h)
  rows = base_BH[..., None, None] + col_idx
  k_col = jnp.take(k_flat, rows, axis=0)  # [B, H, nq, n_cols, D]
  v_col = jnp.take(v_flat, rows, axis=0)
  logits = jnp.einsum("bhqrd,bhqcd->bhqrc", q_blk, k_col, preferred_element_type=jnp.float32)
  logits = cap_logits(logits * scale, softcap)
  q_pos, q_real = _query_positions(t, s, nq, block_q)
  seg = {} if segment_ids is None else dict(
      q_segment=_query_segments(segment_ids, q_pos),
      k_segment=_segments_at(segment_ids, col_idx)[..., None, :])
  ok = visible_pairs(q_pos[..., None], col_idx[..., None, :], causal=causal, window=window,
                     sinks=sinks, **seg)
  slot_ok = jnp.arange(col_idx.shape[-1]) < col_cnt[..., None]
  ok &= slot_ok[..., None, :] & q_real[..., None]
  b, d = q.shape[0], q.shape[3]
  init = (jnp.zeros((b, h, nq, block_q, d), jnp.float32), jnp.full((b, h, nq, block_q), -jnp.inf),
          jnp.zeros((b, h, nq, block_q), jnp.float32))
  return _finish(*_update(init, logits, ok, v_col), t, q.dtype)


def merge(o1, lse1, o2, lse2):
  """Combines two attentions over disjoint key sets by their log-sum-exps (o [B, T, H, D])."""
  m = jax.lax.stop_gradient(jnp.maximum(lse1, lse2))
  m = jnp.where(jnp.isfinite(m), m, 0.0)
  w1, w2 = jnp.exp(lse1 - m), jnp.exp(lse2 - m)
  tot = w1 + w2
  has = tot > 0
  safe = jnp.where(has, tot, 1.0)
  to_bthd = lambda w: jnp.swapaxes(w, 1, 2)[..., None]
  o = (to_bthd(w1) * o1.astype(jnp.float32) + to_bthd(w2) * o2.astype(jnp.float32)) / to_bthd(safe)
  return o.astype(o1.dtype), jnp.where(has, m + jnp.log(safe), -jnp.inf)
