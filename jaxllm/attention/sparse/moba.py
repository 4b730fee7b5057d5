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
validity mask. :func:`attention` gathers, per tile of queries, the selected key blocks of every
query and runs one softmax over them, so the work is T x topk x chunk_size pairs. Heads: each
query head gates with the mean keys of its own KV head (GQA), so members of a group may select
different blocks.
"""

import functools
import math

import jax
import jax.numpy as jnp

from jaxllm.attention import masks as vis

CHUNK_SIZE = 512  # public configuration at 8k (2048 at 32k, 4096 at 1M)
TOPK = 3
TILE = 64  # queries per gather step; bounds memory at tile x topk x chunk_size x D per head


def check_options(chunk_size, topk, tile=TILE) -> None:
  for name, value in (("chunk_size", chunk_size), ("topk", topk), ("tile", tile)):
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


def _tiles(x, tile):
  """[B, T, ...] -> [nt, B, tile, ...] zero-padded."""
  t = x.shape[1]
  nt = -(-t // tile)
  x = jnp.pad(x, [(0, 0), (0, nt * tile - t)] + [(0, 0)] * (x.ndim - 2))
  return jnp.moveaxis(x.reshape((x.shape[0], nt, tile) + x.shape[2:]), 1, 0)


@functools.partial(jax.jit, static_argnames=("chunk_size", "topk", "scale", "tile"))
def attention(q, k, v, *, chunk_size=CHUNK_SIZE, topk=TOPK, scale=None, tile=TILE):
  """MoBA attention (causal; queries are the last T of S keys).

  Returns:
    (o [B, T, H, D] in q's dtype, lse float32 [B, H, T]).
  """
  check_options(chunk_size, topk, tile)
  b, t, h, d = q.shape
  s, hkv = k.shape[1], k.shape[2]
  scale = 1.0 / math.sqrt(d) if scale is None else scale
  idx, ok = gate(q, k, chunk_size=chunk_size, topk=topk)
  idx = jax.lax.stop_gradient(idx)
  nk = -(-s // chunk_size)
  pad = ((0, 0), (0, nk * chunk_size - s), (0, 0), (0, 0))
  # [B * Hkv * nk, chunk, D]: one row per key block of every KV head.
  to_rows = lambda x: jnp.pad(x, pad).reshape(b, nk, chunk_size, hkv, d).transpose(
      0, 3, 1, 2, 4).reshape(b * hkv * nk, chunk_size, d)
  k_rows, v_rows = to_rows(k), to_rows(v)
  base = (jnp.arange(b)[:, None] * hkv + jnp.arange(h)[None, :] // (h // hkv)) * nk  # [B, H]
  q_pos = jnp.arange(t) + s - t

  @jax.checkpoint
  def one_tile(xs):
    q_t, idx_t, ok_t, pos_t = xs  # [B, tile, H, D], [B, tile, H, K] x2, [tile]
    rows = base[:, None, :, None] + idx_t
    k_sel = jnp.take(k_rows, rows, axis=0)  # [B, tile, H, K, chunk, D]
    v_sel = jnp.take(v_rows, rows, axis=0)
    logits = jnp.einsum("bthd,bthjcd->bthjc", q_t, k_sel,
                        preferred_element_type=jnp.float32) * scale
    k_pos = idx_t[..., None] * chunk_size + jnp.arange(chunk_size)
    see = ok_t[..., None] & (k_pos < s) & (k_pos <= pos_t[None, :, None, None, None])
    logits = jnp.where(see, logits, -jnp.inf)
    m = jax.lax.stop_gradient(jnp.max(logits, axis=(-2, -1), keepdims=True))
    m = jnp.where(jnp.isfinite(m), m, 0.0)
    p = jnp.exp(logits - m)
    denom = jnp.sum(p, axis=(-2, -1))
    safe = jnp.where(denom > 0, denom, 1.0)  # padding rows of the last tile see nothing
    o = jnp.einsum("bthjc,bthjcd->bthd", p.astype(v.dtype), v_sel,
                   preferred_element_type=jnp.float32) / safe[..., None]
    return o, jnp.where(denom > 0, m[..., 0, 0] + jnp.log(safe), -jnp.inf)

  tiles = (_tiles(q, tile), _tiles(jnp.swapaxes(idx, 1, 2), tile),
           _tiles(jnp.swapaxes(ok, 1, 2), tile),
           jnp.pad(q_pos, (0, -(-t // tile) * tile - t)).reshape(-1, tile))
  o, lse = jax.lax.map(one_tile, tiles)  # [nt, B, tile, H, D], [nt, B, tile, H]
  o = jnp.moveaxis(o, 0, 1).reshape(b, -1, h, d)[:, :t]
  lse = jnp.moveaxis(lse, 0, 1).reshape(b, -1, h)[:, :t]
  return o.astype(q.dtype), jnp.swapaxes(lse, 1, 2)


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
