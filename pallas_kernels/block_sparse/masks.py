"""Block tables, the contract between choosing key blocks and running the kernels.

A :class:`BlockTable` lists, per (batch, head, query block), the key blocks it attends:

* ``kv_idx`` int32 [B, N, nq, max_blocks]: key-block indices in ascending order;
* ``kv_cnt`` int32 [B, N, nq]: how many leading entries of ``kv_idx`` are valid (0 allowed: the
  query block attends nothing and outputs 0).

N is H (one selection per query head), K (one selection shared by each GQA group of H / K query
heads, query head h reading row h // (H / K)) or 1 (shared by all heads); B may be 1 too. Entries
past the count repeat the last valid index (0 when the count is 0), so a pipelined kernel re-uses
the resident block instead of fetching a new one. ``nq = ceil(T / block_q)`` and key blocks
number ``ceil(S / block_k)``. Inside a listed block the kernels still apply the element rule of
``jaxllm.attention.masks`` (causal, window, sinks), and skip it on blocks the rule keeps whole
(:func:`full_blocks`). Queries are the last T of the S key positions.

The dK/dV pass walks the table the other way (query blocks per key block). :func:`with_transpose`
builds that once and stores it in the table (``q_idx`` [B, N, nk, nq], ``q_cnt`` [B, N, nk]), so
layers sharing a table share it; otherwise each call builds it.

:class:`VerticalSlash` adds MInference's leftover columns: per query block, single key positions
that are attended although their key block is not listed.

Which blocks to list is the business of the pattern builders and methods in
``jaxllm.attention.sparse``; this module only holds the format and its conversions.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxllm.attention import masks as rules


@functools.partial(jax.tree_util.register_dataclass,
                   data_fields=["kv_idx", "kv_cnt", "q_idx", "q_cnt"],
                   meta_fields=["block_q", "block_k"])
@dataclasses.dataclass(frozen=True)
class BlockTable:
  """Key blocks per (batch, head, query block); block sizes are static pytree metadata."""
  kv_idx: jax.Array  # int32 [B, N, nq, max_blocks]
  kv_cnt: jax.Array  # int32 [B, N, nq]
  block_q: int
  block_k: int
  q_idx: jax.Array | None = None  # int32 [B, N, nk, nq]: the transposed table, or None
  q_cnt: jax.Array | None = None  # int32 [B, N, nk]

  @property
  def max_blocks(self) -> int:
    return self.kv_idx.shape[-1]


@functools.partial(jax.tree_util.register_dataclass,
                   data_fields=["table", "col_idx", "col_cnt"], meta_fields=[])
@dataclasses.dataclass(frozen=True)
class VerticalSlash:
  """A block table plus, per query block, key columns outside its listed blocks."""
  table: BlockTable
  col_idx: jax.Array  # int32 [B, N, nq, max_cols], ascending key positions
  col_cnt: jax.Array  # int32 [B, N, nq]


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


def compact(valid, values, max_len: int):
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


@functools.partial(jax.jit, static_argnames=("block_q", "block_k", "max_blocks"))
def from_block_mask(mask, *, block_q: int, block_k: int,
                    max_blocks: int | None = None) -> BlockTable:
  """Table of an arbitrary block set, bool [B, N, nq, nk] (True = attend).

  ``max_blocks`` bounds the table width (default nk); rows with more blocks keep the lowest ones.
  """
  check_block_sizes(block_q, block_k)
  if mask.ndim != 4:
    raise ValueError(f"from_block_mask: mask must be [B, N, nq, nk], got shape {mask.shape}")
  nk = mask.shape[-1]
  max_blocks = nk if max_blocks is None else max_blocks
  if not isinstance(max_blocks, (int, np.integer)) or not 1 <= max_blocks <= nk:
    raise ValueError(f"from_block_mask: max_blocks must be an int in [1, {nk}], got {max_blocks!r}")
  idx, cnt = compact(mask, jnp.arange(nk, dtype=jnp.int32), max_blocks)
  return BlockTable(idx, cnt, block_q, block_k)


def scatter_rows(idx, valid, width: int):
  """Bool [..., width] with True at the valid entries of ``idx`` [..., n] (no one-hot blow-up)."""
  lead = idx.shape[:-1]
  flat = jnp.where(valid, idx, width).reshape(-1, idx.shape[-1])
  rows = jnp.arange(flat.shape[0])[:, None]
  out = jnp.zeros((flat.shape[0], width + 1), bool).at[rows, flat].set(True)
  return out[:, :width].reshape(lead + (width,))


@functools.partial(jax.jit, static_argnames=("num_k_blocks",))
def block_mask(table: BlockTable, num_k_blocks: int):
  """Bool [B, N, nq, nk]: the listed key blocks of each query block."""
  slot_ok = jnp.arange(table.max_blocks) < table.kv_cnt[..., None]
  return scatter_rows(table.kv_idx, slot_ok, num_k_blocks)


@functools.partial(jax.jit, static_argnames=("num_k_blocks",))
def transpose_table(table: BlockTable, num_k_blocks: int):
  """Query blocks per key block, (q_idx int32 [B, N, nk, nq], q_cnt int32 [B, N, nk]).

  Same conventions as the forward table (ascending, tail repeats the last valid entry); the
  backward pass walks it to accumulate dk and dv one key block at a time.
  """
  by_key = jnp.swapaxes(block_mask(table, num_k_blocks), -1, -2)
  nq = by_key.shape[-1]
  return compact(by_key, jnp.arange(nq, dtype=jnp.int32), nq)


def with_transpose(table: BlockTable, seq_k: int) -> BlockTable:
  """The table carrying its transpose, built once for every call (and layer) that shares it."""
  q_idx, q_cnt = transpose_table(table, num_blocks(seq_k, table.block_k))
  return dataclasses.replace(table, q_idx=q_idx, q_cnt=q_cnt)


def block_span(q_block, k_block, *, seq_q: int, seq_k: int, block_q: int, block_k: int):
  """Key-aligned (q_lo, q_hi, k_lo, k_hi) of a block, and whether it holds no padding."""
  offset = seq_k - seq_q
  q_lo = q_block * block_q + offset
  k_lo = k_block * block_k
  q_hi, k_hi = q_lo + block_q - 1, k_lo + block_k - 1
  inside = (q_hi < seq_k) & (k_hi < seq_k)
  return (q_lo, q_hi, k_lo, k_hi), inside


def block_is_full(q_block, k_block, *, seq_q, seq_k, block_q, block_k, causal, window, sinks):
  """True where the element rule keeps the whole (query block, key block) tile and it has no
  padded row or column, so a kernel may skip the mask. Scalars (in kernels) or index arrays."""
  span, inside = block_span(q_block, k_block, seq_q=seq_q, seq_k=seq_k, block_q=block_q,
                            block_k=block_k)
  return inside & rules.span_visible(*span, causal=causal, window=window, sinks=sinks)


@functools.partial(jax.jit, static_argnames=("seq_q", "seq_k", "causal", "window", "sinks"))
def full_blocks(table: BlockTable, seq_q: int, seq_k: int, *, causal: bool,
                window: int | None = None, sinks: int = 0):
  """Bool [B, N, nq, max_blocks]: listed blocks the element rule keeps whole (no mask needed);
  the others (and unused slots) are partially masked."""
  nq = table.kv_idx.shape[2]
  q_block = jnp.arange(nq, dtype=jnp.int32)[:, None]
  full = block_is_full(q_block, table.kv_idx, seq_q=seq_q, seq_k=seq_k, block_q=table.block_q,
                       block_k=table.block_k, causal=causal, window=window, sinks=sinks)
  return full & (jnp.arange(table.max_blocks) < table.kv_cnt[..., None])


@functools.partial(jax.jit, static_argnames=("seq_q", "seq_k", "causal"))
def dense_mask(mask: BlockTable | VerticalSlash, seq_q: int, seq_k: int, *, causal: bool):
  """Bool [B, N, T, S] of the positions a table lets each query see (test oracle)."""
  table = mask.table if isinstance(mask, VerticalSlash) else mask
  nk = num_blocks(seq_k, table.block_k)
  blocks = block_mask(table, nk)
  full = jnp.repeat(jnp.repeat(blocks, table.block_q, axis=2), table.block_k, axis=3)
  full = full[:, :, :seq_q, :seq_k]
  if isinstance(mask, VerticalSlash):
    slot_ok = jnp.arange(mask.col_idx.shape[-1]) < mask.col_cnt[..., None]
    cols = scatter_rows(mask.col_idx, slot_ok, seq_k)  # [B, N, nq, S]
    full |= jnp.repeat(cols, table.block_q, axis=2)[:, :, :seq_q]
  return full & rules.visible(*rules.positions(seq_q, seq_k), causal=causal)
