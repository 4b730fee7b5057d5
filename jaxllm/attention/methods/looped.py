"""Exact attention as one loop over query blocks with a hand-written backward (flash style).

Each query block (``block_q`` queries, the G query heads of a KV head stacked into one
[G x block_q, D] operand) runs an online softmax over key chunks of ``key_chunk`` keys. The
chunks are right-aligned to the block's last visible key, so a causal block's diagonal chunk has
the same mask in every block and only the leftmost chunk (which may reach below key 0, into the
left padding) needs a second one; how many chunks a block runs is a traced count, so the loop
body is traced once. Compared with :func:`jaxllm.attention.methods.dense.blocked`, which unrolls
its blocks at trace time, compile time does not grow with T (at T = 32k blocked takes 32 s to
compile forward and 119 s with the gradient).

The backward is FlashAttention-2's: the forward keeps only the output and the per-row
log-sum-exp; the backward recomputes each chunk's probabilities, accumulates dQ per block and
adds dK / dV into full-length accumulators carried through the loop.

Masks follow :mod:`jaxllm.attention.masks` (causal, window, sinks); queries are the last T of the
S keys. Sinks run as one small extra chunk of the first ``sinks`` keys per block, limited to the
keys the block's chunks do not cover.
"""

import functools
import math

import jax
import jax.numpy as jnp

from jaxllm.attention import masks
from jaxllm.attention.methods import dense

_NEG = -jnp.inf


def _plan(t, s, block_q, key_chunk, causal, window):
  """The key span [lo, hi) and chunk count of block i (traced ints), and whether the chunks
  strictly inside a span need no mask."""
  offset = s - t

  def span(i):
    p_lo = i * block_q + offset  # first query position of block i
    p_hi = jnp.minimum(p_lo + block_q, s)  # one past the last (padded rows clamp to S)
    if causal:
      hi = p_hi
      lo = jnp.zeros_like(p_lo) if window is None else jnp.maximum(p_lo - window + 1, 0)
    else:
      hi = jnp.full_like(p_lo, s) if window is None else jnp.minimum(p_hi + window - 1, s)
      lo = jnp.zeros_like(p_lo) if window is None else jnp.maximum(p_lo - window + 1, 0)
    hi = jnp.maximum(hi, lo)
    n = (hi - lo + key_chunk - 1) // key_chunk
    return lo, hi, n

  # Without a window, keys strictly between the diagonal chunk and the leftmost one are seen by
  # every query of the block (a causal block spans at most one chunk).
  full_inside = window is None and (not causal or block_q <= key_chunk)
  return span, full_inside


def _logits(q_MD, k_CD, softcap):
  x = jnp.einsum("bkmd,bkcd->bkmc", q_MD, k_CD, preferred_element_type=jnp.float32)
  if softcap is None:
    return x, None
  th = jnp.tanh(x / softcap)
  return softcap * th, th


def _chunk_ok(rows, cols, lo, causal, window, sinks, sink_hi=None):
  """The mask of a chunk: visible, at or above ``lo`` (not in the left padding), and for the
  sink chunk below ``sink_hi`` (the sinks the span's chunks do not count)."""
  ok = masks.visible_pairs(rows[:, None], cols[None, :], causal=causal, window=window,
                           sinks=sinks) & (cols >= lo)[None, :]
  return ok if sink_hi is None else ok & (cols < sink_hi)[None, :]


def _chunks(chunk, carry, lo, hi, n, key_chunk, *, full_inside, sinks):
  """Runs ``chunk`` over the n chunks ending at ``hi``: the first (the diagonal) and the last
  (reaching below ``lo``) masked, the ones between unmasked when ``full_inside`` (every query of
  the block sees every key strictly inside the span), masked otherwise; then, with ``sinks``,
  one chunk of the first ``sinks`` keys, those below ``lo``."""
  c = lambda j: hi - (j + 1) * key_chunk
  if not full_inside:
    carry = jax.lax.fori_loop(0, n, lambda j, x: chunk(c(j), x), carry)
  else:
    carry = chunk(c(0), carry)
    carry = jax.lax.fori_loop(1, n - 1, lambda j, x: chunk(c(j), x, masked=False), carry)
    carry = jax.lax.cond(n >= 2, lambda x: chunk(c(n - 1), x), lambda x: x, carry)
  if sinks:
    carry = chunk(0, carry, sink_hi=jnp.minimum(sinks, lo), size=sinks)
  return carry


def _forward(q_NBKMD, k_pad, v_pad, *, t, s, block_q, g, key_chunk, causal, window, sinks,
             softcap):
  """Output [NB, B, K, M, D] (float32) and log-sum-exp [NB, B, K, M] of every query block."""
  span, full_inside = _plan(t, s, block_q, key_chunk, causal, window)
  offset = s - t
  _, b, hk, m_rows, d = q_NBKMD.shape
  pad = key_chunk

  def block(i, q_MD):
    lo, hi, n = span(i)
    rows = jnp.repeat(jnp.arange(block_q) + i * block_q + offset, g)

    def chunk(c0, carry, sink_hi=None, size=key_chunk, masked=True):
      acc, mx, den = carry
      k_c = jax.lax.dynamic_slice_in_dim(k_pad, c0 + pad, size, axis=2)
      v_c = jax.lax.dynamic_slice_in_dim(v_pad, c0 + pad, size, axis=2)
      x, _ = _logits(q_MD, k_c, softcap)
      if masked:
        cols = c0 + jnp.arange(size)
        x = jnp.where(_chunk_ok(rows, cols, 0 if sink_hi is not None else lo, causal, window,
                                sinks, sink_hi), x, _NEG)
      return dense.online_softmax_step(x, v_c, acc, mx, den)

    carry = (jnp.zeros((b, hk, m_rows, d), jnp.float32),
             jnp.full((b, hk, m_rows, 1), _NEG, jnp.float32),
             jnp.zeros((b, hk, m_rows, 1), jnp.float32))
    carry = _chunks(chunk, carry, lo, hi, n, key_chunk, full_inside=full_inside,
                    sinks=min(sinks, s) if window is not None else 0)
    acc, mx, den = carry
    o = acc / jnp.where(den == 0, 1.0, den)
    lse = jnp.where(den == 0, _NEG, mx + jnp.log(jnp.where(den == 0, 1.0, den)))
    return o, lse[..., 0]

  def step(_, xs):
    i, q_MD = xs
    return None, block(i, q_MD)

  nb = q_NBKMD.shape[0]
  _, (o, lse) = jax.lax.scan(step, None, (jnp.arange(nb), q_NBKMD))
  return o, lse


def _backward(q_NBKMD, k_pad, v_pad, o_NBKMD, lse_NBKM, do_NBKMD, *, t, s, block_q, g, key_chunk,
              causal, window, sinks, softcap):
  span, full_inside = _plan(t, s, block_q, key_chunk, causal, window)
  offset = s - t
  pad = key_chunk
  delta_NBKM = jnp.sum(o_NBKMD.astype(jnp.float32) * do_NBKMD.astype(jnp.float32), axis=-1)

  def block(i, q_MD, lse_M, do_MD, delta_M, dk_acc, dv_acc):
    lo, hi, n = span(i)
    rows = jnp.repeat(jnp.arange(block_q) + i * block_q + offset, g)
    lse_safe = jnp.where(jnp.isfinite(lse_M), lse_M, 0.0)[..., None]
    do_f = do_MD.astype(jnp.float32)

    def chunk(c0, carry, sink_hi=None, size=key_chunk, masked=True):
      dq, dk_acc, dv_acc = carry
      k_c = jax.lax.dynamic_slice_in_dim(k_pad, c0 + pad, size, axis=2)
      v_c = jax.lax.dynamic_slice_in_dim(v_pad, c0 + pad, size, axis=2)
      x, th = _logits(q_MD, k_c, softcap)
      p = jnp.exp(x - lse_safe)
      if masked:
        cols = c0 + jnp.arange(size)
        p = jnp.where(_chunk_ok(rows, cols, 0 if sink_hi is not None else lo, causal, window,
                                sinks, sink_hi), p, 0.0)
      dv_c = jnp.einsum("bkmc,bkmd->bkcd", p.astype(do_MD.dtype), do_MD,
                        preferred_element_type=jnp.float32)
      dp = jnp.einsum("bkmd,bkcd->bkmc", do_f.astype(v_c.dtype), v_c,
                      preferred_element_type=jnp.float32)
      ds = p * (dp - delta_M[..., None])
      if softcap is not None:
        ds = ds * (1.0 - th * th)
      dq = dq + jnp.einsum("bkmc,bkcd->bkmd", ds.astype(k_c.dtype), k_c,
                           preferred_element_type=jnp.float32)
      dk_c = jnp.einsum("bkmc,bkmd->bkcd", ds.astype(q_MD.dtype), q_MD,
                        preferred_element_type=jnp.float32)
      start = c0 + pad
      dk_acc = jax.lax.dynamic_update_slice_in_dim(
          dk_acc, jax.lax.dynamic_slice_in_dim(dk_acc, start, size, axis=2) + dk_c, start, axis=2)
      dv_acc = jax.lax.dynamic_update_slice_in_dim(
          dv_acc, jax.lax.dynamic_slice_in_dim(dv_acc, start, size, axis=2) + dv_c, start, axis=2)
      return dq, dk_acc, dv_acc

    carry = (jnp.zeros(q_MD.shape, jnp.float32), dk_acc, dv_acc)
    carry = _chunks(chunk, carry, lo, hi, n, key_chunk, full_inside=full_inside,
                    sinks=min(sinks, s) if window is not None else 0)
    return carry

  def step(carry, xs):
    dk_acc, dv_acc = carry
    i, q_MD, lse_M, do_MD, delta_M = xs
    dq, dk_acc, dv_acc = block(i, q_MD, lse_M, do_MD, delta_M, dk_acc, dv_acc)
    return (dk_acc, dv_acc), dq

  nb = q_NBKMD.shape[0]
  zeros = jnp.zeros(k_pad.shape, jnp.float32)
  (dk, dv), dq = jax.lax.scan(step, (zeros, zeros),
                              (jnp.arange(nb), q_NBKMD, lse_NBKM, do_NBKMD, delta_NBKM))
  return dq, dk, dv


def _split(q, block_q, hkv):
  """q [B, T, H, D] -> [NB, B, K, block_q x G, D] (rows query-major, G heads per query)."""
  b, t, h, d = q.shape
  g = h // hkv
  nb = -(-t // block_q)
  q = jnp.pad(q, ((0, 0), (0, nb * block_q - t), (0, 0), (0, 0)))
  q = q.reshape(b, nb, block_q, hkv, g, d).transpose(1, 0, 3, 2, 4, 5)
  return q.reshape(nb, b, hkv, block_q * g, d)


def _merge(o, t, h):
  nb, b, hkv, m, d = o.shape
  g = h // hkv
  o = o.reshape(nb, b, hkv, m // g, g, d).transpose(1, 0, 3, 2, 4, 5)
  return o.reshape(b, nb * (m // g), h, d)[:, :t]


def _pad_keys(k, key_chunk):
  """k [B, S, K, D] -> [B, K, key_chunk + S, D]: chunks may start up to key_chunk below key 0."""
  return jnp.pad(jnp.swapaxes(k, 1, 2), ((0, 0), (0, 0), (key_chunk, 0), (0, 0)))


def _sizes(cfg, t, s, h, hkv):
  block_q, key_chunk, causal, window, sinks, softcap, _ = cfg
  return dict(t=t, s=s, block_q=block_q, g=h // hkv, key_chunk=key_chunk, causal=causal,
              window=window, sinks=sinks, softcap=softcap)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _attend(q, k, v, cfg):
  return _attend_fwd(q, k, v, cfg)[0]


def _attend_fwd(q, k, v, cfg):
  block_q, key_chunk, scale = cfg[0], cfg[1], cfg[-1]
  t, h = q.shape[1], q.shape[2]
  s, hkv = k.shape[1], k.shape[2]
  q_s = _split((q.astype(jnp.float32) * scale).astype(q.dtype), block_q, hkv)
  k_pad, v_pad = _pad_keys(k, key_chunk), _pad_keys(v, key_chunk)
  o, lse = _forward(q_s, k_pad, v_pad, **_sizes(cfg, t, s, h, hkv))
  return _merge(o, t, h).astype(q.dtype), (q_s, k_pad, v_pad, o.astype(q.dtype), lse)


def _attend_bwd(cfg, res, d_out):
  block_q, key_chunk, scale = cfg[0], cfg[1], cfg[-1]
  q_s, k_pad, v_pad, o, lse = res
  t, h = d_out.shape[1], d_out.shape[2]
  hkv, s = k_pad.shape[1], k_pad.shape[2] - key_chunk
  do = _split(d_out, block_q, hkv)
  dq, dk, dv = _backward(q_s, k_pad, v_pad, o, lse, do, **_sizes(cfg, t, s, h, hkv))
  dq = (_merge(dq, t, h) * scale).astype(q_s.dtype)
  dk = jnp.swapaxes(dk[:, :, key_chunk:], 1, 2).astype(k_pad.dtype)
  dv = jnp.swapaxes(dv[:, :, key_chunk:], 1, 2).astype(v_pad.dtype)
  return dq, dk, dv


_attend.defvjp(_attend_fwd, _attend_bwd)


def looped(q, k, v, *, causal=True, scale=None, window=None, sinks=0, softcap=None, block_q=256,
           key_chunk=2048):
  """Exact attention of q [B, T, H, D] over k, v [B, S, Hkv, D] (T <= S, queries last), equal to
  ``dense.reference`` with the same options; differentiable with a flash-style backward."""
  for name, value in (("block_q", block_q), ("key_chunk", key_chunk)):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
      raise ValueError(f"looped attention: {name} must be a positive int, got {value!r}")
  t, s = q.shape[1], k.shape[1]
  if t > s:
    raise ValueError(f"looped attention: T must be <= S (queries are the last T keys), got "
                     f"T={t}, S={s}")
  scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
  window = None if window is None else int(window)
  cfg = (block_q, key_chunk, bool(causal), window, int(sinks),
         None if softcap is None else float(softcap), scale)
  return _attend(q, k, v, cfg)
