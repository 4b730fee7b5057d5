"""Block-sparse flash attention for GPU: Pallas Triton forward and backward kernels.

One program per (batch, query head, query block) walks only the ``kv_cnt`` listed key blocks of
its table row, so unlisted blocks cost nothing. The Triton backend has no scalar prefetch, so the
table row is an ordinary input and each key block is sliced out of the resident K/V by its index.
Blocks the element rule keeps whole skip the mask (a scalar branch per block). The backward pass
is two kernels: dq per query block (same walk as the forward) and dk/dv per key block, walking
the transposed table (the query blocks that list that key block). dk/dv come out per query head
and are summed over each GQA group afterwards.

Inputs arrive validated from ``api``; :func:`attention` pads T and S to multiples of the blocks
and D to a power of two.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from jaxllm.attention.masks import visible_pairs
from pallas_kernels import common
from pallas_kernels.block_sparse import masks


def blocks_fit(block_q: int, block_k: int) -> bool:
  """Triton tiles must be powers of two, and at least 16 for tensor-core dots."""
  return all(b >= common.TRITON_MIN_TILE and common.is_pow2(b) for b in (block_q, block_k))


def check_block_sizes(block_q: int, block_k: int) -> None:
  for name, value in (("block_q", block_q), ("block_k", block_k)):
    if value < common.TRITON_MIN_TILE or not common.is_pow2(value):
      raise ValueError(f"block-sparse GPU kernel: {name} must be a power of two >= "
                       f"{common.TRITON_MIN_TILE}, got {value}")


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

  def full(self, qi, kj):
    return masks.block_is_full(qi, kj, seq_q=self.seq_q, seq_k=self.seq_k, block_q=self.block_q,
                               block_k=self.block_k, causal=self.causal, window=self.window,
                               sinks=self.sinks)


def _logits(spec, q, k, qi, kj, masked):
  """Scaled (capped) logits of query block qi and key block kj, with their visibility mask.

  Returns (s, ok, tanh): ``ok`` is None on a full block; tanh is the capped ratio the backward
  pass needs (or None).
  """
  s = plgpu.dot(q, k, trans_b=True) * spec.scale
  cap = None
  if spec.softcap is not None:
    cap = jnp.tanh(s / spec.softcap)
    s = spec.softcap * cap
  if not masked:
    return s, None, cap
  rows = qi * spec.block_q + jax.lax.broadcasted_iota(jnp.int32, (spec.block_q, 1), 0)
  cols = kj * spec.block_k + jax.lax.broadcasted_iota(jnp.int32, (1, spec.block_k), 1)
  ok = visible_pairs(rows + (spec.seq_k - spec.seq_q), cols, causal=spec.causal,
                     window=spec.window, sinks=spec.sinks)
  ok &= (rows < spec.seq_q) & (cols < spec.seq_k)
  return s, ok, cap


def _where(ok, x, other):
  return x if ok is None else jnp.where(ok, x, other)


def _branch(spec, qi, kj, step, *operands):
  """Runs ``step(masked, *operands)``, skipping the element mask when the block is full."""
  return jax.lax.cond(spec.full(qi, kj), functools.partial(step, False),
                      functools.partial(step, True), *operands)


def _fwd_kernel(idx_ref, cnt_ref, q_ref, k_ref, v_ref, o_ref, lse_ref, *, spec):
  qi = pl.program_id(2)
  q = q_ref[...]
  bq, d = q.shape
  bk = spec.block_k

  def step(masked, kj, acc, m, l):
    start = pl.multiple_of(kj * bk, bk)
    k = k_ref[pl.ds(start, bk), :]
    v = v_ref[pl.ds(start, bk), :]
    s, ok, _ = _logits(spec, q, k, qi, kj, masked)
    m_new = jnp.maximum(m, jnp.max(_where(ok, s, -jnp.inf), axis=1))
    m_safe = jnp.where(m_new > -jnp.inf, m_new, 0.0)
    p = _where(ok, jnp.exp(s - m_safe[:, None]), 0.0)
    alpha = jnp.exp(m - m_safe)
    acc = alpha[:, None] * acc + plgpu.dot(p.astype(v.dtype), v)
    return acc, m_new, alpha * l + jnp.sum(p, axis=1)

  def body(j, carry):
    kj = idx_ref[j]
    return _branch(spec, qi, kj, step, kj, *carry)

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

  def step(masked, kj, dq):
    start = pl.multiple_of(kj * bk, bk)
    k = k_ref[pl.ds(start, bk), :]
    v = v_ref[pl.ds(start, bk), :]
    s, ok, cap = _logits(spec, q, k, qi, kj, masked)
    p = _where(ok, jnp.exp(s - lse[:, None]), 0.0)
    ds = p * (plgpu.dot(do, v, trans_b=True) - delta[:, None])
    if cap is not None:
      ds = ds * (1.0 - cap * cap)
    return dq + plgpu.dot(ds.astype(k.dtype), k)

  def body(j, dq):
    kj = idx_ref[j]
    return _branch(spec, qi, kj, step, kj, dq)

  dq = jax.lax.fori_loop(0, cnt_ref[0], body, jnp.zeros(q.shape, jnp.float32))
  dq_ref[...] = (dq * spec.scale).astype(dq_ref.dtype)


def _dkv_kernel(idx_ref, cnt_ref, q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, dk_ref,
                dv_ref, *, spec):
  kj = pl.program_id(2)
  k, v = k_ref[...], v_ref[...]
  bq = spec.block_q

  def step(masked, qi, dk, dv):
    start = pl.multiple_of(qi * bq, bq)
    q = q_ref[pl.ds(start, bq), :]
    do = do_ref[pl.ds(start, bq), :]
    lse = lse_ref[pl.ds(start, bq)]
    delta = delta_ref[pl.ds(start, bq)]
    s, ok, cap = _logits(spec, q, k, qi, kj, masked)
    p = _where(ok, jnp.exp(s - lse[:, None]), 0.0)
    dv = dv + plgpu.dot(p.astype(do.dtype), do, trans_a=True)
    ds = p * (plgpu.dot(do, v, trans_b=True) - delta[:, None])
    if cap is not None:
      ds = ds * (1.0 - cap * cap)
    return dk + plgpu.dot(ds.astype(q.dtype), q, trans_a=True), dv

  def body(n, carry):
    qi = idx_ref[n]
    return _branch(spec, qi, kj, step, qi, *carry)

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
  """q [B, Tp, H, D], k/v [B, Sp, K, D] padded -> (o [B, Tp, H, D], lse [B, H, Tp] f32)."""
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


@functools.partial(jax.custom_vjp, nondiff_argnums=(7, 8))
def _attend(q, k, v, kv_idx, kv_cnt, q_idx, q_cnt, spec, interpret):
  return forward(q, k, v, kv_idx, kv_cnt, spec=spec, interpret=interpret)


def _attend_fwd(q, k, v, kv_idx, kv_cnt, q_idx, q_cnt, spec, interpret):
  o, lse = forward(q, k, v, kv_idx, kv_cnt, spec=spec, interpret=interpret)
  return (o, lse), (q, k, v, kv_idx, kv_cnt, q_idx, q_cnt, o, lse)


def _attend_bwd(spec, interpret, res, cotangents):
  q, k, v, kv_idx, kv_cnt, q_idx, q_cnt, o, lse = res
  do, dlse = cotangents
  # d lse / d logits is the softmax itself, so an lse cotangent folds into the row offset.
  delta = jnp.einsum("bthd,bthd->bht", o.astype(jnp.float32), do.astype(jnp.float32)) - dlse
  dq, dk, dv = backward(q, k, v, do.astype(q.dtype), lse, delta, kv_idx, kv_cnt, q_idx, q_cnt,
                        spec=spec, interpret=interpret)
  return dq, dk, dv, None, None, None, None


_attend.defvjp(_attend_fwd, _attend_bwd)


def attention(q, k, v, table: masks.BlockTable, *, causal, scale, window, sinks, softcap,
              interpret):
  """Pads T, S to the blocks and D to a power of two >= 16, then runs the kernels.

  ``table`` has full [B, H] leading dims and carries its transpose. Returns (o, lse [B, H, T]).
  """
  t, s, d = q.shape[1], k.shape[1], q.shape[3]
  tp = masks.num_blocks(t, table.block_q) * table.block_q
  sp = masks.num_blocks(s, table.block_k) * table.block_k
  dp = common.pow2_at_least(d, common.TRITON_MIN_TILE)
  q_p = common.pad_axis(common.pad_axis(q, 1, tp), 3, dp)
  k_p = common.pad_axis(common.pad_axis(k, 1, sp), 3, dp)
  v_p = common.pad_axis(common.pad_axis(v, 1, sp), 3, dp)
  spec = Spec(seq_q=t, seq_k=s, block_q=table.block_q, block_k=table.block_k, scale=float(scale),
              causal=causal, window=window, sinks=sinks,
              softcap=None if softcap is None else float(softcap))
  o, lse = _attend(q_p, k_p, v_p, table.kv_idx, table.kv_cnt, table.q_idx, table.q_cnt, spec,
                   interpret)
  return o[:, :t, :, :d], lse[:, :, :t]
