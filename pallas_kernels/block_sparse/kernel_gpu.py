"""Block-sparse flash attention for GPU: Pallas Triton-style forward and backward kernels.

One program per (batch, query head, query block) walks only the ``kv_cnt`` listed key blocks of
its table row, so unlisted blocks cost nothing. The Triton backend has no scalar prefetch, so the
table row is an ordinary input and each key block is sliced out of the resident K/V by its index.
The backward pass is two kernels: dq per query block (same walk as the forward) and dk/dv per key
block, walking the transposed table (the query blocks that list that key block). dk/dv come out
per query head and are summed over each GQA group afterwards.

All arrays reach these functions padded: T and S to multiples of the blocks, D to a power of two.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from pallas_kernels.block_sparse.reference import position_mask

MIN_BLOCK = 16  # smallest tile tl.dot accepts


def _is_pow2(n: int) -> bool:
  return n >= 1 and n & (n - 1) == 0


def blocks_fit(block_q: int, block_k: int) -> bool:
  """Triton tiles must be powers of two, and at least 16 for tensor-core dots."""
  return all(b >= MIN_BLOCK and _is_pow2(b) for b in (block_q, block_k))


def check_block_sizes(block_q: int, block_k: int) -> None:
  for name, value in (("block_q", block_q), ("block_k", block_k)):
    if value < MIN_BLOCK or not _is_pow2(value):
      raise ValueError(f"block-sparse GPU kernel: {name} must be a power of two >= {MIN_BLOCK}, "
                       f"got {value}")


@dataclasses.dataclass(frozen=True)
class Spec:
  """Static description shared by the three kernels (true, unpadded sequence lengths)."""
  seq_q: int
  seq_k: int
  block_q: int
  block_k: int
  scale: float
  causal: bool
  window: int | None
  sinks: int
  softcap: float | None


def _logits(spec, q, k, qi, kj):
  """Scaled (capped) logits of query block qi and key block kj, with their visibility mask.

  Returns (s, ok, tanh) where tanh is the capped ratio needed by the backward pass (or None).
  """
  s = plgpu.dot(q, k, trans_b=True) * spec.scale
  cap = None
  if spec.softcap is not None:
    cap = jnp.tanh(s / spec.softcap)
    s = spec.softcap * cap
  rows = qi * spec.block_q + jax.lax.broadcasted_iota(jnp.int32, (spec.block_q, 1), 0)
  cols = kj * spec.block_k + jax.lax.broadcasted_iota(jnp.int32, (1, spec.block_k), 1)
  ok = position_mask(rows + (spec.seq_k - spec.seq_q), cols, causal=spec.causal,
                     window=spec.window, sinks=spec.sinks)
  ok &= (rows < spec.seq_q) & (cols < spec.seq_k)
  return s, ok, cap


def _fwd_kernel(idx_ref, cnt_ref, q_ref, k_ref, v_ref, o_ref, lse_ref, *, spec):
  qi = pl.program_id(2)
  q = q_ref[...]
  bq, d = q.shape
  bk = spec.block_k

  def body(j, carry):
    acc, m, l = carry
    kj = idx_ref[j]
    start = pl.multiple_of(kj * bk, bk)
    k = k_ref[pl.ds(start, bk), :]
    v = v_ref[pl.ds(start, bk), :]
    s, ok, _ = _logits(spec, q, k, qi, kj)
    m_new = jnp.maximum(m, jnp.max(jnp.where(ok, s, -jnp.inf), axis=1))
    m_safe = jnp.where(m_new > -jnp.inf, m_new, 0.0)
    p = jnp.where(ok, jnp.exp(s - m_safe[:, None]), 0.0)
    alpha = jnp.exp(m - m_safe)
    acc = alpha[:, None] * acc + plgpu.dot(p.astype(v.dtype), v)
    return acc, m_new, alpha * l + jnp.sum(p, axis=1)

  init = (jnp.zeros((bq, d), jnp.float32), jnp.full((bq,), -jnp.inf, jnp.float32),
          jnp.zeros((bq,), jnp.float32))
  acc, m, l = jax.lax.fori_loop(0, cnt_ref[0], body, init)
  has = l > 0
  safe = jnp.where(has, l, 1.0)
  o_ref[...] = (acc / safe[:, None]).astype(o_ref.dtype)
  lse_ref[...] = jnp.where(has, m + jnp.log(safe), -jnp.inf)


def _dq_kernel(idx_ref, cnt_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, dq_ref, *, spec):
  qi = pl.program_id(2)
  q, do = q_ref[...], do_ref[...]
  lse, delta = lse_ref[...], delta_ref[...]
  bk = spec.block_k

  def body(j, dq):
    kj = idx_ref[j]
    start = pl.multiple_of(kj * bk, bk)
    k = k_ref[pl.ds(start, bk), :]
    v = v_ref[pl.ds(start, bk), :]
    s, ok, cap = _logits(spec, q, k, qi, kj)
    p = jnp.where(ok, jnp.exp(s - lse[:, None]), 0.0)
    ds = p * (plgpu.dot(do, v, trans_b=True) - delta[:, None])
    if cap is not None:
      ds = ds * (1.0 - cap * cap)
    return dq + plgpu.dot(ds.astype(k.dtype), k)

  dq = jax.lax.fori_loop(0, cnt_ref[0], body, jnp.zeros(q.shape, jnp.float32))
  dq_ref[...] = (dq * spec.scale).astype(dq_ref.dtype)


def _dkv_kernel(idx_ref, cnt_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, dk_ref,
                dv_ref, *, spec):
  kj = pl.program_id(2)
  k, v = k_ref[...], v_ref[...]
  bq = spec.block_q

  def body(n, carry):
    dk, dv = carry
    qi = idx_ref[n]
    start = pl.multiple_of(qi * bq, bq)
    q = q_ref[pl.ds(start, bq), :]
    do = do_ref[pl.ds(start, bq), :]
    lse = lse_ref[pl.ds(start, bq)]
    delta = delta_ref[pl.ds(start, bq)]
    s, ok, cap = _logits(spec, q, k, qi, kj)
    p = jnp.where(ok, jnp.exp(s - lse[:, None]), 0.0)
    dv = dv + plgpu.dot(p.astype(do.dtype), do, trans_a=True)
    ds = p * (plgpu.dot(do, v, trans_b=True) - delta[:, None])
    if cap is not None:
      ds = ds * (1.0 - cap * cap)
    return dk + plgpu.dot(ds.astype(q.dtype), q, trans_a=True), dv

  zeros = jnp.zeros(k.shape, jnp.float32)
  dk, dv = jax.lax.fori_loop(0, cnt_ref[0], body, (zeros, zeros))
  dk_ref[...] = dk * spec.scale
  dv_ref[...] = dv


def _params(d):
  return plgpu.CompilerParams(num_warps=4 if d <= 64 else 8, num_stages=2)


def _row_spec(block, d):
  """[B, L, N, D] blocks of ``block`` rows for grid point (b, h, i) on head h."""
  return pl.BlockSpec((None, block, None, d), lambda b, h, i: (b, i, h, 0))


def _kv_full_spec(length, d, group):
  """Whole [L, D] sequence of the kv head serving query head h."""
  return pl.BlockSpec((None, length, None, d), lambda b, h, i: (b, 0, h // group, 0))


def _table_specs(width):
  return [pl.BlockSpec((None, None, None, width), lambda b, h, i: (b, h, i, 0)),
          pl.BlockSpec((None, None, None, 1), lambda b, h, i: (b, h, i, 0))]


def forward(q, k, v, kv_idx, kv_cnt, *, spec, interpret):
  """q [B, Tp, H, D], k/v [B, Sp, Hkv, D] padded -> (o [B, Tp, H, D], lse [B, H, Tp] f32)."""
  b, tp, h, d = q.shape
  sp, hkv = k.shape[1], k.shape[2]
  nq = tp // spec.block_q
  return pl.pallas_call(
      functools.partial(_fwd_kernel, spec=spec),
      grid=(b, h, nq),
      in_specs=_table_specs(kv_idx.shape[-1]) + [
          _row_spec(spec.block_q, d), _kv_full_spec(sp, d, h // hkv),
          _kv_full_spec(sp, d, h // hkv)],
      out_specs=[_row_spec(spec.block_q, d),
                 pl.BlockSpec((None, None, spec.block_q), lambda b, h, i: (b, h, i))],
      out_shape=[jax.ShapeDtypeStruct(q.shape, q.dtype),
                 jax.ShapeDtypeStruct((b, h, tp), jnp.float32)],
      compiler_params=_params(d), interpret=interpret, name="block_sparse_fwd",
  )(kv_idx, kv_cnt[..., None], q, k, v)


def backward(q, k, v, do, lse, delta, kv_idx, kv_cnt, q_idx, q_cnt, *, spec, interpret):
  """Gradients (dq, dk, dv); ``delta`` = rowsum(do * o) - d lse, [B, H, Tp] float32.

  ``q_idx`` [B, H, nk, nq] / ``q_cnt`` [B, H, nk] list the query blocks of each key block.
  """
  b, tp, h, d = q.shape
  sp, hkv = k.shape[1], k.shape[2]
  group = h // hkv
  nq, nk = tp // spec.block_q, sp // spec.block_k
  vec_q = pl.BlockSpec((None, None, spec.block_q), lambda b, h, i: (b, h, i))
  dq = pl.pallas_call(
      functools.partial(_dq_kernel, spec=spec),
      grid=(b, h, nq),
      in_specs=_table_specs(kv_idx.shape[-1]) + [
          _row_spec(spec.block_q, d), _kv_full_spec(sp, d, group), _kv_full_spec(sp, d, group),
          _row_spec(spec.block_q, d), vec_q, vec_q],
      out_specs=_row_spec(spec.block_q, d),
      out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
      compiler_params=_params(d), interpret=interpret, name="block_sparse_dq",
  )(kv_idx, kv_cnt[..., None], q, k, v, do, lse, delta)

  q_full = pl.BlockSpec((None, tp, None, d), lambda b, h, i: (b, 0, h, 0))
  vec_full = pl.BlockSpec((None, None, tp), lambda b, h, i: (b, h, 0))
  kv_blk = pl.BlockSpec((None, spec.block_k, None, d), lambda b, h, i: (b, i, h // group, 0))
  per_head = jax.ShapeDtypeStruct((b, sp, h, d), jnp.float32)
  dk, dv = pl.pallas_call(
      functools.partial(_dkv_kernel, spec=spec),
      grid=(b, h, nk),
      in_specs=_table_specs(q_idx.shape[-1]) + [q_full, kv_blk, kv_blk, q_full, vec_full,
                                                vec_full],
      out_specs=[_row_spec(spec.block_k, d), _row_spec(spec.block_k, d)],
      out_shape=[per_head, per_head],
      compiler_params=_params(d), interpret=interpret, name="block_sparse_dkv",
  )(q_idx, q_cnt[..., None], q, k, v, do, lse, delta)
  fold = lambda x: x.reshape(b, sp, hkv, group, d).sum(axis=3).astype(k.dtype)
  return dq, fold(dk), fold(dv)
