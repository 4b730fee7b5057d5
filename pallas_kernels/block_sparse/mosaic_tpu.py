"""Block-sparse flash attention on TPU (Mosaic) with dynamic per-(batch, head, query-block) tables.

jax's splash attention (``jax.experimental.pallas.ops.tpu.splash_attention``) already serves
masks known when the kernel is built (causal, local, chunked, numpy) and shared by every batch
element; its dynamic variant takes a dense [H, T, S] boolean mask. Content-dependent selectors
(FlexPrefill, MInference's block-sparse pattern, HiP) instead choose different key blocks for each
batch element, head and query block at run time. These kernels take that choice directly as the
compact table read through scalar-prefetched index maps, so their cost scales with the listed
blocks, not with T * S. Forward in ``mosaic_tpu_forward``, dq and dk/dv in
``mosaic_tpu_backward``, the dk/dv walk in ``mosaic_tpu_tables``.
"""

import functools

import jax
import jax.numpy as jnp

from pallas_kernels import common
from pallas_kernels.block_sparse import masks
from pallas_kernels.block_sparse import mosaic_tpu_backward as backward
from pallas_kernels.block_sparse import mosaic_tpu_forward as forward
from pallas_kernels.block_sparse import mosaic_tpu_tables as tables
from pallas_kernels.block_sparse.mosaic_tpu_config import Config


def blocks_fit(block_q: int, block_k: int) -> bool:
  """Mosaic lays sequence blocks along the 128-wide lane axis."""
  return block_q % common.NUM_LANES == 0 and block_k % common.NUM_LANES == 0


def check_block_sizes(block_q: int, block_k: int) -> None:
  for name, value in (("block_q", block_q), ("block_k", block_k)):
    if value % common.NUM_LANES:
      raise ValueError(
          f"block-sparse TPU kernel: {name} must be a positive multiple of {common.NUM_LANES} "
          f"(the TPU lane width, required by Mosaic for sequence blocks), got {value!r}")


def _public_lse(lse):
  """Rows that see nothing carry +inf inside (zero backward probabilities), -inf outside."""
  return jnp.where(lse == jnp.inf, -jnp.inf, lse)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _attend(cfg, q_BHTD, k_BKSD, v_BKSD, kv_idx, kv_cnt, runs):
  o, lse = forward.forward(cfg, q_BHTD, k_BKSD, v_BKSD, kv_idx, kv_cnt)
  return o, _public_lse(lse)


def _attend_fwd(cfg, q_BHTD, k_BKSD, v_BKSD, kv_idx, kv_cnt, runs):
  o, lse = forward.forward(cfg, q_BHTD, k_BKSD, v_BKSD, kv_idx, kv_cnt)
  return (o, _public_lse(lse)), (q_BHTD, k_BKSD, v_BKSD, kv_idx, kv_cnt, runs, o, lse)


def _attend_bwd(cfg, res, cotangents):
  q_BHTD, k_BKSD, v_BKSD, kv_idx, kv_cnt, runs, o, lse = res
  do_BHTD, dlse = cotangents
  # d lse / d logit = p, so the lse cotangent folds into di: ds = p * (dp - (di - dlse)).
  di = jnp.sum(do_BHTD.astype(jnp.float32) * o.astype(jnp.float32), axis=-1) - dlse
  lse_BH1T, di_BH1T = lse[:, :, None, :], di[:, :, None, :]
  do_BHTD = do_BHTD.astype(q_BHTD.dtype)
  args = (q_BHTD, k_BKSD, v_BKSD, lse_BH1T, do_BHTD, di_BH1T)
  dq = backward.dq(cfg, *args, kv_idx, kv_cnt)
  dk, dv = backward.dkv(cfg, *args, runs)
  return dq, dk, dv, None, None, None


_attend.defvjp(_attend_fwd, _attend_bwd)


def _pad_seq(x_BHLD, block):
  return common.pad_axis(x_BHLD, 2, common.round_up(x_BHLD.shape[2], block))


def attention(q, k, v, table: masks.BlockTable, *, causal, scale, window, sinks, softcap,
              interpret):
  """Attention restricted to the listed key blocks; inputs validated by ``api``.

  Args:
    q: [B, T, H, D]; k, v: [B, S, K, D].
    table: full [B, H] leading dims, blocks multiples of 128.
    causal, scale, window, sinks, softcap: the element rule and logit options of ``api``.
    interpret: False to compile for TPU; on CPU, True runs the generic Pallas interpreter and a
      ``pltpu.InterpretParams`` the TPU interpreter (slower; simulates VMEM and DMAs).

  Returns:
    (o [B, T, H, D] in q's dtype, lse [B, H, T] float32, -inf on rows that see nothing).
  """
  _, t, h, _ = q.shape
  s, hkv = k.shape[1], k.shape[2]
  cfg = Config(block_q=table.block_q, block_k=table.block_k, t=t, s=s, heads=h, kv_heads=hkv,
               causal=bool(causal), scale=float(scale), window=window, sinks=sinks,
               softcap=None if softcap is None else float(softcap), interpret=interpret)
  kv_idx, kv_cnt = common.normalize_table(table.kv_idx, table.kv_cnt, cfg.num_kv_blocks)
  # The dk/dv walk is this kernel's transposed table; built here, once per call, outside the vjp.
  runs = tables.key_block_runs(kv_idx, kv_cnt, cfg)
  to_hm = lambda x, blk: _pad_seq(jnp.swapaxes(x, 1, 2), blk)  # [B, L, N, D] -> [B, N, L_pad, D]
  o, lse = _attend(cfg, to_hm(q, table.block_q), to_hm(k, table.block_k),
                   to_hm(v, table.block_k), kv_idx, kv_cnt, runs)
  return jnp.swapaxes(o[:, :, :t], 1, 2), lse[:, :, :t]
