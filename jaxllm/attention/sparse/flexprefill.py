"""FlexPrefill (Lai et al. 2025): per-head vertical-slash or query-aware blocks, sized by mass.

Defaults follow REFERENCE A: block 128, gamma 0.9, tau 0.1, min budget 512 tokens, no max
budget (the official scripts use gamma 0.95 for Llama-3.1 / GLM-4 and min budget 1024).
The rule follows the public code (bytedance-seed/FlexPrefill ``get_active_blocks``):

* the last query block (``block`` rows) attends every key, causal in its corner; column scores
  are its mean softmax per key, slash scores the mean along each diagonal offset;
* each budget is ``n // block + 1`` blocks, n the number of sorted scores whose cumulative sum
  stays <= gamma (plus one), clamped to [ceil(min / block), min(ceil(max / block), nk)] (the
  public code divides by a literal 128; equal at the default block);
* the head is query-aware when sqrt(JS(softmax(mean(q_last) . avgpool(k)), pooled columns))
  < tau: its vertical and slash budgets drop to the minimum and it adds, from the block map
  softmax(avgpool(q) . avgpool(k)^T / sqrt(D)) (block-causal per row), the sorted blocks of the
  whole flattened map whose cumulative mass stays <= gamma x (query blocks) (``cut="global"``,
  the public code), or per query block the blocks until gamma is reached (``cut="row"``);
* key block 0 and the diagonal block (slash offset 0) are always kept;
* short inputs, S <= max(2 block, ceil(min / block) block), run dense.

With T < S the query blocks are the last T rows; the diagonal block of a query block is the key
block holding its last position and slash offsets count key blocks back from it.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from jaxllm.attention.sparse import _common as C

METHOD = "flexprefill"
CUTS = ("global", "row")
DEFAULTS = dict(block=128, gamma=0.9, tau=0.1, min_budget=512, max_budget=None, cut="global")


def check_options(*, block, gamma, tau, min_budget, max_budget, cut):
  C.check_int(METHOD, "block", block)
  C.check_float(METHOD, "gamma", gamma, low=0.0, high=1.0, low_open=True)
  C.check_float(METHOD, "tau", tau, low=0.0, high=1.0)
  C.check_int(METHOD, "min_budget", min_budget)
  C.check_int(METHOD, "max_budget", max_budget, allow_none=True)
  C.check_choice(METHOD, "cut", cut, CUTS)


def cover_count(x, gamma):
  """Number of sorted-descending entries whose cumulative sum is <= gamma, plus one ([..., n])."""
  csum = jnp.cumsum(-jnp.sort(-x, axis=-1), axis=-1)
  return jnp.sum(csum <= gamma, axis=-1) + 1


def _sqrt_js(p, r):
  m = (p + r) / 2
  kl = lambda a: jnp.sum(jnp.where(a > 0, a * jnp.log(jnp.where(a > 0, a, 1.0) / m), 0.0), -1)
  return jnp.sqrt(jnp.maximum(0.5 * kl(p) + 0.5 * kl(r), 0.0))


def _top_by_count(scores, counts):
  """Bool: the ``counts`` [B, H] highest entries of scores [B, H, n]."""
  order = jnp.argsort(-scores, axis=-1, stable=True)
  return jnp.argsort(order, axis=-1) < counts[..., None]


def select(q, k, *, block=DEFAULTS["block"], gamma=DEFAULTS["gamma"], tau=DEFAULTS["tau"],
           min_budget=DEFAULTS["min_budget"], max_budget=DEFAULTS["max_budget"],
           cut=DEFAULTS["cut"], scale=None):
  """FlexPrefill's blocks per query head, a :class:`BlockTable` of ``block`` x ``block``."""
  C.check_inputs(METHOD, q, k)
  check_options(block=block, gamma=gamma, tau=tau, min_budget=min_budget,
                max_budget=max_budget, cut=cut)
  b, t, h, d = q.shape
  s = k.shape[1]
  if s <= max(2 * block, math.ceil(min_budget / block) * block):
    return C.dense_table(q, k, block_q=block, block_k=block)
  scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
  blocks = _blocks(q, k, block=block, gamma=float(gamma), tau=float(tau), min_budget=min_budget,
                   max_budget=max_budget, cut=cut, scale=scale)
  return C.table_from_mask(blocks, block_q=block, block_k=block)


@functools.partial(jax.jit, static_argnames=("block", "gamma", "tau", "min_budget", "max_budget",
                                             "cut", "scale"))
def _blocks(q, k, *, block, gamma, tau, min_budget, max_budget, cut, scale):
  b, t, h, d = q.shape
  s = k.shape[1]
  nq, nk = C.num_blocks(t, block), C.num_blocks(s, block)
  min_b = math.ceil(min_budget / block)
  max_b = nk if max_budget is None else min(math.ceil(max_budget / block), nk)

  p = C.last_query_probs(q, k, block, scale=scale)  # [B, H, n, S]
  n_last = p.shape[2]
  vertical = p.mean(axis=2)
  slash = C.diagonal_sums(p, s) / n_last  # by offset d = q - k
  clamp = lambda n: jnp.minimum(jnp.maximum(n, min_b), max_b)
  n_vert = clamp(cover_count(vertical, gamma) // block + 1)
  n_slash = clamp(cover_count(slash, gamma) // block + 1)
  pad = nk * block - s
  vert_blk = jnp.pad(vertical, ((0, 0), (0, 0), (0, pad))).reshape(b, h, nk, block).sum(-1)
  slash_blk = jnp.pad(slash, ((0, 0), (0, 0), (0, pad))).reshape(b, h, nk, block).sum(-1)

  k_bar = C.block_pool(C.expand_heads(k, h), block)  # [B, H, nk, D]
  q_last_mean = (q[:, t - n_last:].astype(jnp.float32) * scale).mean(axis=1)  # [B, H, D]
  estimate = jax.nn.softmax(jnp.einsum("bhd,bhkd->bhk", q_last_mean, k_bar), axis=-1)
  query_aware = _sqrt_js(estimate, vert_blk) < tau  # [B, H]
  n_vert = jnp.where(query_aware, min(min_b, max_b), n_vert)
  n_slash = jnp.where(query_aware, min(min_b, max_b), n_slash)

  first_kept = jnp.arange(nk) == 0
  vert_sel = _top_by_count(jnp.where(first_kept, jnp.inf, vert_blk), n_vert)
  slash_sel = _top_by_count(jnp.where(first_kept, jnp.inf, slash_blk), n_slash)
  diag = jnp.asarray(C.query_block_last(t, s, block) // block)  # [nq]
  j = jnp.arange(nk)
  vis = j[None, :] <= diag[:, None]  # [nq, nk]
  offset = diag[:, None] - j[None, :]
  blocks = vert_sel[:, :, None, :] & vis
  blocks |= jnp.take_along_axis(slash_sel[:, :, None, :],
                                jnp.broadcast_to(jnp.clip(offset, 0, nk - 1), (b, h, nq, nk)),
                                axis=-1) & vis

  q_bar = C.block_pool(q, block) * scale  # [B, H, nq, D]
  logits = jnp.einsum("bhqd,bhkd->bhqk", q_bar, k_bar)
  block_map = jax.nn.softmax(jnp.where(vis, logits, -jnp.inf), axis=-1)
  if cut == "global":
    flat = block_map.reshape(b, h, nq * nk)
    order = jnp.argsort(-flat, axis=-1, stable=True)
    csum = jnp.cumsum(jnp.take_along_axis(flat, order, axis=-1), axis=-1)
    keep_sorted = csum <= gamma * nq
    aware = jnp.zeros_like(keep_sorted).at[
        jnp.arange(b)[:, None, None], jnp.arange(h)[None, :, None], order].set(keep_sorted)
    aware = aware.reshape(b, h, nq, nk)
  else:
    order = jnp.argsort(-block_map, axis=-1, stable=True)
    sorted_p = jnp.take_along_axis(block_map, order, axis=-1)
    before = jnp.cumsum(sorted_p, axis=-1) - sorted_p
    aware = jnp.take_along_axis(before < gamma, jnp.argsort(order, axis=-1), axis=-1)
  return blocks | (aware & vis & query_aware[..., None, None])
