"""Dense softmax attention: the float32 reference and the library kernels behind ``auto``."""

import functools
import math

import jax
import jax.numpy as jnp

from jaxllm.attention import masks
from jaxllm.attention.methods import sparse
from jaxllm.attention.registry import register


def _check_options(window, sinks, softcap):
  if window is not None and (not isinstance(window, int) or window < 1):
    raise ValueError(f"dense attention: window must be a positive int or None, got {window!r}")
  if not isinstance(sinks, int) or sinks < 0:
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


def reference(q, k, v, *, causal=True, scale=None, window=None, sinks=0, softcap=None):
  """softmax(q k^T * scale + mask) v with float32 logits and softmax; GQA by head groups."""
  t, s = q.shape[1], k.shape[1]
  scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
  ok = masks.visible(*masks.positions(t, s), causal=causal, window=window, sinks=sinks)
  return masked_attention(q, k, v, ok, scale=scale, softcap=softcap)[0]


def _library_kernel(q, k, v, *, causal, scale, window, sinks, softcap):
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
    return tokamax.dot_product_attention(
        q, k, v, scale=scale, is_causal=causal, local_window_size=window_arg,
        logits_soft_cap=softcap)
  from jaxllm.attention import splash  # pylint: disable=g-import-not-at-top
  return splash.splash_dense(q, k, v, causal=causal, scale=scale, window=window, softcap=softcap)


def dense(q, k, v, *, impl="auto", causal=True, scale=None, window=None, sinks=0, softcap=None):
  """Dense attention; optional sliding ``window``, ``sinks`` tokens and logit ``softcap``."""
  _check_options(window, sinks, softcap)
  scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
  if impl == "pallas":
    # The block-sparse kernel with the full causal (or band) table; interpreted off-GPU.
    return sparse.banded(q, k, v, impl="pallas", causal=causal, window=window, sinks=sinks,
                         scale=scale, softcap=softcap)
  if impl == "auto":
    out = _library_kernel(q, k, v, causal=causal, scale=scale, window=window, sinks=sinks,
                          softcap=softcap)
    if out is not None:
      return out
  return reference(q, k, v, causal=causal, scale=scale, window=window, sinks=sinks,
                   softcap=softcap)


register("dense", dense, impls=("xla", "pallas", "auto"), decode="sparse")
