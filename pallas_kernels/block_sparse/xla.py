"""Gather-based block-sparse attention in plain JAX: the ``xla`` path, usable on CPU at long T.

:func:`blocks_attention` executes only the table's listed (query block, key block) pairs: they
are flattened and walked a few at a time by a loop of traced length, with an online-softmax merge
by query block and a flash-style backward, so memory is O(T D) plus one step's tiles.
:func:`columns_attention` attends vertical-slash leftover columns in one gather.
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


# Logit elements of one loop step of the gather path (2 MiB of float32): a step runs
# TILE_ELEMENTS / (block_q * block_k) listed pairs. Measured on 2 CPU cores (B 1, H 2, K 1, D 64,
# T 4096, a table keeping a quarter of the causal blocks; forward and forward + backward), the
# fastest count per block size was 128 pairs at block 64, 32 at 128, 8 at 256 (4 with the
# backward) and 4 at 512: a constant tile of about 2^19 logits, where a fixed 16 pairs ran
# 1.28x slower at block 64, 1.04-1.23x at 128 and 1.26x at 512 (forward).
TILE_ELEMENTS = 2 ** 19
MIN_PAIRS_PER_STEP = 4


def pairs_per_step_for(block_q: int, block_k: int) -> int:
  """Listed pairs per loop step for blocks of ``block_q`` x ``block_k``: TILE_ELEMENTS logits,
  at least MIN_PAIRS_PER_STEP."""
  return max(MIN_PAIRS_PER_STEP, TILE_ELEMENTS // (block_q * block_k))


def _listed_pairs(table: masks.BlockTable, chunk: int):
  """The table's listed pairs in row-major order, padded to a multiple of ``chunk``.

  Returns (row [P], rank [P], key_block [P], count, rank_of_row [R]): row r = (b H + h) nq + i
  names query block i of head h in batch b; ``rank`` numbers only the rows that list a block
  (consecutively, so ``chunk`` consecutive pairs span at most ``chunk`` consecutive ranks however
  many empty rows lie between them), ``rank_of_row`` is -1 on empty rows; only the first
  ``count`` (a traced scalar) entries are real.
  """
  m = table.max_blocks
  cnt = table.kv_cnt.reshape(-1)
  listed = (jnp.arange(m) < cnt[:, None]).reshape(-1)
  total = -(-listed.shape[0] // chunk) * chunk
  (slot,) = jnp.nonzero(listed, size=total, fill_value=0)
  nonempty = cnt > 0
  rank_of_row = jnp.where(nonempty, jnp.cumsum(nonempty) - 1, -1).astype(jnp.int32)
  row = slot // m
  return (row, rank_of_row[row], table.kv_idx.reshape(-1)[slot], jnp.sum(listed, dtype=jnp.int32),
          rank_of_row)


def _by_row(x_rank, rank_of_row, fill):
  """Per-rank accumulators [R, ...] back to per-row ones, ``fill`` on rows that list nothing."""
  got = x_rank[jnp.maximum(rank_of_row, 0)]
  return jnp.where((rank_of_row >= 0).reshape((-1,) + (1,) * (got.ndim - 1)), got, fill)


def _window(x, start, width):
  return jax.lax.dynamic_slice_in_dim(x, start, width, axis=0)


def _put(x, part, start):
  return jax.lax.dynamic_update_slice_in_dim(x, part, start, axis=0)


def blocks_attention(q, k, v, table: masks.BlockTable, *, causal, scale, window, sinks,
                     softcap, segment_ids=None, pairs_per_step=None):
  """Attention over the table's listed key blocks only; q [B, T, H, D], k/v [B, S, Hkv, D].

  The listed (query block, key block) pairs are flattened in row-major order and a loop with a
  traced trip count walks them ``pairs_per_step`` at a time, so unused table slots cost nothing
  (a causal table runs half the blocks a dense walk of its slots would). A step's pairs belong
  to at most ``pairs_per_step`` consecutive query blocks, so the online-softmax merge (a
  scatter by query block) touches only that window of the running (acc, max, sum). The gradient
  is a hand-written flash backward (``jax.custom_vjp``) over the same pairs, so memory stays
  O(T D) plus one step's tiles in both directions.

  The table must have full [B, H, nq, max_blocks] leading dims. ``segment_ids`` int [B, S]
  (packed rows) hide pairs of different segments inside the listed blocks. Returns
  (o, lse [B, H, T]); both are differentiable in q, k, v. ``pairs_per_step`` defaults to
  :func:`pairs_per_step_for` the block sizes, capped at the table's slot count.
  """
  b, t, h, d = q.shape
  s, hkv = k.shape[1], k.shape[2]
  bq, bk = table.block_q, table.block_k
  nq, nk = masks.num_blocks(t, bq), masks.num_blocks(s, bk)
  n_rows = b * h * nq
  if pairs_per_step is None:
    pairs_per_step = min(pairs_per_step_for(bq, bk), n_rows * table.max_blocks)
  if isinstance(pairs_per_step, bool) or not isinstance(pairs_per_step, int) or pairs_per_step < 1:
    raise ValueError(f"block-sparse attention: pairs_per_step must be a positive int or None, "
                     f"got {pairs_per_step!r}")
  width = min(pairs_per_step, n_rows)
  row_P, rank_P, kblk_P, count, rank_of_row = _listed_pairs(table, pairs_per_step)
  # Key rows of the flattened [B * Hkv * nk, bk, D] blocks each pair reads (GQA: h // G).
  bh_P = row_P // nq
  kv_row_P = ((bh_P // h) * hkv + (bh_P % h) // (h // hkv)) * nk + kblk_P
  q_off = s - t

  def flat_q(x):  # [B, T, H, D'] -> [B * H * nq, bq, D']
    return _to_blocks(x, bq).reshape(n_rows, bq, x.shape[-1])

  def flat_kv(x):
    return _to_blocks(x, bk).reshape(b * hkv * nk, bk, x.shape[-1])

  def flat_stat(x_BHT, fill):  # [B, H, T] -> [B * H * nq, bq]
    x = jnp.pad(x_BHT, ((0, 0), (0, 0), (0, nq * bq - t)), constant_values=fill)
    return x.reshape(n_rows, bq)

  def tiles(c, q_R, k_R, v_R, pairs, segment_ids):
    """Step c's pairs: their rows, window start, local rows, q/k/v tiles, logits, visibility."""
    row_P, rank_P, kblk_P, kv_row_P, count, _ = pairs
    sl = lambda x: jax.lax.dynamic_slice_in_dim(x, c * pairs_per_step, pairs_per_step)
    row, rank, kblk, kv_row = sl(row_P), sl(rank_P), sl(kblk_P), sl(kv_row_P)
    live = c * pairs_per_step + jnp.arange(pairs_per_step) < count
    # The running statistics are indexed by rank (rows that list a block), so a step's window
    # of ``width`` ranks holds all of its pairs' rows.
    start = jnp.clip(rank[0], 0, n_rows - width)
    local = jnp.where(live, rank - start, 0)
    q_c, k_c, v_c = q_R[row], k_R[kv_row], v_R[kv_row]
    x = jnp.einsum("cqd,ckd->cqk", q_c, k_c, preferred_element_type=jnp.float32)
    x = cap_logits(x, softcap)
    q_lo = (row % nq) * bq
    q_pos = q_lo[:, None] + jnp.arange(bq) + q_off  # [C, bq]
    k_pos = kblk[:, None] * bk + jnp.arange(bk)  # [C, bk]
    seg = {}
    if segment_ids is not None:
      b_c = row // (h * nq)
      seg = dict(q_segment=_segments_at(segment_ids[b_c], q_pos)[..., None],
                 k_segment=_segments_at(segment_ids[b_c], k_pos)[:, None, :])
    ok = visible_pairs(q_pos[..., None], k_pos[:, None, :], causal=causal, window=window,
                       sinks=sinks, **seg)
    ok &= ((q_pos - q_off < t) & live[:, None])[..., None] & (k_pos < s)[:, None, :]
    return start, local, row, kv_row, (q_c, k_c, v_c), x, ok

  def scaled(q):  # the scale folded into q once instead of into every logit tile
    return (q.astype(jnp.float32) * scale).astype(q.dtype)

  # The pair list and segment ids are explicit (integer, non-differentiable) arguments of the
  # custom_vjp function: a table computed under jit (a traced selection) must not be closed over.
  def forward(q, k, v, pairs, segment_ids):
    q_R, k_R, v_R = flat_q(scaled(q)), flat_kv(k), flat_kv(v)
    steps = (pairs[4] + pairs_per_step - 1) // pairs_per_step

    def step(c, carry):
      acc, mx, tot = carry
      start, local, _, _, (_, _, v_c), x, ok = tiles(c, q_R, k_R, v_R, pairs, segment_ids)
      x = jnp.where(ok, x, -jnp.inf)
      acc_w, mx_w, tot_w = (_window(a, start, width) for a in carry)
      mx_new = mx_w.at[local].max(jnp.max(x, axis=-1))
      mx_safe = jnp.where(jnp.isfinite(mx_new), mx_new, 0.0)
      alpha = jnp.exp(mx_w - mx_safe)
      p = jnp.exp(x - mx_safe[local][..., None])
      pv = jnp.einsum("cqk,ckd->cqd", p.astype(v_c.dtype), v_c,
                      preferred_element_type=jnp.float32)
      acc_w = alpha[..., None] * acc_w + jnp.zeros_like(acc_w).at[local].add(pv)
      tot_w = alpha * tot_w + jnp.zeros_like(tot_w).at[local].add(jnp.sum(p, axis=-1))
      return _put(acc, acc_w, start), _put(mx, mx_new, start), _put(tot, tot_w, start)

    init = (jnp.zeros((n_rows, bq, d), jnp.float32), jnp.full((n_rows, bq), -jnp.inf),
            jnp.zeros((n_rows, bq), jnp.float32))
    acc, mx, tot = jax.lax.fori_loop(0, steps, step, init)
    rank_of_row = pairs[5]
    acc, mx, tot = (_by_row(acc, rank_of_row, 0.0), _by_row(mx, rank_of_row, -jnp.inf),
                    _by_row(tot, rank_of_row, 0.0))
    return _finish(acc.reshape(b, h, nq, bq, d), mx.reshape(b, h, nq, bq),
                   tot.reshape(b, h, nq, bq), t, q.dtype)

  @jax.custom_vjp
  def attend(q, k, v, pairs, segment_ids):
    return forward(q, k, v, pairs, segment_ids)

  def attend_fwd(q, k, v, pairs, segment_ids):
    o, lse = forward(q, k, v, pairs, segment_ids)
    return (o, lse), (q, k, v, o, lse, pairs, segment_ids)

  def attend_bwd(res, cts):
    q, k, v, o, lse, pairs, segment_ids = res
    steps = (pairs[4] + pairs_per_step - 1) // pairs_per_step
    do, dlse = cts
    f32 = lambda x: x.astype(jnp.float32)
    q_R, k_R, v_R = flat_q(f32(q) * scale), flat_kv(f32(k)), flat_kv(f32(v))
    do_R = flat_q(f32(do))
    # Row term of the softmax gradient, minus the lse cotangent (d lse / d logit = p).
    delta = jnp.einsum("bthd,bthd->bht", f32(do), f32(o)) - f32(dlse)
    lse_R, delta_R = flat_stat(lse, -jnp.inf), flat_stat(delta, 0.0)

    def step(c, carry):
      dq, dk, dv = carry
      start, local, row, kv_row, (q_c, k_c, v_c), x, ok = tiles(c, q_R, k_R, v_R, pairs,
                                                                segment_ids)
      p = jnp.where(ok, jnp.exp(x - lse_R[row][..., None]), 0.0)
      do_c = do_R[row]
      dv = dv.at[kv_row].add(jnp.einsum("cqk,cqd->ckd", p, do_c))
      dp = jnp.einsum("cqd,ckd->cqk", do_c, v_c)
      ds = p * (dp - delta_R[row][..., None])
      if softcap is not None:
        ds = ds * (1.0 - jnp.square(x / softcap))
      dq_w = _window(dq, start, width).at[local].add(jnp.einsum("cqk,ckd->cqd", ds, k_c))
      dk = dk.at[kv_row].add(jnp.einsum("cqk,cqd->ckd", ds, q_c))
      return _put(dq, dq_w, start), dk, dv

    init = (jnp.zeros_like(q_R), jnp.zeros_like(k_R), jnp.zeros_like(v_R))
    dq, dk, dv = jax.lax.fori_loop(0, steps, step, init)
    dq = _by_row(dq, pairs[5], 0.0) * scale  # d logits / d q = scale k; dk already takes it from the scaled q

    def unblock(x_R, n, length, block, like):
      x = x_R.reshape(b, n, -1, block, d).transpose(0, 2, 3, 1, 4).reshape(b, -1, n, d)
      return x[:, :length].astype(like.dtype)

    return (unblock(dq, h, t, bq, q), unblock(dk, hkv, s, bk, k), unblock(dv, hkv, s, bk, v),
            None, None)

  attend.defvjp(attend_fwd, attend_bwd)
  return attend(q, k, v, (row_P, rank_P, kblk_P, kv_row_P, count, rank_of_row), segment_ids)


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
