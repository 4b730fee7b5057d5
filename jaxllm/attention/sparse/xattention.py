"""XAttention (Xu et al. 2025): antidiagonal block scores, per-row cumulative threshold.

Defaults follow REFERENCE A and the public code (mit-han-lab/x-attention ``xattn_estimate``,
``find_blocks_chunked``): block 128, stride 8, threshold (tau) 0.9 for every head (the public
code also takes per-head profiles: pass an [H] sequence). Rule:

* keys are grouped by ``stride`` consecutive positions and queries likewise; a query group
  meets a key group through the antidiagonal sum_j q[g + stride - 1 - j] . k[g' + j], scaled by
  1 / (sqrt(D) stride); a query group sees the key groups that start at or before its last
  position (the public code's group-level causal mask), and each group row is a softmax;
* a (query block, key block) score sums that softmax over the block's groups;
* per query block, key block 0 and the diagonal block (holding the block's last position) are
  kept, then the other blocks in descending score while the mass kept before each is below
  tau x the row's total; tau = 1 keeps every visible block (exact).

``cut="public"`` reproduces what ``find_blocks_chunked`` computes for a one-chunk prefill
(T == S): its forced diagonal overwrites the forced column 0, so only the diagonal's mass starts
the sum, its cumulative sum lags one block, so each block is judged by the mass before the
previous one (the first other block is always kept), and block 0 is kept anyway as the fill
index of the dropped entries.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxllm.attention.sparse import _common as C

METHOD = "xattention"
CUTS = ("paper", "public")
DEFAULTS = dict(block=128, stride=8, threshold=0.9, cut="paper")


def check_options(*, block, stride, threshold, heads: int):
  C.check_int(METHOD, "block", block)
  C.check_int(METHOD, "stride", stride)
  if block % stride:
    raise ValueError(f"{METHOD}: block must be a multiple of stride, got block={block}, "
                     f"stride={stride}")
  values = np.atleast_1d(np.asarray(threshold, dtype=object))
  if values.ndim != 1 or len(values) not in (1, heads):
    raise ValueError(f"{METHOD}: threshold must be a number or one per query head ({heads}), "
                     f"got {threshold!r}")
  for value in values:
    C.check_float(METHOD, "threshold", value, low=0.0, high=1.0, low_open=True)
  return np.broadcast_to(values.astype(np.float64), (heads,))


def _groups(x, stride: int, reverse: bool):
  """[B, L, N, D] -> float32 [B, N, ceil(L / stride), stride * D]: each row concatenates a
  group of ``stride`` positions (zero padded), reversed inside the group for queries."""
  b, length, n, d = x.shape
  ng = C.num_blocks(length, stride)
  xp = jnp.pad(x.astype(jnp.float32), ((0, 0), (0, ng * stride - length), (0, 0), (0, 0)))
  xg = xp.reshape(b, ng, stride, n, d)
  if reverse:
    xg = xg[:, :, ::-1]
  return jnp.transpose(xg, (0, 3, 1, 2, 4)).reshape(b, n, ng, stride * d)


def block_scores(q, k, *, block: int, stride: int, scale: float):
  """Antidiagonal block scores float32 [B, H, nq, nk] and the visible blocks [nq, nk]."""
  t, s, h = q.shape[1], k.shape[1], q.shape[2]
  qg = _groups(q, stride, reverse=True)  # [B, H, nqg, stride D]
  kg = _groups(C.expand_heads(k, h), stride, reverse=False)
  nqg, nkg = qg.shape[2], kg.shape[2]
  logits = jnp.einsum("bhqd,bhkd->bhqk", qg, kg) * (scale / stride)
  q_last = np.minimum((np.arange(nqg) + 1) * stride, t) - 1 + (s - t)
  ok = np.arange(nkg)[None, :] * stride <= q_last[:, None]
  p = jax.nn.softmax(jnp.where(jnp.asarray(ok), logits, -jnp.inf), axis=-1)
  per = block // stride
  nq, nk = C.num_blocks(t, block), C.num_blocks(s, block)
  p = jnp.pad(p, ((0, 0), (0, 0), (0, nq * per - nqg), (0, nk * per - nkg)))
  scores = p.reshape(p.shape[:2] + (nq, per, nk, per)).sum(axis=(3, 5))
  return scores, C.visible_blocks(t, s, block, block)


def select(q, k, *, block=DEFAULTS["block"], stride=DEFAULTS["stride"],
           threshold=DEFAULTS["threshold"], cut=DEFAULTS["cut"], scale=None):
  """XAttention's blocks per query head, a :class:`BlockTable` of ``block`` x ``block``."""
  C.check_inputs(METHOD, q, k)
  b, t, h, d = q.shape
  s = k.shape[1]
  tau = check_options(block=block, stride=stride, threshold=threshold, heads=h)
  scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
  C.check_choice(METHOD, "cut", cut, CUTS)
  blocks = _blocks(q, k, block=block, stride=stride, tau=tuple(float(x) for x in tau),
                   scale=scale, cut=cut)
  return C.table_from_mask(blocks, block_q=block, block_k=block)


@functools.partial(jax.jit, static_argnames=("block", "stride", "tau", "scale", "cut"))
def _blocks(q, k, *, block, stride, tau, scale, cut):
  t, s = q.shape[1], k.shape[1]
  scores, vis = block_scores(q, k, block=block, stride=stride, scale=scale)
  nq, nk = scores.shape[2:]
  diag = C.query_block_last(t, s, block) // block
  first = np.arange(nk)[None, :] == 0
  forced = np.arange(nk)[None, :] == diag[:, None]
  if cut == "paper":
    forced |= first
  forced = jnp.asarray(forced)
  vis = jnp.asarray(vis)
  scores = jnp.where(vis, scores, 0.0)
  total = scores.sum(-1, keepdims=True)
  forced_mass = jnp.where(forced, scores, 0.0).sum(-1, keepdims=True)
  others = jnp.where(forced | ~vis, -jnp.inf, scores)
  order = jnp.argsort(-others, axis=-1, stable=True)
  sorted_o = jnp.where(jnp.isfinite(jnp.take_along_axis(others, order, -1)),
                       jnp.take_along_axis(others, order, -1), 0.0)
  before = forced_mass + jnp.cumsum(sorted_o, axis=-1) - sorted_o
  if cut == "public":  # each block is judged by the mass before the previous one
    before = jnp.concatenate([jnp.zeros_like(before[..., :1]), before[..., :-1]], axis=-1)
  tau_h = jnp.asarray(tau, jnp.float32)[None, :, None, None]
  keep_sorted = (before < tau_h * total) | (tau_h >= 1.0)
  keep = jnp.take_along_axis(keep_sorted, jnp.argsort(order, axis=-1), axis=-1)
  return (keep | forced | jnp.asarray(first)) & vis
