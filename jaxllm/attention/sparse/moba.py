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
validity mask. :func:`attention` walks the key blocks with an online softmax, each block against
the queries at or after it, masked by their gates (a gather of every query's own blocks moves
T x topk x chunk_size x D values per head and was several times slower than dense on CPU; the
walk costs the causal triangle in large matmuls, like dense, plus the gate). Heads: each
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


@functools.partial(jax.jit, static_argnames=("chunk_size", "topk", "scale"))
def attention(q, k, v, *, chunk_size=CHUNK_SIZE, topk=TOPK, scale=None):
  """MoBA attention (causal; queries are the last T of S keys).

  Walks the key blocks: block i meets only the queries at or after its start (a static slice),
  every query's logits against it are masked by that query's gate, and an online softmax merges
  the blocks. Work is the causal block triangle in large matmuls, with no per-query gather.

  Returns:
    (o [B, T, H, D] in q's dtype, lse float32 [B, H, T]).
  """
  check_options(chunk_size, topk)
  b, t, h, d = q.shape
  s, hkv = k.shape[1], k.shape[2]
  g = h // hkv
  scale = 1.0 / math.sqrt(d) if scale is None else scale
  idx, ok = gate(q, k, chunk_size=chunk_size, topk=topk)
  nk = -(-s // chunk_size)
  chosen = jnp.any((jax.lax.stop_gradient(idx)[..., None] == jnp.arange(nk)) & ok[..., None],
                   axis=-2).reshape(b, hkv, g, t, nk)
  q_g = q.reshape(b, t, hkv, g, d)
  q_pos = jnp.arange(t) + s - t

  @jax.checkpoint
  def step(carry, q_i, k_i, v_i, see):
    acc, m, l = carry  # [B, Hkv, G, rows, D], [B, Hkv, G, rows] x2
    logits = jnp.einsum("btkgd,bckd->bkgtc", q_i, k_i, preferred_element_type=jnp.float32)
    logits = jnp.where(see, logits * scale, -jnp.inf)
    m_new = jax.lax.stop_gradient(jnp.maximum(m, jnp.max(logits, axis=-1)))
    m_safe = jnp.where(jnp.isfinite(m_new), m_new, 0.0)
    alpha = jnp.exp(m - m_safe)
    p = jnp.exp(logits - m_safe[..., None])
    acc = alpha[..., None] * acc + jnp.einsum("bkgtc,bckd->bkgtd", p.astype(v_i.dtype), v_i,
                                              preferred_element_type=jnp.float32)
    return acc, m_new, alpha * l + jnp.sum(p, axis=-1)

  acc = jnp.zeros((b, hkv, g, t, d), jnp.float32)
  m = jnp.full((b, hkv, g, t), -jnp.inf)
  l = jnp.zeros((b, hkv, g, t), jnp.float32)
  for i in range(nk):
    lo, hi = i * chunk_size, min((i + 1) * chunk_size, s)
    r0 = max(lo - (s - t), 0)  # earlier queries cannot see block i
    if r0 >= t:
      continue
    k_pos = jnp.arange(lo, hi)
    see = chosen[:, :, :, r0:, i, None] & (k_pos <= q_pos[r0:, None])
    part = step((acc[..., r0:, :], m[..., r0:], l[..., r0:]), q_g[:, r0:], k[:, lo:hi],
                v[:, lo:hi], see)
    acc, m, l = (x.at[..., r0:, :].set(y) if x.ndim == 5 else x.at[..., r0:].set(y)
                 for x, y in zip((acc, m, l), part))
  has = l > 0
  safe = jnp.where(has, l, 1.0)
  o = jnp.moveaxis((acc / safe[..., None]).reshape(b, h, t, d), 1, 2)
  return o.astype(q.dtype), jnp.where(has, m + jnp.log(safe), -jnp.inf).reshape(b, h, t)


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
