"""Forward block-sparse flash-attention kernel (Mosaic TPU).

Grid (B, H, nq, max_blocks), the last axis sequential. The table is scalar-prefetched into SMEM,
so the k/v index maps fetch key block ``kv_idx[b, h, i, j]``; steps past ``kv_cnt[b, h, i]``
skip the compute, and since their index repeats the last valid one they cost no DMA either.
Online softmax keeps the running max, sum and output in VMEM scratch. Tiles the element rule
keeps whole take a branch without the mask.
"""

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from pallas_kernels.common import NN_DIMS, NT_DIMS, NUM_LANES, widen
from pallas_kernels.block_sparse.mosaic_tpu_config import (Config, cap, table_index_maps,
                                                           tile_visible, when_full_or_masked)


def _kernel(idx_ref, cnt_ref, q_ref, k_ref, v_ref, o_ref, lse_ref, m_sc, l_sc, acc_sc, *,
            cfg: Config, max_blocks: int):
  b, h, i, j = (pl.program_id(a) for a in range(4))
  row = (b * cfg.heads + h) * cfg.num_q_blocks + i
  head_dim = acc_sc.shape[-1]

  @pl.when(j == 0)
  def _init():
    m_sc[...] = jnp.full_like(m_sc, -jnp.inf)
    l_sc[...] = jnp.zeros_like(l_sc)
    acc_sc[...] = jnp.zeros_like(acc_sc)

  kb = idx_ref[row * max_blocks + j]

  def step(masked):
    logits = cap(cfg, lax.dot_general(q_ref[...], k_ref[...], NT_DIMS,
                                      preferred_element_type=jnp.float32))
    if masked:
      logits = jnp.where(tile_visible(i, kb, cfg), logits, -jnp.inf)
    m_prev = m_sc[...]
    m_next = jnp.maximum(m_prev, jnp.max(logits, axis=-1, keepdims=True))
    # A row that has seen no visible key yet keeps max -inf; shift it by 0 so exp gives 0, not nan.
    m_safe = jnp.where(m_next == -jnp.inf, 0.0, m_next)
    p = jnp.exp(logits - widen(m_safe, cfg.block_k))
    alpha = jnp.exp(m_prev - m_safe)
    l_sc[...] = alpha * l_sc[...] + lax.broadcast_in_dim(jnp.sum(p, axis=-1), m_prev.shape, (0,))
    m_sc[...] = m_next
    v = v_ref[...]
    pv = lax.dot_general(p.astype(v.dtype), v, NN_DIMS, preferred_element_type=jnp.float32)
    acc_sc[...] = acc_sc[...] * widen(alpha, head_dim) + pv

  when_full_or_masked(cfg, j < cnt_ref[row], i, kb, step)

  @pl.when(j == max_blocks - 1)
  def _finish():
    l = l_sc[...]
    empty = l == 0.0  # no visible key: output 0, and lse +inf makes every backward p exactly 0
    inv = jnp.where(empty, 0.0, 1.0 / jnp.where(empty, 1.0, l))
    o_ref[...] = (acc_sc[...] * widen(inv, head_dim)).astype(o_ref.dtype)
    lse_ref[...] = jnp.where(empty, jnp.inf, m_sc[...] + jnp.log(jnp.where(empty, 1.0, l)))


def forward(cfg: Config, q_BHTD, k_BKSD, v_BKSD, kv_idx, kv_cnt):
  """Runs the forward kernel on padded, head-major inputs.

  Args:
    cfg: static sizes.
    q_BHTD: [B, H, T_pad, D] queries, T_pad a multiple of block_q.
    k_BKSD, v_BKSD: [B, Hkv, S_pad, D] keys and values, S_pad a multiple of block_k.
    kv_idx, kv_cnt: normalised table, [B, H, nq, max_blocks] and [B, H, nq].

  Returns:
    o [B, H, T_pad, D] in q's dtype and lse [B, H, T_pad] float32 (+inf on rows that see nothing).
  """
  b, h, t_pad, d = q_BHTD.shape
  max_blocks = kv_idx.shape[-1]
  nq, bq, bk = cfg.num_q_blocks, cfg.block_q, cfg.block_k

  q_map, _, kv_map = table_index_maps(cfg, max_blocks)

  grid_spec = pltpu.PrefetchScalarGridSpec(
      num_scalar_prefetch=2,
      grid=(b, h, nq, max_blocks),
      in_specs=[
          pl.BlockSpec((None, None, bq, d), q_map),
          pl.BlockSpec((None, None, bk, d), kv_map),
          pl.BlockSpec((None, None, bk, d), kv_map),
      ],
      out_specs=[
          pl.BlockSpec((None, None, bq, d), q_map),
          pl.BlockSpec((None, None, bq, NUM_LANES), q_map),
      ],
      scratch_shapes=[
          pltpu.VMEM((bq, NUM_LANES), jnp.float32),
          pltpu.VMEM((bq, NUM_LANES), jnp.float32),
          pltpu.VMEM((bq, d), jnp.float32),
      ],
  )
  o, lse = pl.pallas_call(
      functools.partial(_kernel, cfg=cfg, max_blocks=max_blocks),
      grid_spec=grid_spec,
      out_shape=[
          jax.ShapeDtypeStruct((b, h, t_pad, d), q_BHTD.dtype),
          jax.ShapeDtypeStruct((b, h, t_pad, NUM_LANES), jnp.float32),
      ],
      compiler_params=pltpu.CompilerParams(
          dimension_semantics=("parallel", "parallel", "parallel", "arbitrary")),
      interpret=cfg.interpret,
      name="block_sparse_fwd",
  )(kv_idx.reshape(-1), kv_cnt.reshape(-1), q_BHTD, k_BKSD, v_BKSD)
  return o, lse[..., 0]
