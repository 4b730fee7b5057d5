"""Dense softmax attention: the float32 reference, the blocked exact path and the library kernels.

``impl="xla"`` is the reference (one [T, S] softmax). ``impl="auto"`` takes the library kernel
where one fits (tokamax on GPU, splash on TPU); otherwise, on CPU, the fastest exact path for the
length in ``sparse.CPU_PATHS`` (:func:`blocked`, the same math by query blocks, or the
block-sparse gather path over the causal / band table; both skip the key blocks the mask never
shows), and :func:`blocked` elsewhere. ``scripts/benchmarks/bench_cpu_attention.py`` measures
them against the machine's matmul rate.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxllm.attention import masks
from jaxllm.attention.methods import sparse
from jaxllm.attention.registry import register


def _check_options(window, sinks, softcap):
  if window is not None and (isinstance(window, bool) or not isinstance(window, int)
                             or window < 1):
    raise ValueError(f"dense attention: window must be a positive int or None, got {window!r}")
  if isinstance(sinks, bool) or not isinstance(sinks, int) or sinks < 0:
    raise ValueError(f"dense attention: sinks must be a non-negative int, got {sinks!r}")
  if sinks and window is None:
    raise ValueError("dense attention: sinks only make sense with a sliding window (set window)")
  if softcap is not None and softcap <= 0:
    raise ValueError(f"dense attention: softcap must be positive or None, got {softcap!r}")


def masked_softmax(q, k, ok, *, scale, softcap=None):
  """Float32 softmax weights [B, Hkv, G, T, S] of q [B, T, H, D] over k [B, S, Hkv, D] where ``ok``
  (bool, broadcastable to [B, Hkv, G, T, S]) is True; rows with nothing visible are 0."""
  b, t, h, d = q.shape
  hkv = k.shape[2]
  q_g = q.reshape(b, t, hkv, h // hkv, d)
  logits = jnp.einsum("btkgd,bskd->bkgts", q_g, k, preferred_element_type=jnp.float32)
  logits = logits.astype(jnp.float32) * scale
  if softcap is not None:
    logits = softcap * jnp.tanh(logits / softcap)
  logits = jnp.where(ok, logits, -jnp.inf)
  m = jnp.max(logits, axis=-1, keepdims=True)
  m = jnp.where(jnp.isfinite(m), m, 0.0)
  p = jnp.exp(logits - m)
  denom = jnp.sum(p, axis=-1, keepdims=True)
  return p / jnp.where(denom == 0, 1.0, denom)


def masked_attention(q, k, v, ok, *, scale, softcap=None):
  """Softmax attention restricted to ``ok`` (see :func:`masked_softmax`), e.g. over a KV cache.

  Returns (out [B, T, H, D] in q's dtype, weights [B, Hkv, G, T, S] float32).
  """
  b, t, h, d = q.shape
  p = masked_softmax(q, k, ok, scale=scale, softcap=softcap)
  o = jnp.einsum("bkgts,bskd->btkgd", p.astype(v.dtype), v, preferred_element_type=jnp.float32)
  return o.reshape(b, t, h, d).astype(q.dtype), p


def reference(q, k, v, *, causal=True, scale=None, window=None, sinks=0, softcap=None,
              segment_ids=None):
  """softmax(q k^T * scale + mask) v with float32 logits and softmax; GQA by head groups;
  ``segment_ids`` [B, S] hide keys of other segments (packed rows)."""
  t, s = q.shape[1], k.shape[1]
  scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
  ok = masks.visible(*masks.positions(t, s), causal=causal, window=window, sinks=sinks,
                     segment_ids=segment_ids)
  if segment_ids is not None:
    ok = ok[:, None, None]  # [B, T, S] -> [B, Hkv, G, T, S]
  return masked_attention(q, k, v, ok, scale=scale, softcap=softcap)[0]


def _segments(p_lo, p_hi, s, *, causal, window, sinks):
  """Key spans [lo, hi) a query block at positions [p_lo, p_hi) can see, each with whether it
  needs the position mask (False: every query of the block sees every key of the span)."""
  if not causal:
    if window is None:
      return [(0, s, False)]
    return [(max(p_lo - window + 1, 0), min(p_hi + window - 1, s), True)]
  hi = min(p_hi, s)
  if window is None:
    return [(0, min(p_lo, s), False), (min(p_lo, s), hi, True)]
  full_lo = min(max(p_hi - window, 0), p_lo)  # keys every query still reaches through the band
  band_lo = max(p_lo - window + 1, 0)
  segs = [(0, min(sinks, band_lo), False), (band_lo, full_lo, True), (full_lo, min(p_lo, s), False),
          (min(p_lo, s), hi, True)]
  return segs


def blocked(q, k, v, *, causal=True, scale=None, window=None, sinks=0, softcap=None,
            block_q=None, key_chunk=1024, segment_ids=None):
  """Exact dense attention by query blocks, each against only the keys its mask can reach.

  Query block i of a causal mask sees keys [0, end of block i) (or its window band plus the
  sinks), so about half the reference's logits are never formed, only the diagonal tile (and a
  band's edge) is masked, and memory is O(block_q x S) per head instead of O(T x S). A block's
  G query heads per KV head are stacked into one [G x block_q, D] operand, so every product is a
  plain matrix multiply, the layout XLA's CPU backend runs fastest; a block's softmax runs online
  over key chunks of ``key_chunk`` (one chunk, an exact softmax, when its span fits). Blocks run
  one after another: XLA's CPU executor would start independent blocks at once, each product
  already multi-threaded, and their tiles then evict each other from the caches (3-4x slower at
  T = 4k). Shapes are static, so compile time grows with the number of blocks: at most 32 by
  default. With ``segment_ids`` [B, S] (packed rows) every tile is masked,
  since where documents start is data, not shape.
  """
  b, t, h, d = q.shape
  s, hkv = k.shape[1], k.shape[2]
  g = h // hkv
  scale = 1.0 / math.sqrt(d) if scale is None else scale
  if block_q is None:
    block_q = max(512, -(-t // 32))
  offset = s - t
  # The scale folded into q once: one pass less over every unmasked logit tile (8% at 4k).
  q = (q.astype(jnp.float32) * scale).astype(q.dtype)
  q_BKTGD = q.reshape(b, t, hkv, g, d).transpose(0, 2, 1, 3, 4)
  k_BKSD, v_BKSD = jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2)
  outs = []
  for q_lo in range(0, t, block_q):
    q_hi = min(q_lo + block_q, t)
    segs = tuple((lo, hi, m) for lo, hi, m in _segments(
        q_lo + offset, q_hi + offset, s, causal=causal, window=window, sinks=sinks) if hi > lo)
    seg_args = ()
    if segment_ids is not None:
      segs = tuple((lo, hi, True) for lo, hi, _ in segs)
      seg_args = (segment_ids[:, q_lo + offset:q_hi + offset], segment_ids)
    # Rematerialised under autodiff: a block's probabilities are recomputed, not stored.
    tile = jax.checkpoint(functools.partial(
        _block, segs=segs, q_pos=np.arange(q_lo, q_hi) + offset, causal=causal,
        window=window, sinks=sinks, softcap=softcap, key_chunk=key_chunk))
    q_blk = q_BKTGD[:, :, q_lo:q_hi]
    if outs:  # block i + 1 waits for block i (see the docstring)
      outs[-1], q_blk = jax.lax.optimization_barrier((outs[-1], q_blk))
    outs.append(tile(q_blk, k_BKSD, v_BKSD, *seg_args))
  o_BKTGD = jnp.concatenate(outs, axis=2)
  return o_BKTGD.transpose(0, 2, 1, 3, 4).reshape(b, t, h, d)


def online_softmax_step(x, v, acc, m, denom):
  """One key chunk of an online softmax: logits x [..., M, C] (masked ones -inf) and values
  v [..., C, D] folded into the running (acc [..., M, D], max m and denominator [..., M, 1]).
  Rows with no visible key so far keep m = -inf, acc = denom = 0."""
  m_new = jax.lax.stop_gradient(jnp.maximum(m, jnp.max(x, axis=-1, keepdims=True)))
  m_safe = jnp.where(jnp.isfinite(m_new), m_new, 0.0)
  alpha = jnp.exp(jnp.where(jnp.isfinite(m), m - m_safe, -jnp.inf))
  p = jnp.exp(x - m_safe)
  denom = alpha * denom + jnp.sum(p, axis=-1, keepdims=True)
  acc = alpha * acc + jnp.einsum("...mc,...cd->...md", p.astype(v.dtype), v,
                                 preferred_element_type=jnp.float32)
  return acc, m_new, denom


def _block(q_BKTGD, k_BKSD, v_BKSD, q_seg_BT=None, k_seg_BS=None, *, segs, q_pos, causal,
           window, sinks, softcap, key_chunk):
  """One query block (q already scaled) against its key spans: an online softmax over key chunks,
  normalised after P V. Chunks of ``key_chunk`` keys keep each logit tile cache-sized.
  ``q_seg_BT`` / ``k_seg_BS``: the segment ids of the block's queries and of all keys (packed
  rows)."""
  b, hk, t, g, d = q_BKTGD.shape
  q_BKMD = q_BKTGD.reshape(b, hk, t * g, d)
  rows = jnp.asarray(np.repeat(q_pos, g))  # query position of each stacked row
  if q_seg_BT is not None:
    row_seg_BM = jnp.repeat(q_seg_BT, g, axis=1)
  acc = jnp.zeros((b, hk, t * g, d), jnp.float32)
  m = jnp.full((b, hk, t * g, 1), -jnp.inf)
  denom = jnp.zeros((b, hk, t * g, 1), jnp.float32)
  for seg_lo, seg_hi, masked in segs:
    for lo in range(seg_lo, seg_hi, key_chunk):
      hi = min(lo + key_chunk, seg_hi)
      x = jnp.einsum("bkmd,bksd->bkms", q_BKMD, k_BKSD[:, :, lo:hi],
                     preferred_element_type=jnp.float32)
      if softcap is not None:
        x = softcap * jnp.tanh(x / softcap)
      if masked:
        if q_seg_BT is None:
          ok = masks.visible(rows, jnp.arange(lo, hi), causal=causal, window=window, sinks=sinks)
        else:
          ok = masks.visible_pairs(
              rows[:, None], jnp.arange(lo, hi)[None, :], causal=causal, window=window,
              sinks=sinks, q_segment=row_seg_BM[:, :, None],
              k_segment=k_seg_BS[:, None, lo:hi])[:, None]
        x = jnp.where(ok, x, -jnp.inf)
      acc, m, denom = online_softmax_step(x, v_BKSD[:, :, lo:hi], acc, m, denom)
  o = acc / jnp.where(denom == 0, 1.0, denom)  # rows with no visible key give 0
  return o.reshape(b, hk, t, g, d).astype(q_BKTGD.dtype)


def _library_kernel(q, k, v, *, causal, scale, window, sinks, softcap, segment_ids=None):
  """The vendor kernel for this backend, or None where none fits."""
  backend = jax.default_backend()
  if sinks or backend not in ("gpu", "tpu"):
    return None
  t, s = q.shape[1], k.shape[1]
  if causal and t != s:  # library kernels align causal masks top-left; decode uses the reference
    return None
  window_arg = None if window is None else ((window - 1, 0) if causal else (window - 1, window - 1))
  if backend == "gpu":
    # tokamax picks among its Triton/Mosaic-GPU flash kernels and cuDNN for the device.
    import tokamax  # pylint: disable=g-import-not-at-top
    same = None if segment_ids is None else (
        masks.query_segments(segment_ids, t)[:, None, :, None]
        == segment_ids[:, None, None, :])  # [B, 1, T, S]
    return tokamax.dot_product_attention(
        q, k, v, mask=same, scale=scale, is_causal=causal, local_window_size=window_arg,
        logits_soft_cap=softcap)
  from jaxllm.attention import splash  # pylint: disable=g-import-not-at-top
  return splash.splash_dense(q, k, v, causal=causal, scale=scale, window=window, softcap=softcap,
                             segment_ids=segment_ids)


def dense(q, k, v, *, impl="auto", causal=True, scale=None, window=None, sinks=0, softcap=None,
          segment_ids=None):
  """Dense attention; optional sliding ``window``, ``sinks`` tokens and logit ``softcap``;
  ``segment_ids`` [B, S] keep each query to its own segment (packed rows)."""
  _check_options(window, sinks, softcap)
  scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
  if impl == "pallas":
    # The block-sparse kernel with the full causal (or band) table; interpreted off-GPU.
    return sparse.banded(q, k, v, impl="pallas", causal=causal, window=window, sinks=sinks,
                         scale=scale, softcap=softcap, segment_ids=segment_ids)
  if impl == "auto":
    out = _library_kernel(q, k, v, causal=causal, scale=scale, window=window, sinks=sinks,
                          softcap=softcap, segment_ids=segment_ids)
    if out is not None:
      return out
    if jax.default_backend() == "cpu" and q.shape[1] > 1:
      # The fastest exact CPU path for the length (sparse.CPU_PATHS): blocked, or the gather
      # path over the causal / band table, which runs only the blocks the mask reaches.
      return sparse.banded(q, k, v, impl="auto", causal=causal, window=window, sinks=sinks,
                           scale=scale, softcap=softcap, segment_ids=segment_ids)
    if q.shape[1] > 1:
      return blocked(q, k, v, causal=causal, scale=scale, window=window, sinks=sinks,
                     softcap=softcap, segment_ids=segment_ids)
  return reference(q, k, v, causal=causal, scale=scale, window=window, sinks=sinks,
                   softcap=softcap, segment_ids=segment_ids)


register("dense", dense, impls=("xla", "pallas", "auto"), decode="sparse")
