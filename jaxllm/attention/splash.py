"""TPU dense attention through jax's Pallas splash-attention kernel.

Wrapped (not rewritten) so ``dense`` can use it for ``impl='auto'`` on TPU; splash wants
head-major [H, T, D] per example, unscaled queries and static masks, which this adapts.
"""

import functools
import math

import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu import splash_attention as sa

BLOCK = 128  # splash's default block size; sequence lengths must be multiples of it


def fits(t: int, s: int) -> bool:
  return t % BLOCK == 0 and s % BLOCK == 0


@functools.lru_cache(maxsize=32)
def _kernel(t, s, h, causal, window, softcap, interpret):
  if window is not None:
    left = window - 1
    head_mask = sa.LocalMask((t, s), window_size=(left, 0 if causal else left), offset=0)
  elif causal:
    head_mask = sa.CausalMask((t, s))
  else:
    head_mask = sa.FullMask((t, s))
  mask = sa.MultiHeadMask([head_mask] * h)
  return sa.make_splash_mha(mask, head_shards=1, q_seq_shards=1, attn_logits_soft_cap=softcap,
                            interpret=interpret)


def splash_dense(q, k, v, *, causal, scale, window=None, softcap=None, interpret=False,
                 segment_ids=None):
  """Dense attention on TPU via splash; returns None when the shapes do not fit its blocks.
  ``segment_ids`` [B, S] (the queries take the last T) go in as splash's ``SegmentIds``."""
  b, t, h, d = q.shape
  s, hkv = k.shape[1], k.shape[2]
  if not fits(t, s) or (causal and t != s):
    return None
  if hkv != h:  # splash MHA takes one kv head per query head
    k = jnp.repeat(k, h // hkv, axis=2)
    v = jnp.repeat(v, h // hkv, axis=2)
  kernel = _kernel(t, s, h, causal, window, softcap, interpret)
  to_hm = lambda x: jnp.swapaxes(x, 1, 2)  # [B, T, H, D] -> [B, H, T, D]
  if segment_ids is None:
    o = jax.vmap(kernel)(to_hm(q * jnp.asarray(scale, q.dtype)), to_hm(k), to_hm(v))
  else:
    o = jax.vmap(lambda q_, k_, v_, seg: kernel(
        q_, k_, v_, segment_ids=sa.SegmentIds(seg[s - t:], seg)))(
        to_hm(q * jnp.asarray(scale, q.dtype)), to_hm(k), to_hm(v), segment_ids)
  return jnp.swapaxes(o, 1, 2).astype(q.dtype)
