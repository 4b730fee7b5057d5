"""Split-K sparse decode as a GPU-style (Triton) Pallas kernel.

Grid (B, Hkv, num_splits). Program (b, g, split) takes the slice
``[split * per_split, (split + 1) * per_split)`` of the kv head's listed blocks, clipped to its
count, and loops over them with an online softmax for all query heads of the group at once (they
share the blocks, so each block is read once per group). It writes the unnormalised partial output
with its running max and sum; :mod:`combine` merges the splits. Splitting over the listed blocks
keeps the GPU busy when B * Hkv alone is too small to fill it.
"""

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from jaxllm.attention.masks import visible_pairs
from pallas_kernels.common import NN_DIMS, NT_DIMS


def _kernel(q_ref, k_ref, v_ref, idx_ref, cnt_ref, len_ref, o_ref, m_ref, l_ref, *,
            block_k: int, per_split: int, scale: float):
  lo = pl.program_id(2) * per_split
  hi = jnp.minimum(lo + per_split, cnt_ref[...])
  q = q_ref[...]
  length = len_ref[...]
  rows = q.shape[0]

  def body(j, carry):
    acc, m, l = carry
    start = idx_ref[j] * block_k
    k = k_ref[pl.ds(start, block_k), :]
    v = v_ref[pl.ds(start, block_k), :]
    logits = lax.dot_general(q, k, NT_DIMS, preferred_element_type=jnp.float32) * scale
    pos = start + lax.broadcasted_iota(jnp.int32, logits.shape, 1)
    logits = jnp.where(visible_pairs(length - 1, pos, causal=True), logits, -jnp.inf)
    m_next = jnp.maximum(m, jnp.max(logits, axis=1))
    m_safe = jnp.where(m_next == -jnp.inf, 0.0, m_next)  # nothing visible yet: exp gives 0
    p = jnp.exp(logits - m_safe[:, None])
    alpha = jnp.exp(m - m_safe)
    pv = lax.dot_general(p.astype(v.dtype), v, NN_DIMS,
                         preferred_element_type=jnp.float32)
    return acc * alpha[:, None] + pv, m_next, alpha * l + jnp.sum(p, axis=1)

  init = (jnp.zeros((rows, q.shape[1]), jnp.float32), jnp.full((rows,), -jnp.inf, jnp.float32),
          jnp.zeros((rows,), jnp.float32))
  acc, m, l = lax.fori_loop(lo, jnp.maximum(lo, hi), body, init)
  o_ref[...] = acc
  m_ref[...] = m
  l_ref[...] = l


def partials(q_BKGD, k_BSKD, v_BSKD, kv_idx, kv_cnt, lengths, *, block_k: int, num_splits: int,
             scale: float, interpret: bool):
  """Per-split unnormalised outputs [B, Hkv, splits, G, D] and their max and sum [..., G].

  Args:
    q_BKGD: [B, Hkv, G, D] queries grouped by kv head (G, D powers of two, at least 16).
    k_BSKD, v_BSKD: [B, S, Hkv, D] cache, S a multiple of block_k.
    kv_idx, kv_cnt, lengths: int32 [B, Hkv, max_blocks], [B, Hkv], [B].
    block_k, num_splits, scale, interpret: see :func:`pallas_kernels.sparse_decode.api`.
  """
  b, hkv, g, d = q_BKGD.shape
  s = k_BSKD.shape[1]
  max_blocks = kv_idx.shape[-1]
  per_split = -(-max_blocks // num_splits)
  part = lambda bi, hi, si: (bi, hi, si, 0)
  return pl.pallas_call(
      functools.partial(_kernel, block_k=block_k, per_split=per_split, scale=scale),
      grid=(b, hkv, num_splits),
      in_specs=[
          pl.BlockSpec((None, None, g, d), lambda bi, hi, si: (bi, hi, 0, 0)),
          pl.BlockSpec((None, s, None, d), lambda bi, hi, si: (bi, 0, hi, 0)),
          pl.BlockSpec((None, s, None, d), lambda bi, hi, si: (bi, 0, hi, 0)),
          pl.BlockSpec((None, None, max_blocks), lambda bi, hi, si: (bi, hi, 0)),
          pl.BlockSpec((None, None), lambda bi, hi, si: (bi, hi)),
          pl.BlockSpec((None,), lambda bi, hi, si: (bi,)),
      ],
      out_specs=[
          pl.BlockSpec((None, None, None, g, d), lambda bi, hi, si: (bi, hi, si, 0, 0)),
          pl.BlockSpec((None, None, None, g), part),
          pl.BlockSpec((None, None, None, g), part),
      ],
      out_shape=[
          jax.ShapeDtypeStruct((b, hkv, num_splits, g, d), jnp.float32),
          jax.ShapeDtypeStruct((b, hkv, num_splits, g), jnp.float32),
          jax.ShapeDtypeStruct((b, hkv, num_splits, g), jnp.float32),
      ],
      interpret=interpret,
      name="sparse_decode_split_k",
  )(q_BKGD, k_BSKD, v_BSKD, kv_idx, kv_cnt, lengths)
