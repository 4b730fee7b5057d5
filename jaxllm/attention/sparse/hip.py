"""HiP attention (Lee et al. 2024): hierarchical top-k key-block selection by tree search.

Implemented from the paper and REFERENCE A (the public code is source-available only).
Defaults are v1.1: mask_k 512 tokens, block_q 64, block_k 2, query stride 2, sink 16, window
256, centre representative. Per query block:

* the search covers the key blocks between the sink and the window, as the public v1.1 code
  does (``masking_iteration_draft``: blocks [ceil(sink / block_k), that + ceil((n - window -
  sink) / block_k)), n = the block's last position + 1), tiled by m = mask_k / block_k groups,
  group j = blocks [lo0 + floor(j c / m), lo0 + floor((j + 1) c / m)) for the c blocks there (the
  public code also rounds group starts to a power-of-two step; not done here);
* each round every group splits in two halves ([lo, mid), [mid, hi), mid = lo + size // 2); a
  half is scored by its representative key block (the centre block lo + size // 2 of the half,
  the public ``sample_method="center"``) as the max over the block's strided queries (rows 0,
  stride, ...) and the block's keys of q.k, causal; the m best halves are kept (empty halves
  never); rounds repeat until every group is one block, ceil(log2(ceil(nk / m))) rounds, so
  selection costs O(T log T);
* the attended set is the selected blocks, the blocks holding the first ``sink`` keys and those
  touched by the block's last ``window`` keys (from its first query).

``mask_k`` at least S makes it exact. The table's key blocks are ``block_k`` tokens, so the
GPU kernel (tiles >= 16) needs ``block_k`` >= 16; the default runs on the gather path.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxllm.attention.sparse import _common as C

METHOD = "hip"
DEFAULTS = dict(mask_k=512, block_q=64, block_k=2, stride=2, sink=16, window=256)


def check_options(*, mask_k, block_q, block_k, stride, sink, window):
  for name, value in (("mask_k", mask_k), ("block_q", block_q), ("block_k", block_k),
                      ("stride", stride)):
    C.check_int(METHOD, name, value)
  C.check_int(METHOD, "sink", sink, low=0)
  C.check_int(METHOD, "window", window, low=0)
  if mask_k % block_k:
    raise ValueError(f"{METHOD}: mask_k must be a multiple of block_k, got mask_k={mask_k}, "
                     f"block_k={block_k}")


def rounds_needed(nk: int, m: int) -> int:
  size = C.num_blocks(nk, m)
  return max(0, math.ceil(math.log2(size))) if size > 1 else 0


@functools.partial(jax.jit, static_argnames=("mask_k", "block_q", "block_k", "stride", "sink",
                                             "window"))
def tree_search(q, k, *, mask_k: int, block_q: int, block_k: int, stride: int, sink: int = 0,
                window: int = 0):
  """Selected key blocks, bool [B, H, nq, nk]."""
  b, t, h, d = q.shape
  s = k.shape[1]
  nq, nk = C.num_blocks(t, block_q), C.num_blocks(s, block_k)
  m = mask_k // block_k
  last = C.query_block_last(t, s, block_q)  # [nq]
  lo0 = C.num_blocks(sink, block_k)  # the search starts after the sink blocks
  n_search = jnp.asarray(-(-np.maximum(last + 1 - window - sink, 0) // block_k))
  # Strided query rows of each block; rows past T are dropped from the max.
  rows = np.arange(nq)[:, None] * block_q + np.arange(0, block_q, stride)[None, :]
  row_ok = jnp.asarray(rows < t)
  q_rows = q[:, np.minimum(rows, t - 1)].astype(jnp.float32)  # [B, nq, r, H, D]
  q_pos = jnp.asarray(rows + (s - t))
  kp = jnp.pad(k.astype(jnp.float32), ((0, 0), (0, nk * block_k - s), (0, 0), (0, 0)))
  k_blocks = jnp.transpose(C.expand_heads(kp, h).reshape(b, nk, block_k, h, d), (0, 3, 1, 2, 4))

  j = jnp.arange(m)
  lo = lo0 + (j[None, :] * n_search[:, None]) // m  # [nq, m]
  hi = lo0 + ((j[None, :] + 1) * n_search[:, None]) // m
  lo, hi = (jnp.broadcast_to(x, (b, h, nq, m)) for x in (lo, hi))

  def score(rep, valid):
    """Max over strided queries and the representative block's keys: [B, H, nq, c]."""
    kb = k_blocks[jnp.arange(b)[:, None, None, None], jnp.arange(h)[None, :, None, None], rep]
    logit = jnp.einsum("bqrhd,bhqcxd->bhqcrx", q_rows, kb)
    k_pos = rep[..., None] * block_k + jnp.arange(block_k)  # [B, H, nq, c, bk]
    ok = (k_pos[..., None, :] <= q_pos[None, None, :, None, :, None]) & (k_pos < s)[..., None, :]
    ok &= row_ok[None, None, :, None, :, None]
    best = jnp.max(jnp.where(ok, logit, -jnp.inf), axis=(-2, -1))
    return jnp.where(valid, best, -jnp.inf)

  for _ in range(rounds_needed(nk, m)):
    mid = lo + (hi - lo) // 2
    c_lo = jnp.concatenate([lo, mid], axis=-1)
    c_hi = jnp.concatenate([mid, hi], axis=-1)
    valid = c_hi > c_lo
    rep = jnp.clip(c_lo + (c_hi - c_lo) // 2, 0, nk - 1)
    _, best = jax.lax.top_k(score(rep, valid), m)
    lo = jnp.take_along_axis(c_lo, best, axis=-1)
    hi = jnp.take_along_axis(c_hi, best, axis=-1)
  chosen = jnp.where(hi > lo, lo, nk)  # every kept group is one block now
  mask = jnp.zeros((b, h, nq, nk + 1), bool)
  mask = mask.at[jnp.arange(b)[:, None, None, None], jnp.arange(h)[None, :, None, None],
                 jnp.arange(nq)[None, None, :, None], chosen].set(True)
  return mask[..., :nk]


def select(q, k, *, mask_k=DEFAULTS["mask_k"], block_q=DEFAULTS["block_q"],
           block_k=DEFAULTS["block_k"], stride=DEFAULTS["stride"], sink=DEFAULTS["sink"],
           window=DEFAULTS["window"]):
  """HiP's blocks per query head: a :class:`BlockTable` of ``block_q`` x ``block_k``."""
  C.check_inputs(METHOD, q, k)
  check_options(mask_k=mask_k, block_q=block_q, block_k=block_k, stride=stride, sink=sink,
                window=window)
  t, s = q.shape[1], k.shape[1]
  blocks = tree_search(q, k, mask_k=mask_k, block_q=block_q, block_k=block_k, stride=stride,
                       sink=sink, window=window)
  first = C.query_block_first(t, s, block_q)[:, None]
  start = np.arange(C.num_blocks(s, block_k))[None, :] * block_k
  fixed = (start < sink) | ((start + block_k - 1 >= first - window + 1) & (window > 0))
  fixed &= C.visible_blocks(t, s, block_q, block_k)
  return C.table_from_mask(blocks | jnp.asarray(fixed), block_q=block_q, block_k=block_k)
