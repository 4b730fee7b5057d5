"""MoBA (mixture of block attention): a parameter-free top-k gate over key blocks, per query token.

Keys are split into blocks of ``chunk_size``. Each query token scores every key block by
<q, mean of the block's keys> (float32, unscaled), never selects a block that starts after its own
block, always selects its own block (causal inside it) and keeps the ``topk`` best blocks in all,
its own block counted among them; the result is softmax attention over the keys of those blocks.
This is the rule of the public ``moba_attn_varlen_naive`` reference (own block forced by a +inf
gate, past blocks ranked, future blocks -inf). Defaults follow the public 8k configuration
(chunk 512, top-3); ``topk >= ceil(S / chunk_size)`` is exactly dense causal attention.

The selection is per query token, not per query block, so it is not a :class:`BlockTable` with
block_q > 1: :func:`gate` returns the chosen key blocks as int32 [B, H, T, topk] indices with a
validity mask. :func:`attention` runs the selected pairs, and only those, on the block-sparse op:
the own block as a block-diagonal causal table, and the past blocks by regrouping the
(query, block) pairs so that queries sharing a key block form whole query blocks (the varlen
grouping of the public efficient code, in static shapes). Heads: each query head gates with the
mean keys of its own KV head (GQA), so members of a group may select different blocks.
"""

import functools
import math

import jax
import jax.numpy as jnp

from jaxllm.attention import masks as vis
from pallas_kernels.block_sparse.api import block_sparse_attention
from pallas_kernels.block_sparse.masks import BlockTable

CHUNK_SIZE = 512  # public configuration at 8k (2048 at 32k, 4096 at 1M)
TOPK = 3


def check_options(chunk_size, topk) -> None:
  for name, value in (("chunk_size", chunk_size), ("topk", topk)):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
      raise ValueError(f"moba attention: {name} must be a positive int, got {value!r}")


def _block_means(k, chunk_size):
  """Mean key of each block (the last block may be partial): float32 [B, nk, Hkv, D]."""
  b, s, hkv, d = k.shape
  nk = -(-s // chunk_size)
  k_p = jnp.pad(k.astype(jnp.float32), ((0, 0), (0, nk * chunk_size - s), (0, 0), (0, 0)))
  sums = k_p.reshape(b, nk, chunk_size, hkv, d).sum(axis=2)
  counts = jnp.minimum(chunk_size, s - jnp.arange(nk) * chunk_size).astype(jnp.float32)
  return sums / counts[None, :, None, None]


def gate_scores(q, k, *, chunk_size=CHUNK_SIZE):
  """Gate logits float32 [B, H, T, nk]: own block +inf, later blocks -inf, past <q, mean k>."""
  b, t, h, d = q.shape
  s, hkv = k.shape[1], k.shape[2]
  kbar = _block_means(k, chunk_size)  # [B, nk, Hkv, D]
  q_g = q.astype(jnp.float32).reshape(b, t, hkv, h // hkv, d)
  scores = jnp.einsum("btkgd,bnkd->bkgtn", q_g, kbar).reshape(b, h, t, -1)
  own = (jnp.arange(t) + s - t) // chunk_size
  blocks = jnp.arange(scores.shape[-1])
  scores = jnp.where(blocks[None, :] < own[:, None], scores, -jnp.inf)
  return jnp.where(blocks[None, :] == own[:, None], jnp.inf, scores)


@functools.partial(jax.jit, static_argnames=("chunk_size", "topk"))
def gate(q, k, *, chunk_size=CHUNK_SIZE, topk=TOPK):
  """The selected key blocks per query token.

  Returns:
    (idx int32 [B, H, T, min(topk, nk)], ok bool [same]): block indices and whether each slot
    holds a selected block (queries with fewer past blocks than ``topk - 1`` leave slots empty).
  """
  check_options(chunk_size, topk)
  scores = gate_scores(q, k, chunk_size=chunk_size)
  top, idx = jax.lax.top_k(scores, min(topk, scores.shape[-1]))
  return idx.astype(jnp.int32), top > -jnp.inf


PAST_BLOCK_Q = 64  # query rows per table block of the past-block part


def _own_blocks(q, k, v, *, chunk_size, scale):
  """Each query against its own key block, causal: (o [B, T, H, D], lse [B, H, T]).

  The queries are front-padded to a chunk boundary, so that every query block of ``chunk_size``
  rows lies in one key block; the padded rows stay the last T' <= S positions and are dropped.
  """
  b, t, h, _ = q.shape
  s = k.shape[1]
  pad = (s - t) % chunk_size
  q_p = jnp.pad(q, ((0, 0), (pad, 0), (0, 0), (0, 0)))
  nq = -(-(t + pad) // chunk_size)
  own = (s - t - pad) // chunk_size + jnp.arange(nq, dtype=jnp.int32)
  table = BlockTable(jnp.broadcast_to(own[None, None, :, None], (1, 1, nq, 1)),
                     jnp.ones((1, 1, nq), jnp.int32), block_q=chunk_size, block_k=chunk_size)
  o, lse = block_sparse_attention(q_p, k, v, table, causal=True, scale=scale, impl="xla",
                                  return_lse=True)
  return o[:, pad:], lse[..., pad:]


def _past_layout(past, nk: int, block_q: int):
  """Rows of the past-block part: each (query, selected past block) pair becomes one row, the
  rows grouped by key block and each group padded to whole query blocks of ``block_q``.

  Args:
    past: int32 [B, H, N] the key block of each pair, ``nk`` for an empty slot.

  Returns:
    (dest int32 [B, H, N] the row of each pair, src int32 [B, H, M] the pair of each row (0 on
    padding rows), kv_idx int32 [B, H, M / block_q], kv_cnt int32 [same]): the table lists one
    key block per query block, none for padding and empty-slot groups.
  """
  n = past.shape[-1]
  rows = -(-(n + (nk + 1) * (block_q - 1)) // block_q) * block_q  # static bound on the padding
  count = jax.vmap(jax.vmap(lambda x: jnp.bincount(x, length=nk + 1)))(past)  # [B, H, nk + 1]
  padded = -(-count // block_q) * block_q
  start_sorted = jnp.cumsum(count, -1) - count
  start_rows = jnp.cumsum(padded, -1) - padded
  order = jnp.argsort(past, axis=-1, stable=True)
  group = jnp.take_along_axis(past, order, -1)
  rank = jnp.arange(n) - jnp.take_along_axis(start_sorted, group, -1)
  dest_sorted = jnp.take_along_axis(start_rows, group, -1) + rank
  dest = jnp.take_along_axis(dest_sorted, jnp.argsort(order, axis=-1), -1)
  src = jax.vmap(jax.vmap(lambda d: jnp.zeros((rows,), jnp.int32).at[d].set(
      jnp.arange(n, dtype=jnp.int32))))(dest)
  first_row = jnp.arange(rows // block_q) * block_q
  block_group = jax.vmap(jax.vmap(lambda ends: jnp.searchsorted(ends, first_row, side="right")))(
      jnp.cumsum(padded, -1))
  real = block_group < nk
  return (dest.astype(jnp.int32), src, jnp.where(real, block_group, 0).astype(jnp.int32),
          real.astype(jnp.int32))


def _past_blocks(q, k, v, idx, ok, *, chunk_size, scale):
  """Each query against its selected past blocks (whole blocks, no mask): per slot
  (o [B, H, T, n, D], lse [B, H, T, n]), lse -inf on empty slots."""
  b, t, h, d = q.shape
  s = k.shape[1]
  nk = -(-s // chunk_size)
  own = ((jnp.arange(t) + s - t) // chunk_size)[:, None]
  sel = ok & (idx != own)
  n_slot = idx.shape[-1]
  past = jnp.where(sel, idx, nk).reshape(b, h, t * n_slot)
  dest, src, kv_idx, kv_cnt = _past_layout(past, nk, PAST_BLOCK_Q)
  q_rows = jnp.take_along_axis(jnp.swapaxes(q, 1, 2), (src // n_slot)[..., None], axis=2)
  table = BlockTable(kv_idx[..., None], kv_cnt, block_q=PAST_BLOCK_Q, block_k=chunk_size)
  o, lse = block_sparse_attention(jnp.swapaxes(q_rows, 1, 2), k, v, table, causal=False,
                                  scale=scale, impl="xla", return_lse=True)
  o = jnp.take_along_axis(jnp.swapaxes(o, 1, 2), dest[..., None], axis=2)
  lse = jnp.take_along_axis(lse, dest, axis=-1)
  o = o.reshape(b, h, t, n_slot, d)
  return o, jnp.where(sel, lse.reshape(b, h, t, n_slot), -jnp.inf)


@functools.partial(jax.jit, static_argnames=("chunk_size", "topk", "scale"))
def attention(q, k, v, *, chunk_size=CHUNK_SIZE, topk=TOPK, scale=None):
  """MoBA attention (causal; queries are the last T of S keys) on the block-sparse op.

  Two parts, each run by ``pallas_kernels.block_sparse`` (the gather path) over the pairs MoBA
  selects and no others: every query against its own block (causal), and every (query, selected
  past block) pair as one row of a layout grouped by key block, so that a table with one whole
  key block per query block runs them. The parts are merged by their log-sum-exps; gradients
  flow through the layout's gathers (the gate itself, a top-k, has none, as in the reference).

  Returns:
    (o [B, T, H, D] in q's dtype, lse float32 [B, H, T]).
  """
  check_options(chunk_size, topk)
  b, t, h, d = q.shape
  scale = 1.0 / math.sqrt(d) if scale is None else scale
  idx, ok = gate(q, k, chunk_size=chunk_size, topk=topk)
  idx = jax.lax.stop_gradient(idx)
  o_own, lse_own = _own_blocks(q, k, v, chunk_size=chunk_size, scale=scale)
  parts_o = [jnp.swapaxes(o_own, 1, 2)[..., None, :].astype(jnp.float32)]
  parts_lse = [lse_own[..., None]]
  if idx.shape[-1] > 1:
    o_past, lse_past = _past_blocks(q, k, v, idx, ok, chunk_size=chunk_size, scale=scale)
    parts_o.append(o_past.astype(jnp.float32))
    parts_lse.append(lse_past)
  o_all = jnp.concatenate(parts_o, axis=-2)  # [B, H, T, parts, D]
  lse_all = jnp.concatenate(parts_lse, axis=-1)
  m = jax.lax.stop_gradient(jnp.max(lse_all, axis=-1, keepdims=True))
  m = jnp.where(jnp.isfinite(m), m, 0.0)
  w = jnp.where(jnp.isfinite(lse_all), jnp.exp(lse_all - m), 0.0)
  total = w.sum(-1)
  has = total > 0
  safe = jnp.where(has, total, 1.0)
  o = jnp.einsum("bhtp,bhtpd->bhtd", w, o_all) / safe[..., None]
  lse = jnp.where(has, m[..., 0] + jnp.log(safe), -jnp.inf)
  return jnp.swapaxes(o, 1, 2).astype(q.dtype), lse


def reference(q, k, v, *, chunk_size=CHUNK_SIZE, topk=TOPK, scale=None):
  """Dense masked formulation: the naive rule's [T, S] mask, one float32 softmax.

  The mask is built as the public naive code does (threshold at the k-th largest gate value,
  intersected with the top-k indices), independently of :func:`gate`'s slot layout.
  """
  check_options(chunk_size, topk)
  b, t, h, d = q.shape
  s, hkv = k.shape[1], k.shape[2]
  scale = 1.0 / math.sqrt(d) if scale is None else scale
  scores = jax.lax.stop_gradient(gate_scores(q, k, chunk_size=chunk_size))
  nk = scores.shape[-1]
  kth, top_idx = jax.lax.top_k(scores, min(topk, nk))
  picked = jnp.any(top_idx[..., None] == jnp.arange(nk), axis=-2)
  chosen = picked & (scores >= kth[..., -1:])
  keys = jnp.repeat(chosen, chunk_size, axis=-1)[..., :s]  # [B, H, T, S]
  keys &= vis.visible(*vis.positions(t, s), causal=True)
  q_g = q.reshape(b, t, hkv, h // hkv, d)
  logits = jnp.einsum("btkgd,bskd->bkgts", q_g, k, preferred_element_type=jnp.float32)
  logits = jnp.where(keys.reshape(b, hkv, h // hkv, t, s), logits * scale, -jnp.inf)
  p = jax.nn.softmax(logits, axis=-1)
  o = jnp.einsum("bkgts,bskd->btkgd", p, v.astype(jnp.float32))
  lse = jax.nn.logsumexp(logits, axis=-1).reshape(b, h, t)
  return o.reshape(b, t, h, d).astype(q.dtype), lse


def pair_mask(q, k, *, chunk_size=CHUNK_SIZE, topk=TOPK):
  """Bool [B, H, T, S]: the (query, key) pairs MoBA computes (fidelity measurements)."""
  idx, ok = gate(q, k, chunk_size=chunk_size, topk=topk)
  t, s = q.shape[1], k.shape[1]
  nk = -(-s // chunk_size)
  blocks = jnp.any((idx[..., None] == jnp.arange(nk)) & ok[..., None], axis=-2)
  keys = jnp.repeat(blocks, chunk_size, axis=-1)[..., :s]
  return keys & vis.visible(*vis.positions(t, s), causal=True)
