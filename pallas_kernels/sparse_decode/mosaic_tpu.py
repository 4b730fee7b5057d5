"""Split-K sparse decode as a Mosaic TPU kernel with the block table in scalar prefetch.

Grid (B, Hkv, num_splits, per_split), the last axis sequential: step j of split ``sp`` visits
listed block ``sp * per_split + j``. The k/v index maps read that block's index from SMEM, and
steps past the count repeat the last valid index (normalised table), so they neither compute nor
DMA. The cache is viewed as [B, S, Hkv * D] (a free reshape) so one (block_k, D) tile of one kv
head is a plain 2-D block; all query heads of the group share it. Outputs per split are the
unnormalised output with its running max and sum, merged by :mod:`combine`.
"""

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from jaxllm.attention.masks import visible_pairs
from pallas_kernels.common import NN_DIMS, NT_DIMS, NUM_LANES, widen


def _kernel(idx_ref, cnt_ref, len_ref, q_ref, k_ref, v_ref, o_ref, m_ref, l_ref, m_sc, l_sc,
            acc_sc, *, block_k: int, per_split: int, max_blocks: int, kv_heads: int,
            scale: float):
  b, hk, sp, j = (pl.program_id(a) for a in range(4))
  row = b * kv_heads + hk
  slot = sp * per_split + j

  @pl.when(j == 0)
  def _init():
    m_sc[...] = jnp.full_like(m_sc, -jnp.inf)
    l_sc[...] = jnp.zeros_like(l_sc)
    acc_sc[...] = jnp.zeros_like(acc_sc)

  @pl.when(slot < cnt_ref[row])
  def _step():
    start = idx_ref[row * max_blocks + slot] * block_k
    logits = lax.dot_general(q_ref[...], k_ref[...], NT_DIMS, preferred_element_type=jnp.float32)
    logits = logits * scale
    pos = start + lax.broadcasted_iota(jnp.int32, logits.shape, 1)
    logits = jnp.where(visible_pairs(len_ref[b] - 1, pos, causal=True), logits, -jnp.inf)
    m_prev = m_sc[...]
    m_next = jnp.maximum(m_prev, jnp.max(logits, axis=-1, keepdims=True))
    m_safe = jnp.where(m_next == -jnp.inf, 0.0, m_next)  # nothing visible yet: exp gives 0
    p = jnp.exp(logits - widen(m_safe, block_k))
    alpha = jnp.exp(m_prev - m_safe)
    l_sc[...] = alpha * l_sc[...] + lax.broadcast_in_dim(jnp.sum(p, axis=-1), m_prev.shape, (0,))
    m_sc[...] = m_next
    v = v_ref[...]
    pv = lax.dot_general(p.astype(v.dtype), v, NN_DIMS, preferred_element_type=jnp.float32)
    acc_sc[...] = acc_sc[...] * widen(alpha, acc_sc.shape[-1]) + pv

  @pl.when(j == per_split - 1)
  def _finish():
    o_ref[...] = acc_sc[...]
    m_ref[...] = m_sc[...]
    l_ref[...] = l_sc[...]


def partials(q_BKGD, k_BSKD, v_BSKD, kv_idx, kv_cnt, lengths, *, block_k: int, num_splits: int,
             scale: float, interpret):
  """Per-split unnormalised outputs [B, Hkv, splits, G, D] and their max and sum [..., G].

  Args:
    q_BKGD: [B, Hkv, G, D] queries grouped by kv head (G a multiple of 8).
    k_BSKD, v_BSKD: [B, S, Hkv, D] cache, S a multiple of block_k, D a multiple of 128 or Hkv 1.
    kv_idx, kv_cnt, lengths: int32 [B, Hkv, max_blocks] (normalised: past the count the last
      valid index repeats), [B, Hkv], [B].
    block_k: a multiple of 128.
    num_splits, scale: see :func:`pallas_kernels.sparse_decode.api.sparse_decode`.
    interpret: False on TPU; True or a ``pltpu.InterpretParams`` to interpret on CPU.
  """
  b, hkv, g, d = q_BKGD.shape
  s = k_BSKD.shape[1]
  max_blocks = kv_idx.shape[-1]
  per_split = -(-max_blocks // num_splits)

  def kv_map(bi, hi, si, j, idx, cnt, lens):
    del cnt, lens
    slot = jnp.minimum(si * per_split + j, max_blocks - 1)
    return bi, idx[(bi * hkv + hi) * max_blocks + slot], hi

  def part_map(bi, hi, si, j, idx, cnt, lens):
    del j, idx, cnt, lens
    return bi, hi, si, 0, 0

  kv_spec = pl.BlockSpec((None, block_k, d), kv_map)
  stat_spec = pl.BlockSpec((None, None, None, g, NUM_LANES), part_map)
  grid_spec = pltpu.PrefetchScalarGridSpec(
      num_scalar_prefetch=3,
      grid=(b, hkv, num_splits, per_split),
      in_specs=[
          pl.BlockSpec((None, None, g, d), lambda bi, hi, si, j, *_: (bi, hi, 0, 0)),
          kv_spec,
          kv_spec,
      ],
      out_specs=[pl.BlockSpec((None, None, None, g, d), part_map), stat_spec, stat_spec],
      scratch_shapes=[
          pltpu.VMEM((g, NUM_LANES), jnp.float32),
          pltpu.VMEM((g, NUM_LANES), jnp.float32),
          pltpu.VMEM((g, d), jnp.float32),
      ],
  )
  stat_shape = jax.ShapeDtypeStruct((b, hkv, num_splits, g, NUM_LANES), jnp.float32)
  o, m, l = pl.pallas_call(
      functools.partial(_kernel, block_k=block_k, per_split=per_split, max_blocks=max_blocks,
                        kv_heads=hkv, scale=scale),
      grid_spec=grid_spec,
      out_shape=[jax.ShapeDtypeStruct((b, hkv, num_splits, g, d), jnp.float32), stat_shape,
                 stat_shape],
      compiler_params=pltpu.CompilerParams(
          dimension_semantics=("parallel", "parallel", "parallel", "arbitrary")),
      interpret=interpret,
      name="sparse_decode_split_k_tpu",
  )(kv_idx.reshape(-1), kv_cnt.reshape(-1), lengths, q_BKGD,
    k_BSKD.reshape(b, s, hkv * d), v_BSKD.reshape(b, s, hkv * d))
  return o, m[..., 0], l[..., 0]
