"""Block-sparse attention tables and the builders that produce them, in plain JAX.

A :class:`BlockTable` lists, per (batch, query head, query block), the key blocks it attends:

* ``kv_idx`` int32 [B, H, nq, max_blocks]: key-block indices in ascending order;
* ``kv_cnt`` int32 [B, H, nq]: how many leading entries of ``kv_idx`` are valid (0 allowed: the
  query block attends nothing and outputs 0).

Entries past the count repeat the last valid index (0 when the count is 0), so a pipelined kernel
re-uses the resident block instead of fetching a new one. ``nq = ceil(T / block_q)`` and key blocks
number ``ceil(S / block_k)``. H counts query heads. Inside a listed block the kernels still apply
causality element by element; queries are the last T of the S key positions (query row t sits at
position ``t + S - T``), the convention of ``jaxllm.attention.masks``.

:class:`VerticalSlash` adds MInference's leftover columns: per query block, single key positions
that are attended although their key block is not listed.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np


@functools.partial(jax.tree_util.register_dataclass, data_fields=["kv_idx", "kv_cnt"],
                   meta_fields=["block_q", "block_k"])
@dataclasses.dataclass(frozen=True)
class BlockTable:
  """Key blocks per (batch, query head, query block); block sizes are static pytree metadata."""
  kv_idx: jax.Array  # int32 [B, H, nq, max_blocks]
  kv_cnt: jax.Array  # int32 [B, H, nq]
  block_q: int
  block_k: int

  @property
  def max_blocks(self) -> int:
    return self.kv_idx.shape[-1]


@functools.partial(jax.tree_util.register_dataclass,
                   data_fields=["table", "col_idx", "col_cnt"], meta_fields=[])
@dataclasses.dataclass(frozen=True)
class VerticalSlash:
  """A block table plus, per query block, key columns outside its listed blocks."""
  table: BlockTable
  col_idx: jax.Array  # int32 [B, H, nq, max_cols], ascending key positions
  col_cnt: jax.Array  # int32 [B, H, nq]


def check_block_sizes(block_q, block_k) -> None:
  for name, value in (("block_q", block_q), ("block_k", block_k)):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
      raise ValueError(f"block-sparse attention: {name} must be a positive int, got {value!r}")


def num_blocks(length: int, block: int) -> int:
  return -(-length // block)


def query_block_positions(seq_q: int, seq_k: int, block_q: int):
  """First and last key-aligned position of each query block (numpy int64 [nq])."""
  nq = num_blocks(seq_q, block_q)
  first = np.arange(nq) * block_q
  last = np.minimum(first + block_q, seq_q) - 1
  offset = seq_k - seq_q
  return first + offset, last + offset


def _compact(valid, values, max_len: int):
  """Ascending valid ``values`` first, padded by repeating the last; returns (idx, count).

  Keeps the ``max_len`` smallest valid values when more are valid (count is clipped to match).
  """
  big = jnp.iinfo(jnp.int32).max
  ordered = jnp.sort(jnp.where(valid, values, big), axis=-1)[..., :max_len]
  cnt = jnp.minimum(jnp.sum(valid, axis=-1), max_len).astype(jnp.int32)
  last = jnp.take_along_axis(ordered, jnp.maximum(cnt - 1, 0)[..., None], axis=-1)
  last = jnp.where(cnt[..., None] > 0, last, 0)
  slot = jnp.arange(ordered.shape[-1])
  idx = jnp.where(slot < cnt[..., None], ordered, last)
  return idx.astype(jnp.int32), cnt


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
      raise ValueError(f"block-sparse mask: {name} must be a positive int, got {value!r}")


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
  plus the blocks holding the first ``sinks`` keys (sink + window, the StreamingLLM A-shape)."""
  _check_common(seq_q, seq_k, block_q, block_k, batch, heads)
  if not isinstance(window, (int, np.integer)) or window < 1:
    raise ValueError(f"block-sparse mask: window must be a positive int, got {window!r}")
  if not isinstance(sinks, (int, np.integer)) or sinks < 0:
    raise ValueError(f"block-sparse mask: sinks must be a non-negative int, got {sinks!r}")
  first, last = query_block_positions(seq_q, seq_k, block_q)
  lo = first - window + 1
  hi = last if causal else last + window - 1
  sink_end = np.minimum(sinks, last + 1) if causal else np.full_like(first, sinks)
  return _interval_table(lo, hi, sink_end, seq_k=seq_k, block_q=block_q, block_k=block_k,
                         batch=batch, heads=heads)


def streaming_table(seq_q: int, seq_k: int, *, sinks: int, window: int, block_q: int,
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


@functools.partial(jax.jit, static_argnames=("block_q", "block_k", "max_blocks"))
def from_block_mask(mask, *, block_q: int, block_k: int,
                    max_blocks: int | None = None) -> BlockTable:
  """Table of an arbitrary block set, bool [B, H, nq, nk] (True = attend).

  ``max_blocks`` bounds the table width (default nk); rows with more blocks keep the lowest ones.
  """
  check_block_sizes(block_q, block_k)
  if mask.ndim != 4:
    raise ValueError(f"from_block_mask: mask must be [B, H, nq, nk], got shape {mask.shape}")
  nk = mask.shape[-1]
  max_blocks = nk if max_blocks is None else max_blocks
  if not isinstance(max_blocks, (int, np.integer)) or not 1 <= max_blocks <= nk:
    raise ValueError(f"from_block_mask: max_blocks must be an int in [1, {nk}], got {max_blocks!r}")
  idx, cnt = _compact(mask, jnp.arange(nk, dtype=jnp.int32), max_blocks)
  return BlockTable(idx, cnt, block_q, block_k)


@functools.partial(jax.jit, static_argnames=("k", "seq_q", "seq_k", "block_q", "block_k",
                                             "causal"))
def topk_table(scores, k: int, *, seq_q: int, seq_k: int, block_q: int, block_k: int,
               causal: bool = True) -> BlockTable:
  """The ``k`` highest-scoring key blocks per query block, scores float [B, H, nq, nk].

  Blocks no query of the block can see (causal) and blocks scored -inf are never selected, so a
  row may hold fewer than ``k`` blocks.
  """
  check_block_sizes(block_q, block_k)
  nq, nk = num_blocks(seq_q, block_q), num_blocks(seq_k, block_k)
  if scores.ndim != 4 or scores.shape[-2:] != (nq, nk):
    raise ValueError(f"topk_table: scores must be [B, H, {nq}, {nk}], got {scores.shape}")
  if not isinstance(k, (int, np.integer)) or not 1 <= k <= nk:
    raise ValueError(f"topk_table: k must be an int in [1, {nk}], got {k!r}")
  ok = visible_blocks(seq_q, seq_k, block_q=block_q, block_k=block_k, causal=causal)
  scores = jnp.where(ok, scores.astype(jnp.float32), -jnp.inf)
  top, idx = jax.lax.top_k(scores, k)
  idx, cnt = _compact(top > -jnp.inf, idx.astype(jnp.int32), k)
  return BlockTable(idx, cnt, block_q, block_k)


@functools.partial(jax.jit, static_argnames=("seq_q", "seq_k", "block_q", "block_k", "causal"))
def vertical_slash(columns, diagonals, *, seq_q: int, seq_k: int, block_q: int, block_k: int,
                   causal: bool = True) -> VerticalSlash:
  """MInference's vertical-slash pattern as key blocks plus leftover columns.

  Args:
    columns: int [B, H, n_cols] key positions every query attends (duplicates are dropped).
    diagonals: int [B, H, n_diag] slash offsets d: query position p attends key p - d.
    seq_q, seq_k: T and S.
    block_q, block_k: block sizes of the table.
    causal: drop columns after a query block's last position.

  Returns:
    Each query block lists the key blocks its diagonals cross; columns inside one of those blocks
    are covered, the rest are returned per query block as ``col_idx`` / ``col_cnt``.
  """
  check_block_sizes(block_q, block_k)
  if columns.ndim != 3 or diagonals.ndim != 3 or columns.shape[:2] != diagonals.shape[:2]:
    raise ValueError("vertical_slash: columns [B, H, n_cols] and diagonals [B, H, n_diag] must "
                     f"share B, H; got {columns.shape} and {diagonals.shape}")
  b, h, n_diag = diagonals.shape
  nq, nk = num_blocks(seq_q, block_q), num_blocks(seq_k, block_k)
  first, last = (jnp.asarray(x) for x in query_block_positions(seq_q, seq_k, block_q))
  d = diagonals.astype(jnp.int32)[:, :, None, :]  # [B, H, 1, n_diag]
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
  col_idx, col_cnt = _compact(keep, cols_q, cols.shape[-1])
  return VerticalSlash(table, col_idx, col_cnt)


def _scatter_rows(idx, valid, width: int):
  """Bool [..., width] with True at the valid entries of ``idx`` [..., n] (no one-hot blow-up)."""
  lead = idx.shape[:-1]
  flat = jnp.where(valid, idx, width).reshape(-1, idx.shape[-1])
  rows = jnp.arange(flat.shape[0])[:, None]
  out = jnp.zeros((flat.shape[0], width + 1), bool).at[rows, flat].set(True)
  return out[:, :width].reshape(lead + (width,))


@functools.partial(jax.jit, static_argnames=("num_k_blocks",))
def block_mask(table: BlockTable, num_k_blocks: int):
  """Bool [B, H, nq, nk]: the listed key blocks of each query block."""
  slot_ok = jnp.arange(table.max_blocks) < table.kv_cnt[..., None]
  return _scatter_rows(table.kv_idx, slot_ok, num_k_blocks)


@functools.partial(jax.jit, static_argnames=("num_k_blocks",))
def transpose_table(table: BlockTable, num_k_blocks: int):
  """Query blocks per key block, (q_idx int32 [B, H, nk, nq], q_cnt int32 [B, H, nk]).

  Same conventions as the forward table (ascending, tail repeats the last valid entry); the
  backward pass walks it to accumulate dk and dv one key block at a time.
  """
  by_key = jnp.swapaxes(block_mask(table, num_k_blocks), -1, -2)
  nq = by_key.shape[-1]
  return _compact(by_key, jnp.arange(nq, dtype=jnp.int32), nq)


@functools.partial(jax.jit, static_argnames=("seq_q", "seq_k", "causal"))
def dense_mask(mask: BlockTable | VerticalSlash, seq_q: int, seq_k: int, *, causal: bool):
  """Bool [B, H, T, S] of the positions a table lets each query see (test oracle)."""
  table = mask.table if isinstance(mask, VerticalSlash) else mask
  nk = num_blocks(seq_k, table.block_k)
  blocks = block_mask(table, nk)
  full = jnp.repeat(jnp.repeat(blocks, table.block_q, axis=2), table.block_k, axis=3)
  full = full[:, :, :seq_q, :seq_k]
  if isinstance(mask, VerticalSlash):
    slot_ok = jnp.arange(mask.col_idx.shape[-1]) < mask.col_cnt[..., None]
    cols = _scatter_rows(mask.col_idx, slot_ok, seq_k)  # [B, H, nq, S]
    full |= jnp.repeat(cols, table.block_q, axis=2)[:, :, :seq_q]
  if causal:
    q_pos = jnp.arange(seq_q) + seq_k - seq_q
    full &= jnp.arange(seq_k)[None, :] <= q_pos[:, None]
  return full
