"""Block-sparse attention entry point: validation, padding, ``custom_vjp`` around the GPU kernel.

``block_sparse_attention(q, k, v, table, impl=...)`` runs the gather path (``xla``), the Pallas
Triton kernels (``pallas``) or the Mosaic TPU kernels of ``block_sparse_tpu`` (``pallas_tpu``);
vertical-slash leftover columns are attended by a gather and merged
with the block part through their log-sum-exps, which the kernel's backward also differentiates.
"""

import functools

import jax
import jax.numpy as jnp

from pallas_kernels.block_sparse import kernel_gpu, masks, xla
from pallas_kernels.block_sparse_tpu import ops as tpu_ops

IMPLS = ("xla", "pallas", "pallas_tpu")


def check_options(*, window, sinks, softcap, scale) -> None:
  if window is not None and (isinstance(window, bool) or not isinstance(window, int) or window < 1):
    raise ValueError(
        f"block-sparse attention: window must be a positive int or None, got {window!r}")
  if isinstance(sinks, bool) or not isinstance(sinks, int) or sinks < 0:
    raise ValueError(f"block-sparse attention: sinks must be a non-negative int, got {sinks!r}")
  if sinks and window is None:
    raise ValueError("block-sparse attention: sinks only apply together with a window")
  if softcap is not None and not softcap > 0:
    raise ValueError(f"block-sparse attention: softcap must be positive or None, got {softcap!r}")
  if scale is not None and not scale > 0:
    raise ValueError(f"block-sparse attention: scale must be positive or None, got {scale!r}")


def _fit_table(table: masks.BlockTable, b: int, h: int, t: int) -> masks.BlockTable:
  """Checks the table against q [B, T, H, D] and broadcasts size-1 batch / head dims."""
  masks.check_block_sizes(table.block_q, table.block_k)
  nq = masks.num_blocks(t, table.block_q)
  idx, cnt = table.kv_idx, table.kv_cnt
  if idx.ndim != 4 or cnt.ndim != 3 or idx.shape[:3] != cnt.shape:
    raise ValueError("block-sparse attention: table needs kv_idx [B, H, nq, max_blocks] and "
                     f"kv_cnt [B, H, nq]; got {idx.shape} and {cnt.shape}")
  if idx.shape[2] != nq or idx.shape[0] not in (1, b) or idx.shape[1] not in (1, h):
    raise ValueError(f"block-sparse attention: table leading dims {idx.shape[:3]} do not fit "
                     f"(B={b} or 1, H={h} or 1, nq=ceil(T={t} / block_q={table.block_q})={nq})")
  if not (jnp.issubdtype(idx.dtype, jnp.integer) and jnp.issubdtype(cnt.dtype, jnp.integer)):
    raise ValueError(f"block-sparse attention: kv_idx and kv_cnt must be integer arrays, got "
                     f"{idx.dtype} and {cnt.dtype}")
  idx = jnp.broadcast_to(idx, (b, h) + idx.shape[2:]).astype(jnp.int32)
  cnt = jnp.broadcast_to(cnt, (b, h, nq)).astype(jnp.int32)
  return masks.BlockTable(idx, cnt, table.block_q, table.block_k)


def _pad_axis(x, axis, size):
  pad = [(0, 0)] * x.ndim
  pad[axis] = (0, size - x.shape[axis])
  return jnp.pad(x, pad)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6))
def _kernel_attention(q, k, v, kv_idx, kv_cnt, spec, interpret):
  return kernel_gpu.forward(q, k, v, kv_idx, kv_cnt, spec=spec, interpret=interpret)


def _kernel_fwd(q, k, v, kv_idx, kv_cnt, spec, interpret):
  o, lse = kernel_gpu.forward(q, k, v, kv_idx, kv_cnt, spec=spec, interpret=interpret)
  return (o, lse), (q, k, v, kv_idx, kv_cnt, o, lse)


def _kernel_bwd(spec, interpret, res, cotangents):
  q, k, v, kv_idx, kv_cnt, o, lse = res
  do, dlse = cotangents
  # d lse / d logits is the softmax itself, so an lse cotangent folds into the row offset.
  delta = jnp.einsum("bthd,bthd->bht", o.astype(jnp.float32), do.astype(jnp.float32)) - dlse
  nk = k.shape[1] // spec.block_k
  q_idx, q_cnt = masks.transpose_table(
      masks.BlockTable(kv_idx, kv_cnt, spec.block_q, spec.block_k), nk)
  dq, dk, dv = kernel_gpu.backward(q, k, v, do.astype(q.dtype), lse, delta, kv_idx, kv_cnt,
                                   q_idx, q_cnt, spec=spec, interpret=interpret)
  return dq, dk, dv, None, None


_kernel_attention.defvjp(_kernel_fwd, _kernel_bwd)


def _pallas_blocks(q, k, v, table, *, causal, scale, window, sinks, softcap, interpret):
  """Pads T, S to the blocks and D to a power of two >= 16, then runs the kernel."""
  kernel_gpu.check_block_sizes(table.block_q, table.block_k)
  t, s, d = q.shape[1], k.shape[1], q.shape[3]
  tp = masks.num_blocks(t, table.block_q) * table.block_q
  sp = masks.num_blocks(s, table.block_k) * table.block_k
  dp = max(kernel_gpu.MIN_BLOCK, 1 << (d - 1).bit_length())
  q_p = _pad_axis(_pad_axis(q, 1, tp), 3, dp)
  k_p = _pad_axis(_pad_axis(k, 1, sp), 3, dp)
  v_p = _pad_axis(_pad_axis(v, 1, sp), 3, dp)
  spec = kernel_gpu.Spec(seq_q=t, seq_k=s, block_q=table.block_q, block_k=table.block_k,
                         scale=float(scale), causal=causal, window=window, sinks=sinks,
                         softcap=None if softcap is None else float(softcap))
  o, lse = _kernel_attention(q_p, k_p, v_p, table.kv_idx, table.kv_cnt, spec, interpret)
  return o[:, :t, :, :d], lse[:, :, :t]


def block_sparse_attention(q, k, v, mask, *, causal=True, scale=None, window=None, sinks=0,
                           softcap=None, impl="xla", interpret=False, return_lse=False):
  """Attention restricted to the key blocks (and columns) a table lists per query block.

  Args:
    q: [B, T, H, D] queries; k, v: [B, S, Hkv, D], Hkv dividing H (GQA).
    mask: :class:`masks.BlockTable`, or :class:`masks.VerticalSlash` for blocks plus columns;
      batch and head dims may be 1 to broadcast.
    causal: queries are the last T of the S positions; applied element-wise inside blocks.
    scale: logit scale, default 1 / sqrt(D).
    window, sinks: optional element-wise sliding window (and sink tokens) inside listed blocks.
    softcap: optional tanh logit cap.
    impl: ``xla`` (gather path, any backend), ``pallas`` (GPU Triton kernel) or ``pallas_tpu``
      (TPU Mosaic kernel; blocks must be multiples of 128).
    interpret: run the Pallas kernel in interpret mode (CPU tests).
    return_lse: also return the float32 log-sum-exp [B, H, T] (-inf for rows that see nothing).

  Returns:
    [B, T, H, D] in q's dtype (rows that see no key are 0), and lse when requested.
  """
  if impl not in IMPLS:
    raise ValueError(f"block-sparse attention: unknown impl {impl!r}; allowed: {list(IMPLS)}")
  if not isinstance(mask, (masks.BlockTable, masks.VerticalSlash)):
    raise ValueError("block-sparse attention: mask must be a BlockTable or VerticalSlash, got "
                     f"{type(mask).__name__}")
  check_options(window=window, sinks=sinks, softcap=softcap, scale=scale)
  b, t, h, d = q.shape
  if k.ndim != 4 or k.shape != v.shape or k.shape[0] != b or k.shape[3] != d or h % k.shape[2]:
    raise ValueError(f"block-sparse attention: need q [B, T, H, D], k = v [B, S, Hkv, D] with Hkv "
                     f"dividing H; got q {q.shape}, k {k.shape}, v {v.shape}")
  scale = d ** -0.5 if scale is None else scale
  table = mask.table if isinstance(mask, masks.VerticalSlash) else mask
  table = _fit_table(table, b, h, t)
  opts = dict(causal=causal, scale=scale, window=window, sinks=sinks, softcap=softcap)
  if impl == "pallas":
    o, lse = _pallas_blocks(q, k, v, table, interpret=interpret, **opts)
  elif impl == "pallas_tpu":
    o, lse = tpu_ops.block_sparse_attention_tpu(
        q, k, v, table.kv_idx, table.kv_cnt, block_q=table.block_q, block_k=table.block_k,
        return_lse=True, interpret=interpret, **opts)
  else:
    o, lse = xla.blocks_attention(q, k, v, table, **opts)
  if isinstance(mask, masks.VerticalSlash):
    nq = table.kv_cnt.shape[2]
    col_idx = jnp.broadcast_to(mask.col_idx, (b, h, nq, mask.col_idx.shape[-1])).astype(jnp.int32)
    col_cnt = jnp.broadcast_to(mask.col_cnt, (b, h, nq)).astype(jnp.int32)
    o_col, lse_col = xla.columns_attention(q, k, v, col_idx, col_cnt, block_q=table.block_q,
                                           **opts)
    o, lse = xla.merge(o, lse, o_col, lse_col)
  return (o, lse) if return_lse else o
