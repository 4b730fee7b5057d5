"""Differentiable chunked decayed linear attention on the Pallas kernels (``jax.custom_vjp``).

The gradient of the log decay a_h needs no extra kernel: writing b_t = a (t + 1), the output is
o_t = (e^{b_t} q_t)^T (S_0 + sum_{s<=t} (e^{-b_s} k_s) v_s^T) and S_T = e^{b_{T-1}} (...), so

  dL/da = sum_t (t + 1) (q_t . dq_t - k_t . dk_t) + T <dS_T, S_T>,

summed over the batch, with dq, dk the gradients of the kernel's own inputs.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from pallas_kernels.linear_chunk import kernel

_F32 = jnp.float32


def _pad_pow2(n: int) -> int:
  return max(16, 1 << (n - 1).bit_length())


def _pad(x, axis, size):
  widths = [(0, 0)] * x.ndim
  widths[axis] = (0, size - x.shape[axis])
  return jnp.pad(x, widths)


def _padded(q, k, v, s0, chunk):
  t, d, e = q.shape[1], q.shape[3], v.shape[3]
  tp = -(-t // chunk) * chunk
  dp, ep = _pad_pow2(d), _pad_pow2(e)
  q, k = (_pad(_pad(x, 1, tp), 3, dp) for x in (q, k))
  v = _pad(_pad(v, 1, tp), 3, ep)
  s0 = _pad(_pad(s0, 2, dp), 3, ep)
  return q, k, v, s0


def _decay_rows(log_decay, chunk):
  return jnp.broadcast_to(log_decay.astype(_F32)[:, None], (log_decay.shape[0], chunk))


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6))
def _linear_chunk(q, k, v, log_decay, s0, chunk, interpret):
  return _fwd(q, k, v, log_decay, s0, chunk, interpret)[0]


def _fwd(q, k, v, log_decay, s0, chunk, interpret):
  t, d, e = q.shape[1], q.shape[3], v.shape[3]
  qp, kp, vp, s0p = _padded(q, k, v, s0, chunk)
  o, st = kernel.forward(_decay_rows(log_decay, chunk), qp, kp, vp, s0p, chunk=chunk, seq_len=t,
                         interpret=interpret)
  out = (o[:, :t, :, :e], st[:, :, :d, :e])
  return out, (q, k, v, log_decay, s0, out[1])


def _bwd(chunk, interpret, res, cotangents):
  q, k, v, log_decay, s0, st = res
  do, dst = cotangents
  b, t, h, d = q.shape
  e = v.shape[3]
  qp, kp, vp, s0p = _padded(q, k, v, s0, chunk)
  tp, dp, ep = qp.shape[1], qp.shape[3], vp.shape[3]
  dop = _pad(_pad(do.astype(_F32), 1, tp), 3, ep)
  dstp = _pad(_pad(dst.astype(_F32), 2, dp), 3, ep)
  dq, dk, dv, ds0 = kernel.backward(_decay_rows(log_decay, chunk), qp, kp, vp, s0p, dop, dstp,
                                    chunk=chunk, seq_len=t, interpret=interpret)
  dq, dk, dv, ds0 = dq[:, :t, :, :d], dk[:, :t, :, :d], dv[:, :t, :, :e], ds0[:, :, :d, :e]
  pos = jnp.arange(1, t + 1, dtype=_F32)[None, :, None]
  qdq = jnp.sum(q.astype(_F32) * dq, axis=-1)
  kdk = jnp.sum(k.astype(_F32) * dk, axis=-1)
  da = jnp.sum(pos * (qdq - kdk), axis=(0, 1)) + t * jnp.sum(dst.astype(_F32) * st, axis=(0, 2, 3))
  return (dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype),
          da.astype(log_decay.dtype), ds0.astype(s0.dtype))


_linear_chunk.defvjp(_fwd, _bwd)


def linear_chunk(q, k, v, log_decay, initial_state=None, *, chunk_size: int = 64,
                 interpret: bool = False):
  """Chunked decayed linear attention; drop-in for ``reference.linear_chunk_reference``.

  Args:
    q, k: [B, T, H, D]; v: [B, T, H, E]; any T (padded to the chunk inside).
    log_decay: [H] log lambda_h <= 0.
    initial_state: [B, H, D, E] or None (zeros).
    chunk_size: a power of two >= 16 (Triton tile rule, checked even in interpret mode).
    interpret: run the kernels in the Pallas interpreter (CPU tests).

  Returns:
    (o [B, T, H, E] float32, final state [B, H, D, E] float32).
  """
  b, t, h, d = q.shape
  e = v.shape[-1]
  if k.shape != q.shape or v.shape[:3] != q.shape[:3] or log_decay.shape != (h,):
    raise ValueError(f"linear_chunk: expected q, k [B, T, H, D], v [B, T, H, E], log_decay [H]; "
                     f"got q {q.shape}, k {k.shape}, v {v.shape}, log_decay {log_decay.shape}")
  kernel.check_tiling(chunk_size, chunk_size, _pad_pow2(d), _pad_pow2(e))
  if initial_state is None:
    initial_state = jnp.zeros((b, h, d, e), _F32)
  return _linear_chunk(q, k, v, log_decay, initial_state.astype(_F32), chunk_size, interpret)
