"""Plain-jnp specification of sparse decode: a dense position mask over the whole cache."""

import math

import jax.numpy as jnp

from jaxllm.attention.masks import visible_pairs


def position_mask(kv_idx, kv_cnt, lengths, *, s: int, block_k: int):
  """Bool [B, Hkv, S]: cache positions in a listed block and below the sequence's length."""
  nk = -(-s // block_k)
  valid = jnp.arange(kv_idx.shape[-1]) < kv_cnt[..., None]
  listed = jnp.any((kv_idx[..., None] == jnp.arange(nk)) & valid[..., None], axis=-2)
  ok = jnp.repeat(listed, block_k, axis=-1)[..., :s]
  # The new token sits at position length - 1 and sees the cache causally.
  return ok & visible_pairs(lengths[:, None, None] - 1, jnp.arange(s), causal=True)


def sparse_decode(q, k, v, kv_idx, kv_cnt, lengths, *, block_k: int, scale=None):
  """One query token per sequence attending to its listed cache blocks.

  Args:
    q: [B, H, D] the current token's queries.
    k, v: [B, S, Hkv, D] the cache; query head h reads kv head h // (H // Hkv).
    kv_idx: int [B, Hkv, max_blocks] key-block indices (distinct within a row).
    kv_cnt: int [B, Hkv] valid leading entries of kv_idx.
    lengths: int [B] valid cache length; positions at or past it are ignored.
    block_k: cache block size of the table.
    scale: logit multiplier, default 1 / sqrt(D).

  Returns:
    [B, H, D] in q's dtype, float32 logits and softmax; heads that see nothing give 0.
  """
  b, h, d = q.shape
  s, hkv = k.shape[1], k.shape[2]
  scale = 1.0 / math.sqrt(d) if scale is None else scale
  q_BKGD = q.reshape(b, hkv, h // hkv, d)
  logits = jnp.einsum("bkgd,bskd->bkgs", q_BKGD, k, preferred_element_type=jnp.float32) * scale
  ok = position_mask(kv_idx, kv_cnt, lengths, s=s, block_k=block_k)[:, :, None, :]
  logits = jnp.where(ok, logits, -jnp.inf)
  m = jnp.max(logits, axis=-1, keepdims=True)
  p = jnp.exp(logits - jnp.where(jnp.isfinite(m), m, 0.0))
  denom = jnp.sum(p, axis=-1, keepdims=True)
  p = p / jnp.where(denom == 0, 1.0, denom)
  o = jnp.einsum("bkgs,bskd->bkgd", p.astype(v.dtype), v, preferred_element_type=jnp.float32)
  return o.reshape(b, h, d).astype(q.dtype)
