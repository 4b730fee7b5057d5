"""TPU (Mosaic) Pallas kernels for chunked decayed linear attention, forward and backward.

The grid is (B, H, chunks) with the chunk axis sequential ("arbitrary"): the [D, E] float32 state
lives in a VMEM scratch buffer across the chunk steps, so only one [C, D] tile of each input is
resident at a time (any T fits). The per-head log decay is scalar-prefetched into SMEM. The dk/dv
pass walks the chunks in reverse through its index maps, carrying the state adjoint in scratch.

Layout: q, k [B, H, Tp, D], v [B, H, Tp, E] (``api`` transposes and pads): tiles are (C, D) with C a
multiple of 8 and D, E multiples of 128 or the full dim (Mosaic's (8, 128) rule). The math is that
of ``triton.py``; see its docstring.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from pallas_kernels.common import dot_nn, dot_nt, dot_tn

_F32 = jnp.float32


def check_tiling(chunk: int, d: int, e: int, seq_len_padded: int = 0) -> None:
  """Mosaic block rules for the (C, D) and (C, E) tiles."""
  if chunk % 8:
    raise ValueError(f"linear_chunk TPU kernel: chunk_size must be a multiple of 8, got {chunk}")
  if seq_len_padded % chunk:
    raise ValueError(f"linear_chunk TPU kernel: padded length {seq_len_padded} is not a multiple "
                     f"of chunk_size {chunk}")
  for name, val in (("head dim D", d), ("value dim E", e)):
    if val % 128 and val > 128:
      raise ValueError(f"linear_chunk TPU kernel: {name} must be <= 128 or a multiple of 128, "
                       f"got {val}")


def _tables(a, c, chunk, seq_len):
  """Masked decay [C, C], query decay [C, 1], chunk decay lambda^n, key decay [C, 1]."""
  row = jax.lax.broadcasted_iota(jnp.int32, (chunk, chunk), 0).astype(_F32)
  col = jax.lax.broadcasted_iota(jnp.int32, (chunk, chunk), 1).astype(_F32)
  dist = row - col
  mask = jnp.exp(jnp.where(dist >= 0, a * dist, -jnp.inf))
  i = jax.lax.broadcasted_iota(jnp.int32, (chunk, 1), 0).astype(_F32)
  q_decay = jnp.exp(a * (i + 1))
  n = jnp.minimum(chunk, seq_len - c * chunk).astype(_F32)
  k_dist = n - 1 - i
  k_decay = jnp.exp(jnp.where(k_dist >= 0, a * k_dist, -jnp.inf))
  return mask, q_decay, jnp.exp(a * n), k_decay


def _fwd_kernel(a_ref, q_ref, k_ref, v_ref, s0_ref, o_ref, st_ref, state, *, chunk, seq_len):
  c, n_chunks = pl.program_id(2), pl.num_programs(2)

  @pl.when(c == 0)
  def _():
    state[...] = s0_ref[...].astype(_F32)

  mask, q_decay, chunk_decay, k_decay = _tables(a_ref[pl.program_id(1)], c, chunk, seq_len)
  q, k, v = (r[...].astype(_F32) for r in (q_ref, k_ref, v_ref))
  o_ref[...] = (dot_nn(dot_nt(q, k) * mask, v) + dot_nn(q * q_decay, state[...])).astype(o_ref.dtype)
  state[...] = chunk_decay * state[...] + dot_tn(k * k_decay, v)

  @pl.when(c == n_chunks - 1)
  def _():
    st_ref[...] = state[...]


def _dq_kernel(a_ref, k_ref, v_ref, s0_ref, do_ref, dq_ref, state, *, chunk, seq_len):
  c = pl.program_id(2)

  @pl.when(c == 0)
  def _():
    state[...] = s0_ref[...].astype(_F32)

  mask, q_decay, chunk_decay, k_decay = _tables(a_ref[pl.program_id(1)], c, chunk, seq_len)
  k, v, do = (r[...].astype(_F32) for r in (k_ref, v_ref, do_ref))
  dq = dot_nn(dot_nt(do, v) * mask, k) + q_decay * dot_nt(do, state[...])
  dq_ref[...] = dq.astype(dq_ref.dtype)
  state[...] = chunk_decay * state[...] + dot_tn(k * k_decay, v)


def _dkdv_kernel(a_ref, q_ref, k_ref, v_ref, do_ref, dst_ref, dk_ref, dv_ref, ds0_ref, grad,
                 *, chunk, seq_len):
  step, n_chunks = pl.program_id(2), pl.num_programs(2)
  c = n_chunks - 1 - step  # the index maps walk the chunks in reverse

  @pl.when(step == 0)
  def _():
    grad[...] = dst_ref[...].astype(_F32)

  mask, q_decay, chunk_decay, k_decay = _tables(a_ref[pl.program_id(1)], c, chunk, seq_len)
  q, k, v, do = (r[...].astype(_F32) for r in (q_ref, k_ref, v_ref, do_ref))
  g = grad[...]
  dv_ref[...] = (dot_tn(dot_nt(q, k) * mask, do) + k_decay * dot_nn(k, g)).astype(dv_ref.dtype)
  dk_ref[...] = (dot_tn(dot_nt(do, v) * mask, q) + k_decay * dot_nt(v, g)).astype(dk_ref.dtype)
  grad[...] = chunk_decay * g + dot_tn(q * q_decay, do)

  @pl.when(step == n_chunks - 1)
  def _():
    ds0_ref[...] = grad[...]


def _call(kernel, a_H, inputs, in_widths, out_widths, *, d, e, chunk, reverse, interpret):
  """pallas_call over (B, H, chunks); widths name each operand: 'd'/'e' tiles or 'state'."""
  b, h, tp = inputs[0].shape[:3]
  n = tp // chunk
  width = {"d": d, "e": e}

  def spec(kind):
    if kind == "state":
      return pl.BlockSpec((None, None, d, e), lambda bi, hi, ci, a: (bi, hi, 0, 0))
    chunk_index = (lambda ci: n - 1 - ci) if reverse else (lambda ci: ci)
    return pl.BlockSpec((None, None, chunk, width[kind]),
                        lambda bi, hi, ci, a: (bi, hi, chunk_index(ci), 0))

  def shape(kind):
    dims = (b, h, d, e) if kind == "state" else (b, h, tp, width[kind])
    return jax.ShapeDtypeStruct(dims, _F32)

  return pl.pallas_call(
      kernel,
      grid_spec=pltpu.PrefetchScalarGridSpec(
          num_scalar_prefetch=1, grid=(b, h, n),
          in_specs=[spec(w) for w in in_widths], out_specs=[spec(w) for w in out_widths],
          scratch_shapes=[pltpu.VMEM((d, e), _F32)]),
      out_shape=[shape(w) for w in out_widths],
      compiler_params=pltpu.CompilerParams(
          dimension_semantics=("parallel", "parallel", "arbitrary")),
      interpret=interpret,
  )(a_H, *inputs)


def forward(a_H, q, k, v, s0, *, chunk: int, seq_len: int, interpret: bool = False):
  """q, k [B, H, Tp, D], v [B, H, Tp, E] -> (o [B, H, Tp, E], final state [B, H, D, E])."""
  d, e = q.shape[-1], v.shape[-1]
  check_tiling(chunk, d, e, q.shape[2])
  kernel = functools.partial(_fwd_kernel, chunk=chunk, seq_len=seq_len)
  return _call(kernel, a_H, (q, k, v, s0), ("d", "d", "e", "state"), ("e", "state"), d=d, e=e,
               chunk=chunk, reverse=False, interpret=interpret)


def backward(a_H, q, k, v, s0, do, dst, *, chunk: int, seq_len: int, interpret: bool = False):
  """Returns (dq, dk, dv, ds0) float32 in the layouts of q, k, v, s0."""
  d, e = q.shape[-1], v.shape[-1]
  check_tiling(chunk, d, e, q.shape[2])
  dq_kernel = functools.partial(_dq_kernel, chunk=chunk, seq_len=seq_len)
  (dq,) = _call(dq_kernel, a_H, (k, v, s0, do), ("d", "e", "state", "e"), ("d",), d=d, e=e,
                chunk=chunk, reverse=False, interpret=interpret)
  dkdv_kernel = functools.partial(_dkdv_kernel, chunk=chunk, seq_len=seq_len)
  dk, dv, ds0 = _call(dkdv_kernel, a_H, (q, k, v, do, dst), ("d", "d", "e", "e", "state"),
                      ("d", "e", "state"), d=d, e=e, chunk=chunk, reverse=True,
                      interpret=interpret)
  return dq, dk, dv, ds0
