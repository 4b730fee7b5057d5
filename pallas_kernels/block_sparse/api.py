"""Block-sparse attention: the one entry point, its validation and its dispatch.

``block_sparse_attention(q, k, v, table, impl=...)`` runs one of :data:`IMPLEMENTATIONS`, in
order of preference: the Mosaic TPU kernels, the Triton GPU kernels, the XLA gather path. ``impl``
is ``xla``, ``pallas`` (this platform's kernel: Mosaic on TPU, Triton on GPU, interpreted Triton
elsewhere; see ``pallas_kernels.common.interpret_as`` for the other one) or ``auto`` (the native
kernel when the blocks fit it, else the gather path). Vertical-slash leftover columns are
attended by a gather and merged with the block part through their log-sum-exps, which every
backend's backward also differentiates.
"""

import dataclasses

import jax.numpy as jnp

from pallas_kernels import common
from pallas_kernels.block_sparse import masks, mosaic_tpu, triton, xla


@dataclasses.dataclass(frozen=True)
class Implementation:
  """One backend: its kernel platform (None for the xla path), block rule and entry function."""
  platform: str | None
  blocks_fit: callable
  check_block_sizes: callable
  run: callable  # (q, k, v, table, *, causal, scale, window, sinks, softcap, interpret) -> (o, lse)


def _xla_run(q, k, v, table, *, interpret, **opts):
  del interpret
  return xla.blocks_attention(q, k, v, table, **opts)


IMPLEMENTATIONS = {
    "mosaic_tpu": Implementation("tpu", mosaic_tpu.blocks_fit, mosaic_tpu.check_block_sizes,
                                 mosaic_tpu.attention),
    "triton": Implementation("gpu", triton.blocks_fit, triton.check_block_sizes, triton.attention),
    "xla": Implementation(None, lambda bq, bk: True, lambda bq, bk: None, _xla_run),
}
_FLOAT_DTYPES = (jnp.float32, jnp.bfloat16, jnp.float16)


def _by_platform(platform):
  return next(name for name, i in IMPLEMENTATIONS.items() if i.platform == platform)


def _check_options(*, window, sinks, softcap, scale) -> None:
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


def _check_inputs(q, k, v):
  if q.ndim != 4 or k.ndim != 4 or k.shape != v.shape:
    raise ValueError("block-sparse attention: need q [B, T, H, D], k = v [B, S, K, D]; got "
                     f"q {q.shape}, k {k.shape}, v {v.shape}")
  b, _, h, d = q.shape
  if k.shape[0] != b or k.shape[3] != d:
    raise ValueError(f"block-sparse attention: k/v {k.shape} must share B and D with q {q.shape}")
  if k.shape[2] == 0 or h % k.shape[2]:
    raise ValueError(f"block-sparse attention: query heads H={h} must be a multiple of kv heads "
                     f"K={k.shape[2]}")
  if not (q.dtype == k.dtype == v.dtype) or q.dtype not in _FLOAT_DTYPES:
    raise ValueError("block-sparse attention: q, k, v must share one dtype among float32, "
                     f"bfloat16, float16; got {q.dtype}, {k.dtype}, {v.dtype}")


def _fit_heads(x, name, b, h, hkv):
  """Broadcasts a table array's [B or 1, H, K or 1] leading dims to [B, H]."""
  if x.shape[0] not in (1, b) or x.shape[1] not in (1, hkv, h):
    raise ValueError(f"block-sparse attention: table {name} leading dims {x.shape[:2]} do not fit "
                     f"(B={b} or 1, heads H={h}, K={hkv} or 1)")
  if x.shape[1] == hkv and hkv not in (1, h):  # one selection per GQA group
    x = jnp.repeat(x, h // hkv, axis=1)
  return jnp.broadcast_to(x, (b, h) + x.shape[2:]).astype(jnp.int32)


def _fit_table(table: masks.BlockTable, b, t, s, h, hkv) -> masks.BlockTable:
  """Checks the table against q [B, T, H, D] and k [B, S, K, D]; broadcasts it to [B, H]."""
  nq, nk = masks.num_blocks(t, table.block_q), masks.num_blocks(s, table.block_k)
  idx, cnt = table.kv_idx, table.kv_cnt
  if idx.ndim != 4 or cnt.ndim != 3 or idx.shape[:3] != cnt.shape or idx.shape[3] < 1:
    raise ValueError("block-sparse attention: table needs kv_idx [B, N, nq, max_blocks] and "
                     f"kv_cnt [B, N, nq]; got {idx.shape} and {cnt.shape}")
  if idx.shape[2] != nq:
    raise ValueError(f"block-sparse attention: table has {idx.shape[2]} query blocks, need "
                     f"nq=ceil(T={t} / block_q={table.block_q})={nq}")
  arrays = {"kv_idx": idx, "kv_cnt": cnt}
  if table.q_idx is not None:
    if table.q_idx.ndim != 4 or table.q_idx.shape[2:] != (nk, nq) or table.q_cnt is None:
      raise ValueError(f"block-sparse attention: table q_idx must be [B, N, nk={nk}, nq={nq}] "
                       f"with q_cnt [B, N, nk]; got {table.q_idx.shape}")
    arrays.update(q_idx=table.q_idx, q_cnt=table.q_cnt)
  for name, x in arrays.items():
    if not jnp.issubdtype(x.dtype, jnp.integer):
      raise ValueError(f"block-sparse attention: table {name} must be an integer array, got "
                       f"{x.dtype}")
  fitted = {name: _fit_heads(x, name, b, h, hkv) for name, x in arrays.items()}
  return dataclasses.replace(table, **fitted)


def _columns(mask, b, h, hkv, nq):
  col_idx = _fit_heads(mask.col_idx, "col_idx", b, h, hkv)
  col_cnt = _fit_heads(mask.col_cnt, "col_cnt", b, h, hkv)
  return jnp.broadcast_to(col_idx, (b, h, nq, col_idx.shape[-1])), col_cnt


def block_sparse_attention(q, k, v, mask, *, causal=True, scale=None, window=None, sinks=0,
                           softcap=None, impl="auto", interpret=None, return_lse=False,
                           segment_ids=None):
  """Attention restricted to the key blocks (and columns) a table lists per query block.

  Args:
    q: [B, T, H, D] queries; k, v: [B, S, K, D], K dividing H (GQA).
    mask: :class:`masks.BlockTable`, or :class:`masks.VerticalSlash` for blocks plus columns;
      batch dim B or 1, head dim H, K (one selection per GQA group) or 1.
    causal: queries are the last T of the S positions; applied element-wise inside blocks.
    scale: logit scale, default 1 / sqrt(D).
    window, sinks: optional element-wise sliding window (and sink tokens) inside listed blocks.
    softcap: optional tanh logit cap.
    impl: ``xla`` (gather path, any backend), ``pallas`` (this platform's kernel; Triton blocks
      are powers of two >= 16, Mosaic blocks multiples of 128) or ``auto``.
    interpret: None interprets the kernel only off its hardware; True (or a
      ``pltpu.InterpretParams`` for the Mosaic kernel) forces the interpreter.
    return_lse: also return the float32 log-sum-exp [B, H, T] of the (capped) logits, -inf on
      rows that see nothing; it is differentiable too (for merging with other attention parts).
    segment_ids: optional int [B, S] document ids of packed rows, applied element-wise inside the
      listed blocks; the gather path only (``auto`` takes it, ``pallas`` refuses).

  Returns:
    [B, T, H, D] in q's dtype (rows that see no key are 0), and lse when requested.
    Differentiable in q, k, v.
  """
  common.check_impl("block-sparse attention", impl)
  if not isinstance(mask, (masks.BlockTable, masks.VerticalSlash)):
    raise ValueError("block-sparse attention: mask must be a BlockTable or VerticalSlash, got "
                     f"{type(mask).__name__}")
  _check_options(window=window, sinks=sinks, softcap=softcap, scale=scale)
  _check_inputs(q, k, v)
  b, t, h, d = q.shape
  s, hkv = k.shape[1], k.shape[2]
  table = mask.table if isinstance(mask, masks.VerticalSlash) else mask
  masks.check_block_sizes(table.block_q, table.block_k)
  platform, interpret = common.choose(
      "block-sparse attention", impl, interpret,
      fits=lambda p: segment_ids is None and IMPLEMENTATIONS[_by_platform(p)].blocks_fit(
          table.block_q, table.block_k))
  name = "xla" if platform is None else _by_platform(platform)
  if segment_ids is not None and name != "xla":
    raise ValueError(f"block-sparse attention: the {name} kernel takes no segment_ids; use "
                     "impl='xla' or 'auto' (the gather path) for packed rows")
  seg = {} if segment_ids is None else {"segment_ids": segment_ids}
  backend = IMPLEMENTATIONS[name]
  backend.check_block_sizes(table.block_q, table.block_k)
  table = _fit_table(table, b, t, s, h, hkv)
  if name == "triton" and table.q_idx is None:
    table = masks.with_transpose(table, s)
  opts = dict(causal=bool(causal), scale=d ** -0.5 if scale is None else float(scale),
              window=window, sinks=sinks, softcap=softcap)
  o, lse = backend.run(q, k, v, table, interpret=interpret, **opts, **seg)
  if isinstance(mask, masks.VerticalSlash):
    col_idx, col_cnt = _columns(mask, b, h, hkv, table.kv_cnt.shape[2])
    o_col, lse_col = xla.columns_attention(q, k, v, col_idx, col_cnt, block_q=table.block_q,
                                           **opts, **seg)
    o, lse = xla.merge(o, lse, o_col, lse_col)
  return (o, lse) if return_lse else o
