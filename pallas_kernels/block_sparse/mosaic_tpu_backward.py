"""Backward block-sparse flash-attention kernels (Mosaic TPU): one for dq, one for dk and dv.

dq walks the forward table (per query block, its key blocks). dk/dv walks the inverted table
(key block by key block, the (query head, query block) pairs that list it), so each kernel
accumulates its gradient in VMEM and writes it once, with no atomics. Under GQA the dk/dv grid runs
over kv heads and its walk interleaves the query heads of the group, which sums their
contributions in place. The walk is one flat grid axis as long as the forward table (plus a step
per key block), not nk * g * nq: steps are spent only on listed pairs.
Probabilities are recomputed from the forward's log-sum-exp; ``di`` arrives as
rowsum(do * o) - dlse, which also carries the gradient of a returned log-sum-exp.
"""

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from pallas_kernels.block_sparse import mosaic_tpu_tables as tables
from pallas_kernels.block_sparse.mosaic_tpu_config import (Config, cap, table_index_maps,
                                                           tile_visible, uncap_grad,
                                                           when_full_or_masked)
from pallas_kernels.common import NN_DIMS, NT_DIMS


def _dq_kernel(idx_ref, cnt_ref, q_ref, k_ref, v_ref, lse_ref, do_ref, di_ref, dq_ref, dq_sc, *,
               cfg: Config, max_blocks: int):
  b, h, i, j = (pl.program_id(a) for a in range(4))
  row = (b * cfg.heads + h) * cfg.num_q_blocks + i

  @pl.when(j == 0)
  def _init():
    dq_sc[...] = jnp.zeros_like(dq_sc)

  kb = idx_ref[row * max_blocks + j]

  def step(masked):
    k, v = k_ref[...], v_ref[...]
    capped = cap(cfg, lax.dot_general(q_ref[...], k, NT_DIMS, preferred_element_type=jnp.float32))
    logits = jnp.where(tile_visible(i, kb, cfg), capped, -jnp.inf) if masked else capped
    p = jnp.exp(logits - jnp.expand_dims(lse_ref[0], -1))
    dp = lax.dot_general(do_ref[...], v, NT_DIMS, preferred_element_type=jnp.float32)
    ds = uncap_grad(cfg, p * (dp - jnp.expand_dims(di_ref[0], -1)), capped)
    dq_sc[...] += lax.dot_general(ds.astype(k.dtype), k, NN_DIMS,
                                  preferred_element_type=jnp.float32)

  when_full_or_masked(cfg, j < cnt_ref[row], i, kb, step)

  @pl.when(j == max_blocks - 1)
  def _finish():
    dq_ref[...] = (dq_sc[...] * cfg.scale).astype(dq_ref.dtype)


def _dkv_kernel(kb_ref, entry_ref, flag_ref, q_ref, k_ref, v_ref, lse_ref, do_ref, di_ref, dk_ref,
                dv_ref, dk_sc, dv_sc, *, cfg: Config, steps: int):
  b, hk, p = (pl.program_id(a) for a in range(3))
  at = (b * cfg.kv_heads + hk) * steps + p
  flags = flag_ref[at]

  @pl.when((flags & tables.FIRST) != 0)
  def _init():
    dk_sc[...] = jnp.zeros_like(dk_sc)
    dv_sc[...] = jnp.zeros_like(dv_sc)

  i = lax.rem(entry_ref[at], cfg.num_q_blocks)
  kb = kb_ref[at]

  def step(masked):
    q, do = q_ref[...], do_ref[...]
    # Keys-first tiles [block_k, block_q]: the per-query statistics broadcast along sublanes.
    capped_t = cap(cfg, lax.dot_general(k_ref[...], q, NT_DIMS, preferred_element_type=jnp.float32))
    logits_t = capped_t
    if masked:
      logits_t = jnp.where(tile_visible(i, kb, cfg, keys_first=True), capped_t, -jnp.inf)
    p_t = jnp.exp(logits_t - lse_ref[...])
    dv_sc[...] += lax.dot_general(p_t.astype(do.dtype), do, NN_DIMS,
                                  preferred_element_type=jnp.float32)
    dp_t = lax.dot_general(v_ref[...], do, NT_DIMS, preferred_element_type=jnp.float32)
    ds_t = uncap_grad(cfg, p_t * (dp_t - di_ref[...]), capped_t)
    dk_sc[...] += lax.dot_general(ds_t.astype(q.dtype), q, NN_DIMS,
                                  preferred_element_type=jnp.float32)

  when_full_or_masked(cfg, (flags & tables.COMPUTE) != 0, i, kb, step)

  @pl.when((flags & tables.LAST) != 0)
  def _finish():
    dk_ref[...] = (dk_sc[...] * cfg.scale).astype(dk_ref.dtype)
    dv_ref[...] = dv_sc[...].astype(dv_ref.dtype)


def dq(cfg: Config, q_BHTD, k_BKSD, v_BKSD, lse_BH1T, do_BHTD, di_BH1T, kv_idx, kv_cnt):
  """dq [B, H, T_pad, D] from the forward table; lse and di are [B, H, 1, T_pad] float32."""
  b, h, t_pad, d = q_BHTD.shape
  max_blocks = kv_idx.shape[-1]
  nq, bq, bk = cfg.num_q_blocks, cfg.block_q, cfg.block_k

  q_map, row_map, kv_map = table_index_maps(cfg, max_blocks)
  q_spec = pl.BlockSpec((None, None, bq, d), q_map)
  kv_spec = pl.BlockSpec((None, None, bk, d), kv_map)
  row_spec = pl.BlockSpec((None, None, 1, bq), row_map)
  grid_spec = pltpu.PrefetchScalarGridSpec(
      num_scalar_prefetch=2,
      grid=(b, h, nq, max_blocks),
      in_specs=[q_spec, kv_spec, kv_spec, row_spec, q_spec, row_spec],
      out_specs=q_spec,
      scratch_shapes=[pltpu.VMEM((bq, d), jnp.float32)],
  )
  return pl.pallas_call(
      functools.partial(_dq_kernel, cfg=cfg, max_blocks=max_blocks),
      grid_spec=grid_spec,
      out_shape=jax.ShapeDtypeStruct((b, h, t_pad, d), q_BHTD.dtype),
      compiler_params=pltpu.CompilerParams(
          dimension_semantics=("parallel", "parallel", "parallel", "arbitrary")),
      interpret=cfg.interpret,
      name="block_sparse_dq",
  )(kv_idx.reshape(-1), kv_cnt.reshape(-1), q_BHTD, k_BKSD, v_BKSD, lse_BH1T, do_BHTD, di_BH1T)


def dkv(cfg: Config, q_BHTD, k_BKSD, v_BKSD, lse_BH1T, do_BHTD, di_BH1T, runs):
  """(dk, dv) [B, Hkv, S_pad, D] along the walk ``runs`` of :func:`tables.key_block_runs`.

  Grid (B, Hkv, steps): each key block's dk/dv stays in VMEM scratch over its run of consecutive
  steps and its output block index stays put, so it is written back once, after its closing step.
  """
  b, hk, s_pad, d = k_BKSD.shape
  kb_run, entry_run, flag_run = runs
  steps = kb_run.shape[-1]
  nq, g, bq, bk = cfg.num_q_blocks, cfg.group, cfg.block_q, cfg.block_k

  def q_map(bi, hki, p, kb, entry, flags):
    del kb, flags
    e = entry[(bi * hk + hki) * steps + p]
    return bi, hki * g + lax.div(e, nq), lax.rem(e, nq), 0

  def row_map(bi, hki, p, kb, entry, flags):
    del kb, flags
    e = entry[(bi * hk + hki) * steps + p]
    return bi, hki * g + lax.div(e, nq), 0, lax.rem(e, nq)

  def kv_map(bi, hki, p, kb, entry, flags):
    del entry, flags
    return bi, hki, kb[(bi * hk + hki) * steps + p], 0

  q_spec = pl.BlockSpec((None, None, bq, d), q_map)
  kv_spec = pl.BlockSpec((None, None, bk, d), kv_map)
  row_spec = pl.BlockSpec((None, None, 1, bq), row_map)
  grid_spec = pltpu.PrefetchScalarGridSpec(
      num_scalar_prefetch=3,
      grid=(b, hk, steps),
      in_specs=[q_spec, kv_spec, kv_spec, row_spec, q_spec, row_spec],
      out_specs=[kv_spec, kv_spec],
      scratch_shapes=[pltpu.VMEM((bk, d), jnp.float32), pltpu.VMEM((bk, d), jnp.float32)],
  )
  return pl.pallas_call(
      functools.partial(_dkv_kernel, cfg=cfg, steps=steps),
      grid_spec=grid_spec,
      out_shape=[jax.ShapeDtypeStruct((b, hk, s_pad, d), k_BKSD.dtype),
                 jax.ShapeDtypeStruct((b, hk, s_pad, d), v_BKSD.dtype)],
      compiler_params=pltpu.CompilerParams(
          dimension_semantics=("parallel", "parallel", "arbitrary")),
      interpret=cfg.interpret,
      name="block_sparse_dkv",
  )(kb_run.reshape(-1), entry_run.reshape(-1), flag_run.reshape(-1), q_BHTD, k_BKSD, v_BKSD,
    lse_BH1T, do_BHTD, di_BH1T)
