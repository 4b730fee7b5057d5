"""HiP attention (Lee et al. 2024): hierarchical top-k key-block selection by tree search.

Follows the public v1.1 code (DeepAuto-AI/hip-attention, ``hip_attn/v1_1/
attention2_draft_prefetch.py``, the ``hip_attention`` / ``masking_iteration_draft`` path; the code
is source-available only, so this is written from reading it, not copied). Defaults are v1.1
(``HiPAttentionArgs``): mask_k 512 tokens, block_q 64, block_k 2, query stride 2, sink 16, window
256, centre representative, half branching. Per query block, with n = its last position + 1:

* groups (``masking_iteration_draft_cuda_initialize``): the search covers the bsrc = ceil(max(n -
  window - sink, 0) / block_k) key blocks after the ceil(sink / block_k) sink blocks. When bsrc
  <= m = mask_k / block_k every one of them is selected without a search. Otherwise the m groups
  start at block min(a_j // step * step, bsrc) (offset by the sink blocks), a_j = trunc(fp32(bsrc)
  / fp32(m) * fp32(j)) computed in float32 as the kernel does, step = ceil(2^floor(log2 bsrc) / m)
  (the power-of-two alignment), and group j ends where group j + 1 starts (the last ends at
  bsrc rounded down to the step, so the blocks past it are not searched); groups may be empty;
* each round (``masking_iteration_draft_cuda_dup_and_score``, ``branch_method="half"``) every
  group splits into [lo, mid) and [mid, hi), mid = lo + size // 2; a half is scored by its centre
  block lo + size // 2 (``sample_method="center"``) as the max of q.k over the block's keys and
  the block's strided query rows (``..._calc_score``: rows stride - 1, 2 stride - 1, ... of the
  block; a key counts for a row only if it lies at least ``window`` positions before it); the m
  best halves are kept, a non-empty half always above an empty one (the sigmoid "probs" of
  ``..._partial_softmax`` give empty groups -1); a query block runs ceil(log2(its largest initial
  group)) rounds (the kernel halves that size until it is 1), so selection costs O(T log T);
* the attended set is the selected blocks, the blocks holding the first ``sink`` keys and those
  touched by the block's last ``window`` keys (from its first query).

Not followed: the kernel stores scores in bfloat16 and ranks sigmoid(score) rounded to bfloat16,
so halves scoring above about 5.5 tie and its sort order decides among them; here scores rank in
float32. The kernel also lets a repeated index of an emptied group attend its block twice (here
the selection is a set), and skips the rounds of a last, partial query block whose strided rows
see too few keys (here it is searched like the others).

``mask_k`` at least S makes it exact. Execution: the 2-key blocks as a table would be hundreds
of tiny tiles per query block, so the selection is laid out as a :class:`VerticalSlash` of the
same keys: ``TILE_K``-key tiles wherever the sink and window part covers a whole tile (the
op's causal mask does the rest), and every other selected key a column, gathered per query block
and attended in one product; the two merge by log-sum-exp. The tiles fit the GPU kernel too.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxllm.attention.sparse import _common as C
from pallas_kernels.block_sparse.masks import BlockTable, VerticalSlash

METHOD = "hip"
DEFAULTS = dict(mask_k=512, block_q=64, block_k=2, stride=2, sink=16, window=256)
# Key tile of the executed layout: the tile size the gather path is fast at; not a HiP option.
TILE_K = 64


def check_options(*, mask_k, block_q, block_k, stride, sink, window):
  for name, value in (("mask_k", mask_k), ("block_q", block_q), ("block_k", block_k),
                      ("stride", stride)):
    C.check_int(METHOD, name, value)
  C.check_int(METHOD, "sink", sink, low=0)
  C.check_int(METHOD, "window", window, low=0)
  if mask_k % block_k:
    raise ValueError(f"{METHOD}: mask_k must be a multiple of block_k, got mask_k={mask_k}, "
                     f"block_k={block_k}")


def initial_groups(bsrc: int, m: int) -> tuple[np.ndarray, int]:
  """Group bounds [m + 1] over the bsrc searched blocks (from 0) and the rounds the search runs."""
  j = np.arange(m + 1)
  if bsrc <= m:  # every block selected directly: one-block groups, no search
    return np.minimum(j, bsrc), 0
  step = -(-(1 << (bsrc.bit_length() - 1)) // m)
  a = (np.float32(bsrc) / np.float32(m) * j.astype(np.float32)).astype(np.int64)
  bounds = np.minimum(a // step * step, bsrc)
  largest = int(np.max(np.diff(bounds)))
  return bounds, (largest - 1).bit_length()  # ceil(log2(largest)) halvings to reach 1


def search_groups(t: int, s: int, *, mask_k: int, block_q: int, block_k: int, sink: int,
                  window: int):
  """Initial group starts and ends [nq, m] (key blocks) and rounds [nq] of each query block."""
  m = mask_k // block_k
  n = C.query_block_last(t, s, block_q) + 1
  lo0 = C.num_blocks(sink, block_k)
  bounds, rounds = zip(*(initial_groups(C.num_blocks(max(int(x) - window - sink, 0), block_k), m)
                         for x in n))
  bounds = np.stack(bounds) + lo0
  return bounds[:, :-1], bounds[:, 1:], np.asarray(rounds)


@functools.partial(jax.jit, static_argnames=("mask_k", "block_q", "block_k", "stride", "sink",
                                             "window"))
def tree_search(q, k, *, mask_k: int, block_q: int, block_k: int, stride: int, sink: int = 0,
                window: int = 0):
  """The searched block each of the m groups ends on, int32 [B, H, nq, m] (nk: none)."""
  b, t, h, d = q.shape
  s = k.shape[1]
  nq, nk = C.num_blocks(t, block_q), C.num_blocks(s, block_k)
  m = mask_k // block_k
  lo, hi, rounds = search_groups(t, s, mask_k=mask_k, block_q=block_q, block_k=block_k,
                                 sink=sink, window=window)
  # Strided query rows of each block, as the official kernel offsets them; rows past T are
  # dropped from the max.
  rows = (np.arange(nq)[:, None] * block_q + np.arange(0, block_q, stride)[None, :]
          + min(t, stride) - 1)
  row_ok = jnp.asarray(rows < t)
  q_rows = q[:, np.minimum(rows, t - 1)].astype(jnp.float32)  # [B, nq, r, H, D]
  q_pos = jnp.asarray(rows + (s - t))
  kp = jnp.pad(k.astype(jnp.float32), ((0, 0), (0, nk * block_k - s), (0, 0), (0, 0)))
  k_blocks = jnp.transpose(C.expand_heads(kp, h).reshape(b, nk, block_k, h, d), (0, 3, 1, 2, 4))
  lo, hi = (jnp.broadcast_to(jnp.asarray(x), (b, h, nq, m)) for x in (lo, hi))
  lowest = jnp.finfo(jnp.float32).min

  def score(rep, valid):
    """Max over strided queries and the representative block's keys: [B, H, nq, c]; a
    non-empty half never ranks below an empty one."""
    kb = k_blocks[jnp.arange(b)[:, None, None, None], jnp.arange(h)[None, :, None, None], rep]
    logit = jnp.einsum("bqrhd,bhqcxd->bhqcrx", q_rows, kb)
    k_pos = rep[..., None] * block_k + jnp.arange(block_k)  # [B, H, nq, c, bk]
    ok = (k_pos[..., None, :] <= q_pos[None, None, :, None, :, None] - window)
    ok &= (k_pos < s)[..., None, :] & row_ok[None, None, :, None, :, None]
    best = jnp.max(jnp.where(ok, logit, lowest), axis=(-2, -1))
    return jnp.where(valid, best, -jnp.inf)

  for r in range(int(rounds.max(initial=0))):
    mid = lo + (hi - lo) // 2
    c_lo = jnp.concatenate([lo, mid], axis=-1)
    c_hi = jnp.concatenate([mid, hi], axis=-1)
    rep = jnp.clip(c_lo + (c_hi - c_lo) // 2, 0, nk - 1)
    _, best = jax.lax.top_k(score(rep, c_hi > c_lo), m)
    active = jnp.asarray(r < rounds)[:, None]  # each query block stops at its own round count
    lo = jnp.where(active, jnp.take_along_axis(c_lo, best, axis=-1), lo)
    hi = jnp.where(active, jnp.take_along_axis(c_hi, best, axis=-1), hi)
  return jnp.where(hi > lo, lo, nk)  # every kept group is one block now; nk: none


def fixed_layout(t: int, s: int, *, block_q: int, block_k: int, sink: int, window: int):
  """The positional part, per query block: the sink and window blocks (numpy bool [nq, nk]),
  the ``TILE_K`` tiles whose visible keys are all in it (idx, cnt), and its other keys as
  columns (idx, cnt); keys past the block's last position are left out (no row sees them)."""
  nq, nk = C.num_blocks(t, block_q), C.num_blocks(s, block_k)
  first = C.query_block_first(t, s, block_q)[:, None]
  last = C.query_block_last(t, s, block_q)[:, None]
  start = np.arange(nk)[None, :] * block_k
  blocks = (start < sink) | ((start + block_k - 1 >= first - window + 1) & (window > 0))
  blocks &= C.visible_blocks(t, s, block_q, block_k)
  nt = C.num_blocks(s, TILE_K)
  pos = np.arange(nt * TILE_K)[None, :]
  keys = np.repeat(blocks, block_k, axis=1)[:, :nt * TILE_K]
  keys = np.pad(keys, ((0, 0), (0, nt * TILE_K - keys.shape[1]))) & (pos <= last)
  tiles = (keys | (pos > last)).reshape(nq, nt, TILE_K).all(-1)
  tiles &= keys.reshape(nq, nt, TILE_K).any(-1)
  cols = keys & ~np.repeat(tiles, TILE_K, axis=1)

  def rows(mask):  # (idx, cnt) in the table convention
    return C.compact(jnp.asarray(mask), jnp.arange(mask.shape[-1]))

  return blocks, rows(tiles), rows(cols)


def select(q, k, *, mask_k=DEFAULTS["mask_k"], block_q=DEFAULTS["block_q"],
           block_k=DEFAULTS["block_k"], stride=DEFAULTS["stride"], sink=DEFAULTS["sink"],
           window=DEFAULTS["window"]):
  """HiP's keys per query head as a :class:`VerticalSlash` of ``block_q`` x ``TILE_K`` tiles
  plus key columns (the module doc says how the selected blocks map onto it)."""
  C.check_inputs(METHOD, q, k)
  check_options(mask_k=mask_k, block_q=block_q, block_k=block_k, stride=stride, sink=sink,
                window=window)
  b, t, h = q.shape[:3]
  s = k.shape[1]
  nq, nk = C.num_blocks(t, block_q), C.num_blocks(s, block_k)
  chosen = tree_search(q, k, mask_k=mask_k, block_q=block_q, block_k=block_k, stride=stride,
                       sink=sink, window=window)  # [B, H, nq, m]
  fixed, (tile_idx, tile_cnt), (col_idx, col_cnt) = fixed_layout(
      t, s, block_q=block_q, block_k=block_k, sink=sink, window=window)
  # A searched block inside the window is attended there already.
  in_fixed = jnp.asarray(np.pad(fixed, ((0, 0), (0, 1)), constant_values=True))
  dup = jnp.take_along_axis(in_fixed[None, None], chosen, axis=-1)
  keys = (chosen[..., None] * block_k + np.arange(block_k)).reshape(chosen.shape[:3] + (-1,))
  last = C.query_block_last(t, s, block_q)[:, None]
  keys_ok = jnp.repeat(~dup, block_k, axis=-1) & (keys <= last)
  fixed_ok = jnp.arange(col_idx.shape[1])[None, :] < col_cnt[:, None]
  shape = (b, h, nq)
  cols = jnp.concatenate([jnp.broadcast_to(col_idx, shape + col_idx.shape[1:]), keys], axis=-1)
  ok = jnp.concatenate([jnp.broadcast_to(fixed_ok, shape + fixed_ok.shape[1:]), keys_ok], -1)
  idx, cnt = C.compact(ok, cols, width=cols.shape[-1])
  table = BlockTable(jnp.broadcast_to(tile_idx, shape + tile_idx.shape[1:]),
                     jnp.broadcast_to(tile_cnt, shape), block_q, TILE_K)
  return VerticalSlash(table, idx, cnt)
