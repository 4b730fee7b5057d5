"""GPU-style Pallas kernels for chunked decayed linear attention (forward and backward).

One program per (batch, head) walks the sequence chunk by chunk, keeping the [D, E] state in
float32 registers/SRAM: inside a chunk the output is (q k^T * M) v with the masked decay
M[i, j] = lambda^(i - j) [j <= i], plus lambda^(i + 1) q S_prev from earlier chunks (Lightning
attention's intra/inter split). The backward pass recomputes the states going forward for dq and
carries the state adjoint G backwards for dk and dv; d log lambda is assembled by ``api`` from
dq and dk.

Layout: q, k [B, Tp, H, Dp], v [B, Tp, H, Ep] with Tp a multiple of the chunk and Dp, Ep powers of
two (``api`` pads); ``seq_len`` is the true length, so the last chunk's state update decays by its
real length. The per-head log decay arrives as an [H, C] row of identical values (a vector block
keeps Triton's power-of-two block rule).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from pallas_kernels.common import dot_nn, dot_nt, dot_tn

_F32 = jnp.float32


def _is_pow2(x: int) -> bool:
  return x > 0 and x & (x - 1) == 0


def check_tiling(chunk: int, d: int, e: int, seq_len_padded: int = 0) -> None:
  """Triton block rules: power-of-two tiles, at least 16 wide for tensor-core dots."""
  for name, val in (("chunk_size", chunk), ("head dim D", d), ("value dim E", e)):
    if not _is_pow2(val) or val < 16:
      raise ValueError(f"linear_chunk kernel: {name} must be a power of two >= 16, got {val}")
  if seq_len_padded % chunk:
    raise ValueError(f"linear_chunk kernel: padded length {seq_len_padded} is not a multiple of "
                     f"chunk_size {chunk}")


def _decay_tables(a, chunk):
  """Masked intra-chunk decay [C, C] and the query-side decay lambda^(i + 1) [C, 1]."""
  i = jnp.arange(chunk, dtype=_F32)
  dist = i[:, None] - i[None, :]
  mask = jnp.exp(jnp.where(dist >= 0, a * dist, -jnp.inf))
  return mask, jnp.exp(a * (i + 1))[:, None]


def _chunk_len_decay(a, c, chunk, seq_len):
  """True length n of chunk c, lambda^n, and the key-side decay lambda^(n - 1 - j) [C, 1]."""
  n = jnp.minimum(chunk, seq_len - c * chunk).astype(_F32)
  dist = n - 1 - jnp.arange(chunk, dtype=_F32)
  k_decay = jnp.exp(jnp.where(dist >= 0, a * dist, -jnp.inf))[:, None]
  return jnp.exp(a * n), k_decay


def _fwd_kernel(a_ref, q_ref, k_ref, v_ref, s0_ref, o_ref, st_ref, *, chunk, seq_len):
  a = jnp.max(a_ref[...])
  mask, q_decay = _decay_tables(a, chunk)

  def body(c, state):
    rows = pl.ds(c * chunk, chunk)
    q = q_ref[rows, :].astype(_F32)
    k = k_ref[rows, :].astype(_F32)
    v = v_ref[rows, :].astype(_F32)
    o = dot_nn(dot_nt(q, k) * mask, v) + dot_nn(q * q_decay, state)
    o_ref[rows, :] = o.astype(o_ref.dtype)
    chunk_decay, k_decay = _chunk_len_decay(a, c, chunk, seq_len)
    return chunk_decay * state + dot_tn(k * k_decay, v)

  n_chunks = pl.cdiv(seq_len, chunk)
  st_ref[...] = jax.lax.fori_loop(0, n_chunks, body, s0_ref[...].astype(_F32))


def _bwd_kernel(a_ref, q_ref, k_ref, v_ref, s0_ref, do_ref, dst_ref,
                dq_ref, dk_ref, dv_ref, ds0_ref, *, chunk, seq_len):
  a = jnp.max(a_ref[...])
  mask, q_decay = _decay_tables(a, chunk)
  n_chunks = pl.cdiv(seq_len, chunk)

  def load(c):
    rows = pl.ds(c * chunk, chunk)
    return (rows, q_ref[rows, :].astype(_F32), k_ref[rows, :].astype(_F32),
            v_ref[rows, :].astype(_F32), do_ref[rows, :].astype(_F32))

  def forward(c, state):
    # dq_i = sum_{j<=i} lambda^(i-j) (do_i . v_j) k_j + lambda^(i+1) S_prev do_i
    rows, _, k, v, do = load(c)
    dq = dot_nn(dot_nt(do, v) * mask, k) + q_decay * dot_nt(do, state)
    dq_ref[rows, :] = dq.astype(dq_ref.dtype)
    chunk_decay, k_decay = _chunk_len_decay(a, c, chunk, seq_len)
    return chunk_decay * state + dot_tn(k * k_decay, v)

  jax.lax.fori_loop(0, n_chunks, forward, s0_ref[...].astype(_F32))

  def backward(step, grad_state):
    # grad_state is the adjoint of the state at the end of chunk c.
    c = n_chunks - 1 - step
    rows, q, k, v, do = load(c)
    chunk_decay, k_decay = _chunk_len_decay(a, c, chunk, seq_len)
    scores = dot_nt(q, k) * mask
    dv = dot_tn(scores, do) + k_decay * dot_nn(k, grad_state)
    dk = dot_tn(dot_nt(do, v) * mask, q) + k_decay * dot_nt(v, grad_state)
    dk_ref[rows, :] = dk.astype(dk_ref.dtype)
    dv_ref[rows, :] = dv.astype(dv_ref.dtype)
    return chunk_decay * grad_state + dot_tn(q * q_decay, do)

  ds0_ref[...] = jax.lax.fori_loop(0, n_chunks, backward, dst_ref[...].astype(_F32))


def _specs(tp, d, e, chunk):
  seq = lambda width: pl.BlockSpec((None, tp, None, width), lambda b, h: (b, 0, h, 0))
  state = pl.BlockSpec((None, None, d, e), lambda b, h: (b, h, 0, 0))
  decay = pl.BlockSpec((None, chunk), lambda b, h: (h, 0))
  return seq, state, decay


def forward(a_HC, q, k, v, s0, *, chunk: int, seq_len: int, interpret: bool = False):
  """Returns (o [B, Tp, H, E] float32, final state [B, H, D, E] float32)."""
  b, tp, h, d = q.shape
  e = v.shape[-1]
  check_tiling(chunk, d, e, tp)
  seq, state, decay = _specs(tp, d, e, chunk)
  kernel = functools.partial(_fwd_kernel, chunk=chunk, seq_len=seq_len)
  return pl.pallas_call(
      kernel,
      grid=(b, h),
      in_specs=[decay, seq(d), seq(d), seq(e), state],
      out_specs=[seq(e), state],
      out_shape=[jax.ShapeDtypeStruct((b, tp, h, e), _F32),
                 jax.ShapeDtypeStruct((b, h, d, e), _F32)],
      interpret=interpret,
      name="linear_chunk_fwd",
  )(a_HC, q, k, v, s0)


def backward(a_HC, q, k, v, s0, do, dst, *, chunk: int, seq_len: int, interpret: bool = False):
  """Returns (dq, dk, dv, ds0) in float32 with the shapes of q, k, v, s0."""
  b, tp, h, d = q.shape
  e = v.shape[-1]
  check_tiling(chunk, d, e, tp)
  seq, state, decay = _specs(tp, d, e, chunk)
  kernel = functools.partial(_bwd_kernel, chunk=chunk, seq_len=seq_len)
  return pl.pallas_call(
      kernel,
      grid=(b, h),
      in_specs=[decay, seq(d), seq(d), seq(e), state, seq(e), state],
      out_specs=[seq(d), seq(d), seq(e), state],
      out_shape=[jax.ShapeDtypeStruct((b, tp, h, d), _F32),
                 jax.ShapeDtypeStruct((b, tp, h, d), _F32),
                 jax.ShapeDtypeStruct((b, tp, h, e), _F32),
                 jax.ShapeDtypeStruct((b, h, d, e), _F32)],
      interpret=interpret,
      name="linear_chunk_bwd",
  )(a_HC, q, k, v, s0, do, dst)
