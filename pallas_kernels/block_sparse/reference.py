"""Plain-jnp specification of block-sparse attention: expand the table to a dense mask.

Materialises [B, H, T, S], so it is the test oracle for short sequences only; the gather-based
path in ``xla.py`` is the one to run at long T.
"""

import jax.numpy as jnp

from jaxllm.attention import masks as rules
from pallas_kernels.block_sparse import masks


def cap_logits(s, softcap):
  return s if softcap is None else softcap * jnp.tanh(s / softcap)


def attention(q, k, v, mask, *, causal=True, scale=None, window=None, sinks=0, softcap=None,
              segment_ids=None):
  """softmax(q k^T * scale) v over the positions ``mask`` (a table) lets each query see.

  Args:
    q: [B, T, H, D]; k, v: [B, S, Hkv, D] with Hkv dividing H.
    mask: :class:`masks.BlockTable` or :class:`masks.VerticalSlash` with B (or 1), H (or 1) dims.
    causal, window, sinks: element-wise rules applied on top of the table.
    scale: logit scale, default 1 / sqrt(D).
    softcap: optional tanh logit cap.
    segment_ids: optional int [B, S] document ids of packed rows: pairs of different segments
      are hidden inside the listed blocks too.

  Returns:
    (o [B, T, H, D] in q's dtype, lse [B, H, T] float32; rows that see nothing give 0 and -inf).
  """
  b, t, h, d = q.shape
  s, hkv = k.shape[1], k.shape[2]
  scale = d ** -0.5 if scale is None else scale
  ok = masks.dense_mask(mask, t, s, causal=causal)
  vis = rules.visible(*rules.positions(t, s), causal=causal, window=window, sinks=sinks,
                      segment_ids=segment_ids)
  ok &= vis if segment_ids is None else vis[:, None]
  ok = jnp.broadcast_to(ok, (b, h, t, s))
  q_g = q.reshape(b, t, hkv, h // hkv, d)
  logits = jnp.einsum("btkgd,bskd->bkgts", q_g, k, preferred_element_type=jnp.float32)
  logits = cap_logits(logits.astype(jnp.float32) * scale, softcap)
  logits = jnp.where(ok.reshape(b, hkv, h // hkv, t, s), logits, -jnp.inf)
  m = jnp.max(logits, axis=-1, keepdims=True)
  m = jnp.where(jnp.isfinite(m), m, 0.0)
  p = jnp.exp(logits - m)
  denom = jnp.sum(p, axis=-1, keepdims=True)
  safe = jnp.where(denom == 0, 1.0, denom)
  o = jnp.einsum("bkgts,bskd->btkgd", (p / safe).astype(v.dtype), v,
                 preferred_element_type=jnp.float32)
  lse = jnp.where(denom[..., 0] == 0, -jnp.inf, m[..., 0] + jnp.log(safe[..., 0]))
  return o.reshape(b, t, h, d).astype(q.dtype), lse.reshape(b, h, t)
