"""Differentiable chunked decayed linear attention on the Pallas kernels (``jax.custom_vjp``).

The gradient of the log decay a_h needs no extra kernel: writing b_t = a (t + 1), the output is
o_t = (e^{b_t} q_t)^T (S_0 + sum_{s<=t} (e^{-b_s} k_s) v_s^T) and S_T = e^{b_{T-1}} (...), so

  dL/da = sum_t (t + 1) (q_t . dq_t - k_t . dk_t) + T <dS_T, S_T>,

summed over the batch, with dq, dk the gradients of the kernel's own inputs.

``impl``: ``xla`` (the plain-jnp chunked form, ``reference``), ``pallas`` (this platform's
kernel: Mosaic on TPU, Triton on GPU, interpreted Triton elsewhere) or ``auto`` (the native
kernel when the tiling fits it).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from pallas_kernels import common
from pallas_kernels.linear_chunk import mosaic_tpu, reference, triton

_F32 = jnp.float32
# Ordered by preference: the kernel modules by platform, then the plain-jnp chunked form.
IMPLEMENTATIONS = {"mosaic_tpu": mosaic_tpu, "triton": triton,
                   "xla": reference.linear_chunk_reference}
_PLATFORM_KERNEL = {"tpu": "mosaic_tpu", "gpu": "triton"}


def _pad_dim(n: int, variant: str) -> int:
  """Head dims as the kernels tile them: GPU powers of two >= 16, TPU full or 128-multiples."""
  if variant == "gpu":
    return common.pow2_at_least(n, common.TRITON_MIN_TILE)
  return n if n <= common.NUM_LANES else common.round_up(n, common.NUM_LANES)


def _padded(q, k, v, s0, chunk, variant):
  t, d, e = q.shape[1], q.shape[3], v.shape[3]
  tp = -(-t // chunk) * chunk
  dp, ep = _pad_dim(d, variant), _pad_dim(e, variant)
  q, k = (common.pad_axis(common.pad_axis(x, 1, tp), 3, dp) for x in (q, k))
  v = common.pad_axis(common.pad_axis(v, 1, tp), 3, ep)
  s0 = common.pad_axis(common.pad_axis(s0, 2, dp), 3, ep)
  return q, k, v, s0


def _swap(x):
  """[B, T, H, D] <-> [B, H, T, D] (the TPU kernels tile (T, D) as the last two dims)."""
  return jnp.swapaxes(x, 1, 2)


def _kernel_fwd(variant, log_decay, q, k, v, s0, **kw):
  a = log_decay.astype(_F32)
  if variant == "gpu":
    return triton.forward(jnp.broadcast_to(a[:, None], (a.shape[0], kw["chunk"])), q, k, v, s0,
                          **kw)
  o, st = mosaic_tpu.forward(a, _swap(q), _swap(k), _swap(v), s0, **kw)
  return _swap(o), st


def _kernel_bwd(variant, log_decay, q, k, v, s0, do, dst, **kw):
  a = log_decay.astype(_F32)
  if variant == "gpu":
    return triton.backward(jnp.broadcast_to(a[:, None], (a.shape[0], kw["chunk"])), q, k, v, s0,
                           do, dst, **kw)
  dq, dk, dv, ds0 = mosaic_tpu.backward(a, _swap(q), _swap(k), _swap(v), s0, _swap(do), dst, **kw)
  return _swap(dq), _swap(dk), _swap(dv), ds0


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7))
def _linear_chunk(q, k, v, log_decay, s0, chunk, interpret, variant):
  return _fwd(q, k, v, log_decay, s0, chunk, interpret, variant)[0]


def _fwd(q, k, v, log_decay, s0, chunk, interpret, variant):
  t, d, e = q.shape[1], q.shape[3], v.shape[3]
  qp, kp, vp, s0p = _padded(q, k, v, s0, chunk, variant)
  o, st = _kernel_fwd(variant, log_decay, qp, kp, vp, s0p, chunk=chunk, seq_len=t,
                      interpret=interpret)
  out = (o[:, :t, :, :e], st[:, :, :d, :e])
  return out, (q, k, v, log_decay, s0, out[1])


def _bwd(chunk, interpret, variant, res, cotangents):
  q, k, v, log_decay, s0, st = res
  do, dst = cotangents
  t, d, e = q.shape[1], q.shape[3], v.shape[3]
  qp, kp, vp, s0p = _padded(q, k, v, s0, chunk, variant)
  tp, dp, ep = qp.shape[1], qp.shape[3], vp.shape[3]
  dop = common.pad_axis(common.pad_axis(do.astype(_F32), 1, tp), 3, ep)
  dstp = common.pad_axis(common.pad_axis(dst.astype(_F32), 2, dp), 3, ep)
  dq, dk, dv, ds0 = _kernel_bwd(variant, log_decay, qp, kp, vp, s0p, dop, dstp, chunk=chunk,
                                seq_len=t, interpret=interpret)
  dq, dk, dv, ds0 = dq[:, :t, :, :d], dk[:, :t, :, :d], dv[:, :t, :, :e], ds0[:, :, :d, :e]
  pos = jnp.arange(1, t + 1, dtype=_F32)[None, :, None]
  qdq = jnp.sum(q.astype(_F32) * dq, axis=-1)
  kdk = jnp.sum(k.astype(_F32) * dk, axis=-1)
  da = jnp.sum(pos * (qdq - kdk), axis=(0, 1)) + t * jnp.sum(dst.astype(_F32) * st, axis=(0, 2, 3))
  return (dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype),
          da.astype(log_decay.dtype), ds0.astype(s0.dtype))


_linear_chunk.defvjp(_fwd, _bwd)


def _fits(variant, chunk, d, e):
  try:
    IMPLEMENTATIONS[_PLATFORM_KERNEL[variant]].check_tiling(chunk, _pad_dim(d, variant),
                                                            _pad_dim(e, variant))
  except ValueError:
    return False
  return True


def linear_chunk(q, k, v, log_decay, initial_state=None, *, chunk_size: int = 64,
                 impl: str = "auto", interpret=None):
  """Chunked decayed linear attention; drop-in for ``reference.linear_chunk_reference``.

  Args:
    q, k: [B, T, H, D]; v: [B, T, H, E]; any T (padded to the chunk inside).
    log_decay: [H] log lambda_h <= 0.
    initial_state: [B, H, D, E] or None (zeros).
    chunk_size: Triton kernel: a power of two >= 16 (tile rule); Mosaic kernel: a multiple of 8.
      Checked even in interpret mode.
    impl: ``xla``, ``pallas`` or ``auto``.
    interpret: None interprets the kernel only off its hardware; True forces the interpreter.

  Returns:
    (o [B, T, H, E] float32, final state [B, H, D, E] float32).
  """
  b, _, h, d = q.shape
  e = v.shape[-1]
  if k.shape != q.shape or v.shape[:3] != q.shape[:3] or log_decay.shape != (h,):
    raise ValueError(f"linear_chunk: expected q, k [B, T, H, D], v [B, T, H, E], log_decay [H]; "
                     f"got q {q.shape}, k {k.shape}, v {v.shape}, log_decay {log_decay.shape}")
  common.check_impl("linear_chunk", impl)
  if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1:
    raise ValueError(f"linear_chunk: chunk_size must be a positive int, got {chunk_size!r}")
  variant, interpret = common.choose("linear_chunk", impl, interpret,
                                     fits=lambda p: _fits(p, chunk_size, d, e))
  if variant is None:
    return IMPLEMENTATIONS["xla"](q, k, v, log_decay, initial_state, chunk_size=chunk_size)
  IMPLEMENTATIONS[_PLATFORM_KERNEL[variant]].check_tiling(chunk_size, _pad_dim(d, variant),
                                                          _pad_dim(e, variant))
  if initial_state is None:
    initial_state = jnp.zeros((b, h, d, e), _F32)
  return _linear_chunk(q, k, v, log_decay, initial_state.astype(_F32), chunk_size, interpret,
                       variant)
