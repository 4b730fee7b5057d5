"""Shared pieces of the prefill selection methods: option checks, block geometry, tables, running.

Every method turns q [B, T, H, D] and k [B, S, Hkv, D] into a boolean block mask (or a mask plus
key columns) per query head and hands it to ``pallas_kernels.block_sparse``. Queries are the last
T of the S positions (chunked prefill onto a cache), so query row t sits at key position
``t + S - T``; a query block "sees" a key block when the block's first key is not after the query
block's last position.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from pallas_kernels.block_sparse.masks import BlockTable, VerticalSlash, from_block_mask
from pallas_kernels.block_sparse.api import block_sparse_attention

IMPLS = ("xla", "pallas", "auto")


# ----------------------------------------------------------------------------- option checks


def check_int(method: str, name: str, value, *, low: int = 1, allow_none: bool = False):
  if value is None and allow_none:
    return
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
    extra = " or None" if allow_none else ""
    raise ValueError(f"{method}: {name} must be an int >= {low}{extra}, got {value!r}")


def check_float(method: str, name: str, value, *, low: float, high: float,
                low_open: bool = False):
  ok = isinstance(value, (int, float, np.floating)) and not isinstance(value, bool)
  ok = ok and (value > low if low_open else value >= low) and value <= high
  if not ok:
    bracket = "(" if low_open else "["
    raise ValueError(f"{method}: {name} must be a number in {bracket}{low}, {high}], got {value!r}")


def check_choice(method: str, name: str, value, allowed):
  if value not in allowed:
    raise ValueError(f"{method}: {name} must be one of {list(allowed)}, got {value!r}")


def check_inputs(method: str, q, k, *, causal: bool = True):
  """q [B, T, H, D], k [B, S, Hkv, D], Hkv dividing H, T <= S; causal prefill only."""
  if q.ndim != 4 or k.ndim != 4 or q.shape[0] != k.shape[0] or q.shape[3] != k.shape[3]:
    raise ValueError(f"{method}: need q [B, T, H, D] and k [B, S, Hkv, D]; got q {q.shape}, "
                     f"k {k.shape}")
  if k.shape[2] == 0 or q.shape[2] % k.shape[2]:
    raise ValueError(f"{method}: query heads H={q.shape[2]} must be a multiple of key heads "
                     f"Hkv={k.shape[2]}")
  if q.shape[1] > k.shape[1]:
    raise ValueError(f"{method}: queries are the last T of the S keys, so T <= S; got T="
                     f"{q.shape[1]}, S={k.shape[1]}")
  if causal is not True:
    raise ValueError(f"{method}: a causal prefill method; causal must be True, got {causal!r}")


# ----------------------------------------------------------------------------- geometry


def num_blocks(length: int, block: int) -> int:
  return -(-length // block)


def query_block_last(t: int, s: int, block_q: int) -> np.ndarray:
  """Key position of each query block's last real row, numpy int [nq]."""
  nq = num_blocks(t, block_q)
  return np.minimum((np.arange(nq) + 1) * block_q, t) - 1 + (s - t)


def query_block_first(t: int, s: int, block_q: int) -> np.ndarray:
  return np.arange(num_blocks(t, block_q)) * block_q + (s - t)


def visible_blocks(t: int, s: int, block_q: int, block_k: int) -> np.ndarray:
  """Bool [nq, nk]: key blocks whose first key some query of the block may see (causal)."""
  starts = np.arange(num_blocks(s, block_k)) * block_k
  return starts[None, :] <= query_block_last(t, s, block_q)[:, None]


def expand_heads(k, h: int):
  """k [B, S, Hkv, D] -> [B, S, H, D]: query head j reads key head j // (H / Hkv)."""
  return jnp.repeat(k, h // k.shape[2], axis=2)


def block_pool(x, block: int, *, divide_by_block: bool = False):
  """Mean over consecutive ``block`` rows of x [B, L, N, D] -> float32 [B, N, ceil(L/block), D].

  The last partial block is averaged over its real rows, or over ``block`` rows (zero padding
  included) when ``divide_by_block``.
  """
  b, length, n, d = x.shape
  nb = num_blocks(length, block)
  xp = jnp.pad(x.astype(jnp.float32), ((0, 0), (0, nb * block - length), (0, 0), (0, 0)))
  sums = xp.reshape(b, nb, block, n, d).sum(axis=2)
  if divide_by_block:
    counts = jnp.full((nb,), float(block))
  else:
    counts = jnp.asarray(np.minimum((np.arange(nb) + 1) * block, length) - np.arange(nb) * block,
                         jnp.float32)
  return jnp.swapaxes(sums / counts[None, :, None, None], 1, 2)


def last_query_probs(q, k, n_last: int, *, scale: float):
  """Softmax of the last ``n_last`` queries against all keys, causal: float32 [B, H, n, S]."""
  t, s, h = q.shape[1], k.shape[1], q.shape[2]
  n_last = min(n_last, t)
  q_last = q[:, t - n_last:].astype(jnp.float32)
  logits = jnp.einsum("bnhd,bshd->bhns", q_last, expand_heads(k, h).astype(jnp.float32)) * scale
  q_pos = jnp.arange(s - n_last, s)
  ok = jnp.arange(s)[None, :] <= q_pos[:, None]
  return jax.nn.softmax(jnp.where(ok, logits, -jnp.inf), axis=-1)


def diagonal_sums(p, s: int):
  """Sums of p [B, H, n, S] (rows = the last n positions) along each slash offset d = q - k.

  Returns float32 [B, H, S] indexed by d in [0, S): the mass of key ``pos - d`` over the rows.
  """
  n = p.shape[2]
  q_pos = np.arange(s - n, s)
  d = q_pos[:, None] - np.arange(s)[None, :]  # [n, S]
  flat = jnp.where(jnp.asarray(d >= 0), p, 0.0)
  seg = jnp.asarray(np.clip(d, 0, s - 1).reshape(-1))
  out = jax.ops.segment_sum(jnp.moveaxis(flat.reshape(p.shape[:2] + (-1,)), -1, 0), seg,
                            num_segments=s)
  return jnp.moveaxis(out, 0, -1)


# ----------------------------------------------------------------------------- tables


def _concrete(x) -> bool:
  return not isinstance(x, jax.core.Tracer)


def table_from_mask(mask, *, block_q: int, block_k: int) -> BlockTable:
  """BlockTable of a bool [B, H, nq, nk] mask; the width is the largest row when the mask is
  concrete (the gather path walks every slot), else nk."""
  width = None
  if _concrete(mask):
    width = max(1, int(jnp.max(jnp.sum(mask, axis=-1))))
  return from_block_mask(mask, block_q=block_q, block_k=block_k, max_blocks=width)


def compact(keep, values, width: int | None = None):
  """The ``values`` where ``keep`` is True (both [..., n]), ascending, as (idx, cnt).

  Entries past the count repeat the last valid one (0 when none), the table convention. The
  width is the largest count when ``keep`` is concrete, else n.
  """
  n = keep.shape[-1]
  cnt = jnp.sum(keep, axis=-1).astype(jnp.int32)
  if width is None:
    width = max(1, int(jnp.max(cnt))) if _concrete(keep) else n
  big = jnp.iinfo(jnp.int32).max
  values = jnp.broadcast_to(values, keep.shape).astype(jnp.int32)
  ordered = jnp.sort(jnp.where(keep, values, big), axis=-1)[..., :width]
  cnt = jnp.minimum(cnt, width)
  last = jnp.take_along_axis(ordered, jnp.maximum(cnt - 1, 0)[..., None], axis=-1)
  last = jnp.where(cnt[..., None] > 0, last, 0)
  idx = jnp.where(jnp.arange(width) < cnt[..., None], ordered, last)
  return idx.astype(jnp.int32), cnt


def with_columns(block_mask, cols, cols_ok, *, block_q: int, block_k: int) -> VerticalSlash:
  """Blocks (bool [B, H, nq, nk]) plus key columns ``cols`` [B, H, nq, n] (valid where
  ``cols_ok``); columns inside a listed block are dropped, being covered already."""
  nk = block_mask.shape[-1]
  covered = jnp.take_along_axis(block_mask, jnp.clip(cols // block_k, 0, nk - 1), axis=-1)
  col_idx, col_cnt = compact(cols_ok & ~covered, cols)
  return VerticalSlash(table_from_mask(block_mask, block_q=block_q, block_k=block_k),
                       col_idx, col_cnt)


# ----------------------------------------------------------------------------- running


def _backend_impl(impl: str, table: BlockTable) -> tuple[str, bool]:
  """``impl`` -> (block-sparse op impl, interpret): ``pallas`` is interpreted off GPU; ``auto``
  takes the GPU kernel when its tiles fit (powers of two >= 16), else the gather path."""
  on_gpu = jax.default_backend() == "gpu"
  if impl == "auto":
    fits = all(b >= 16 and b & (b - 1) == 0 for b in (table.block_q, table.block_k))
    return ("pallas", False) if on_gpu and fits else ("xla", False)
  return impl, impl == "pallas" and not on_gpu


def run(method: str, q, k, v, mask, *, impl: str, scale=None, return_lse: bool = False):
  """Runs a selection (BlockTable or VerticalSlash) with the block-sparse op."""
  check_choice(method, "impl", impl, IMPLS)
  table = mask.table if isinstance(mask, VerticalSlash) else mask
  op_impl, interpret = _backend_impl(impl, table)
  scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
  return _jit_op(q, k, v, mask, scale=scale, impl=op_impl, interpret=interpret,
                 return_lse=return_lse)


@functools.partial(jax.jit, static_argnames=("scale", "impl", "interpret", "return_lse"))
def _jit_op(q, k, v, mask, *, scale, impl, interpret, return_lse):
  return block_sparse_attention(q, k, v, mask, causal=True, scale=scale, impl=impl,
                                interpret=interpret, return_lse=return_lse)


def dense_table(q, k, *, block_q: int, block_k: int) -> BlockTable:
  """Every visible key block for every query head (the dense fallback some methods take)."""
  b, t, h = q.shape[:3]
  vis = jnp.broadcast_to(jnp.asarray(visible_blocks(t, k.shape[1], block_q, block_k)),
                         (b, h) + (num_blocks(t, block_q), num_blocks(k.shape[1], block_k)))
  return table_from_mask(vis, block_q=block_q, block_k=block_k)
