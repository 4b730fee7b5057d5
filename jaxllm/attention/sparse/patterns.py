"""Static and score-driven block patterns: which key blocks each query block lists.

These choose blocks; ``pallas_kernels.block_sparse.masks.BlockTable`` carries the choice and the
kernels run it (the split of jax's splash attention: mask, mask info, kernel). Positions follow
``jaxllm.attention.masks``: queries are the last T of the S keys.

* :func:`causal_table`: every block a query block can see (dense attention as a table);
* :func:`sliding_window_table`: the blocks a window of keys touches, optionally plus sinks;
* :func:`sink_window_table`: sink + window (StreamingLLM's attention sinks, MInference's A-shape);
* :func:`topk_table`: the k best-scoring visible blocks per query block;
* :func:`vertical_slash`: MInference's columns and diagonals as blocks plus leftover columns.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from pallas_kernels.block_sparse.masks import (BlockTable, VerticalSlash, check_block_sizes,
                                               compact, from_block_mask, num_blocks,
                                               query_block_positions)


def _interval_table(lo, hi, sink_end, *, seq_k, block_q, block_k, batch, heads) -> BlockTable:
  """Table of key intervals per query block: sinks [0, sink_end) and the band [lo, hi].

  All arguments are numpy int arrays [nq] of key positions (``hi < lo`` means an empty band).
  """
  nk = num_blocks(seq_k, block_k)
  lo = np.clip(lo, 0, None)
  hi = np.clip(hi, None, seq_k - 1)
  sink_end = np.clip(sink_end, 0, seq_k)
  n_sink = np.where(sink_end > 0, (sink_end - 1) // block_k + 1, 0)
  band_lo = np.maximum(lo // block_k, n_sink)
  band_hi = np.where(hi >= lo, hi // block_k, -1)
  n_band = np.clip(band_hi - band_lo + 1, 0, None)
  cnt = (n_sink + n_band).astype(np.int32)
  max_blocks = max(int(cnt.max(initial=0)), 1)
  slot = np.arange(max_blocks)[None, :]
  idx = np.where(slot < n_sink[:, None], slot, band_lo[:, None] + slot - n_sink[:, None])
  last = np.where(cnt > 0, np.take_along_axis(idx, np.maximum(cnt - 1, 0)[:, None], 1)[:, 0], 0)
  idx = np.where(slot < cnt[:, None], idx, last[:, None])
  idx = np.clip(idx, 0, nk - 1).astype(np.int32)
  shape = (batch, heads) + idx.shape
  return BlockTable(jnp.broadcast_to(jnp.asarray(idx), shape),
                    jnp.broadcast_to(jnp.asarray(cnt), shape[:-1]), block_q, block_k)


def _check_common(seq_q, seq_k, block_q, block_k, batch, heads):
  check_block_sizes(block_q, block_k)
  for name, value in (("seq_q", seq_q), ("seq_k", seq_k), ("batch", batch), ("heads", heads)):
    if not isinstance(value, (int, np.integer)) or value < 1:
      raise ValueError(f"block-sparse pattern: {name} must be a positive int, got {value!r}")


def causal_table(seq_q: int, seq_k: int, *, block_q: int, block_k: int, causal: bool = True,
                 batch: int = 1, heads: int = 1) -> BlockTable:
  """Every key block a query block can see: block-causal, or all blocks when not causal."""
  _check_common(seq_q, seq_k, block_q, block_k, batch, heads)
  first, last = query_block_positions(seq_q, seq_k, block_q)
  hi = last if causal else np.full_like(last, seq_k - 1)
  return _interval_table(np.zeros_like(first), hi, np.zeros_like(first), seq_k=seq_k,
                         block_q=block_q, block_k=block_k, batch=batch, heads=heads)


def sliding_window_table(seq_q: int, seq_k: int, *, window: int, block_q: int, block_k: int,
                         causal: bool = True, sinks: int = 0, batch: int = 1,
                         heads: int = 1) -> BlockTable:
  """Key blocks touched by a window of ``window`` keys (q - w < k <= q causal, |q - k| < w not),
  plus the blocks holding the first ``sinks`` keys."""
  _check_common(seq_q, seq_k, block_q, block_k, batch, heads)
  if not isinstance(window, (int, np.integer)) or window < 1:
    raise ValueError(f"block-sparse pattern: window must be a positive int, got {window!r}")
  if not isinstance(sinks, (int, np.integer)) or sinks < 0:
    raise ValueError(f"block-sparse pattern: sinks must be a non-negative int, got {sinks!r}")
  first, last = query_block_positions(seq_q, seq_k, block_q)
  lo = first - window + 1
  hi = last if causal else last + window - 1
  sink_end = np.minimum(sinks, last + 1) if causal else np.full_like(first, sinks)
  return _interval_table(lo, hi, sink_end, seq_k=seq_k, block_q=block_q, block_k=block_k,
                         batch=batch, heads=heads)


def sink_window_table(seq_q: int, seq_k: int, *, sinks: int, window: int, block_q: int,
                      block_k: int, causal: bool = True, batch: int = 1,
                      heads: int = 1) -> BlockTable:
  """Sink + window (StreamingLLM / A-shape): the first ``sinks`` keys and the last ``window``."""
  return sliding_window_table(seq_q, seq_k, window=window, sinks=sinks, block_q=block_q,
                              block_k=block_k, causal=causal, batch=batch, heads=heads)


def visible_blocks(seq_q: int, seq_k: int, *, block_q: int, block_k: int, causal: bool):
  """Bool [nq, nk]: key blocks holding at least one key some query of the block may see."""
  _, last = query_block_positions(seq_q, seq_k, block_q)
  starts = np.arange(num_blocks(seq_k, block_k)) * block_k
  if not causal:
    return jnp.ones((last.shape[0], starts.shape[0]), bool)
  return jnp.asarray(starts[None, :] <= last[:, None])


@functools.partial(jax.jit, static_argnames=("k", "seq_q", "seq_k", "block_q", "block_k",
                                             "causal"))
def topk_table(scores, k: int, *, seq_q: int, seq_k: int, block_q: int, block_k: int,
               causal: bool = True) -> BlockTable:
  """The ``k`` highest-scoring key blocks per query block, scores float [B, N, nq, nk].

  Blocks no query of the block can see (causal) and blocks scored -inf are never selected, so a
  row may hold fewer than ``k`` blocks.
  """
  check_block_sizes(block_q, block_k)
  nq, nk = num_blocks(seq_q, block_q), num_blocks(seq_k, block_k)
  if scores.ndim != 4 or scores.shape[-2:] != (nq, nk):
    raise ValueError(f"topk_table: scores must be [B, N, {nq}, {nk}], got {scores.shape}")
  if not isinstance(k, (int, np.integer)) or not 1 <= k <= nk:
    raise ValueError(f"topk_table: k must be an int in [1, {nk}], got {k!r}")
  ok = visible_blocks(seq_q, seq_k, block_q=block_q, block_k=block_k, causal=causal)
  scores = jnp.where(ok, scores.astype(jnp.float32), -jnp.inf)
  top, idx = jax.lax.top_k(scores, k)
  idx, cnt = compact(top > -jnp.inf, idx.astype(jnp.int32), k)
  return BlockTable(idx, cnt, block_q, block_k)


@functools.partial(jax.jit, static_argnames=("seq_q", "seq_k", "block_q", "block_k", "causal"))
def vertical_slash(columns, diagonals, *, seq_q: int, seq_k: int, block_q: int, block_k: int,
                   causal: bool = True) -> VerticalSlash:
  """MInference's vertical-slash pattern as key blocks plus leftover columns.

  Args:
    columns: int [B, N, n_cols] key positions every query attends (duplicates are dropped).
    diagonals: int [B, N, n_diag] slash offsets d: query position p attends key p - d.
    seq_q, seq_k: T and S.
    block_q, block_k: block sizes of the table.
    causal: drop columns after a query block's last position.

  Returns:
    Each query block lists the key blocks its diagonals cross; columns inside one of those blocks
    are covered, the rest are returned per query block as ``col_idx`` / ``col_cnt``.
  """
  check_block_sizes(block_q, block_k)
  if columns.ndim != 3 or diagonals.ndim != 3 or columns.shape[:2] != diagonals.shape[:2]:
    raise ValueError("vertical_slash: columns [B, N, n_cols] and diagonals [B, N, n_diag] must "
                     f"share B, N; got {columns.shape} and {diagonals.shape}")
  b, h, n_diag = diagonals.shape
  nq, nk = num_blocks(seq_q, block_q), num_blocks(seq_k, block_k)
  first, last = (jnp.asarray(x) for x in query_block_positions(seq_q, seq_k, block_q))
  d = diagonals.astype(jnp.int32)[:, :, None, :]  # [B, N, 1, n_diag]
  lo = first[:, None] - d  # key span of diagonal d over query block i: [lo, hi]
  hi = last[:, None] - d
  hits = (hi >= 0) & (lo <= seq_k - 1)
  lo_blk = jnp.clip(lo, 0, seq_k - 1) // block_k
  hi_blk = jnp.clip(hi, 0, seq_k - 1) // block_k
  # Difference array over key blocks: +1 where a diagonal's span starts, -1 after it ends.
  bi, hj, qi = jnp.meshgrid(jnp.arange(b), jnp.arange(h), jnp.arange(nq), indexing="ij")
  bi, hj, qi = (x[..., None] for x in (bi, hj, qi))
  diff = jnp.zeros((b, h, nq, nk + 1), jnp.int32)
  diff = diff.at[bi, hj, qi, lo_blk].add(hits.astype(jnp.int32))
  diff = diff.at[bi, hj, qi, hi_blk + 1].add(-hits.astype(jnp.int32))
  blocks = jnp.cumsum(diff, axis=-1)[..., :nk] > 0
  span = num_blocks(block_q - 1, block_k) + 1  # key blocks one diagonal can cross
  table = from_block_mask(blocks, block_q=block_q, block_k=block_k,
                          max_blocks=min(nk, n_diag * span))

  cols = jnp.sort(columns.astype(jnp.int32), axis=-1)
  fresh = jnp.concatenate([jnp.ones_like(cols[..., :1], bool), cols[..., 1:] != cols[..., :-1]], -1)
  fresh &= (cols >= 0) & (cols < seq_k)
  cols_q = jnp.broadcast_to(cols[:, :, None, :], (b, h, nq, cols.shape[-1]))
  covered = jnp.take_along_axis(blocks, jnp.clip(cols_q // block_k, 0, nk - 1), axis=-1)
  keep = fresh[:, :, None, :] & ~covered
  if causal:
    keep &= cols_q <= last[:, None]
  col_idx, col_cnt = compact(keep, cols_q, cols.shape[-1])
  return VerticalSlash(table, col_idx, col_cnt)
