"""Per-layer decoding caches: what the model's ``Attention`` attends through when given one.

The model computes q, k, v with its own projections and positions and hands them to the layer
cache (``Attention(x, positions, cache)``); the cache keeps what later tokens need and attends by
the method's registered decode rule (``jaxllm.attention.registry.DECODES``):

* ``dense`` / ``sparse``: a KV cache. The prefill runs the registered method itself over the prompt
  (a sparse prefill method reads the prompt its own way) and keeps k, v and each token's position;
  a decode step writes the new token into a free slot and attends over the cached tokens the policy
  keeps: all of them (``dense``) or those the method's window / sinks leave visible (``sparse``).
  A window subset, and TokenSelect's selection, is read through ``pallas_kernels.sparse_decode``
  when the impl asks for the kernel.
* ``duo`` (DuoAttention, :class:`DuoPrefill`): per-kv-head budgets in one cache: retrieval heads
  keep every token, streaming heads the sinks and recent tokens only.
* ``recurrent``: the decayed linear state [B, H, D, E] of ``jaxllm.attention.linear.state``: O(1)
  per token.

Prompts of different lengths are right-padded: row b's tokens are columns [0, lengths[b]). Causal
attention never lets a real token see the padding after it, so the method's own prefill is exact
for every real token, and the padding is never cached.
"""

from __future__ import annotations

import inspect
import math

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from jaxllm import attention as attn_api
from jaxllm.attention import linear as linear_attn
from jaxllm.attention import masks
from jaxllm.attention.linear import apply as linear_apply
from jaxllm.attention.linear import feature_maps
from jaxllm.attention.linear import options as linear_options
from jaxllm.attention.methods import dense
from jaxllm.inference import policies
from jaxllm.inference.policies import Policy
from pallas_kernels import common as kernel_common
from pallas_kernels.sparse_decode import api as sparse_decode_api

_FORM_OPTIONS = ("form", "chunk_size")  # how a linear prefill is computed, not what


def mask_options(method: str, options: dict, head_dim: int):
  """(scale, softcap, window, sinks) a softmax method decodes with: its given ``options`` over its
  signature's defaults (e.g. ``streaming``'s 4 sinks). Window and sinks are the mask only for
  ``sparse``-decoding methods; elsewhere (sparse prefill patterns) they are not the model's mask."""
  m = attn_api.get(method)
  params = inspect.signature(m.fn).parameters
  o = {n: p.default for n, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}
  o.update(options)
  scale = o.get("scale")
  scale = 1.0 / math.sqrt(head_dim) if scale is None else float(scale)
  if m.decode != "sparse":
    return scale, o.get("softcap"), None, 0
  return scale, o.get("softcap"), o.get("window"), int(o.get("sinks") or 0)


def visible(q_pos_B, pos_BKS, *, window, sinks):
  """The model's own mask (``attention.masks.visible``) from one query position per row to cached
  slots' positions [B, Hkv, S] (-1 for an empty slot, never visible)."""
  rule = lambda q, k: masks.visible(q[None], k, causal=True, window=window, sinks=sinks)[0]
  ok = jax.vmap(jax.vmap(rule, (None, 0)), (0, 0))(q_pos_B, pos_BKS)
  return ok & (pos_BKS >= 0)


def _kernel_wanted(impl: str) -> bool:
  return impl == "pallas" or (impl == "auto" and jax.default_backend() in ("gpu", "tpu"))


def subset_attention(q_BTHD, k_BSKD, v_BSKD, chosen_BKS, *, max_chosen: int, scale: float):
  """Softmax attention of one query per row over the chosen slots only, through the sparse-decode
  kernel: each (row, kv head) gathers its chosen keys and values (at most ``max_chosen``) into a
  short buffer the kernel reads block by block (interpreted off GPU / TPU).

  Returns [B, 1, H, D] in q's dtype; equals the masked softmax over ``chosen_BKS``.
  """
  b, _, h, d = q_BTHD.shape
  s, hkv = k_BSKD.shape[1], k_BSKD.shape[2]
  tpu = jax.default_backend() == "tpu"
  block_k = kernel_common.NUM_LANES if tpu else kernel_common.TRITON_MIN_TILE
  m = min(max_chosen, s)
  order = jnp.argsort(~chosen_BKS, axis=-1, stable=True)[..., :m]  # chosen first
  count = jnp.minimum(jnp.sum(chosen_BKS, axis=-1), m).astype(jnp.int32)  # [B, Hkv]
  idx = jnp.moveaxis(order, 1, 2)[..., None]  # [B, m, Hkv, 1]
  pad = -(-m // block_k) * block_k - m

  def gather(x):  # [B, S, Hkv, D] -> [B * Hkv, m + pad, 1, D]: one kernel row per kv head
    x = jnp.moveaxis(jnp.take_along_axis(x, idx, axis=1), 2, 1).reshape(b * hkv, m, 1, d)
    return jnp.pad(x, ((0, 0), (0, pad), (0, 0), (0, 0)))

  blocks = (m + pad) // block_k
  kv_idx = jnp.broadcast_to(jnp.arange(blocks, dtype=jnp.int32), (b * hkv, 1, blocks))
  cnt = count.reshape(b * hkv)
  o = sparse_decode_api.sparse_decode(
      q_BTHD[:, 0].reshape(b * hkv, h // hkv, d), gather(k_BSKD), gather(v_BSKD), kv_idx,
      (-(-cnt // block_k))[:, None], cnt, block_k=block_k, num_splits=1, scale=scale,
      impl="pallas")
  return o.reshape(b, 1, h, d)


@flax.struct.dataclass
class KVPrefill:
  """An empty KV cache of ``slots`` slots per kv head, to be filled by the prompt."""
  lengths: jax.Array  # int32 [B]: real prompt tokens per row (right padding after them)
  policy: Policy = flax.struct.field(pytree_node=False)
  slots: int = flax.struct.field(pytree_node=False)

  def attend(self, q, k, v, positions, *, method, impl, options):
    del positions  # the prompt sits at columns 0..T-1
    policy = self.policy
    b, t, h, d = q.shape
    hkv = k.shape[2]
    o = attn_api.attention(q, k, v, method=method, impl=impl, causal=True, **options)
    valid = jnp.arange(t)[None] < self.lengths[:, None]  # [B, T]
    pos = jnp.broadcast_to(jnp.where(valid, jnp.arange(t, dtype=jnp.int32), -1)[:, None],
                           (b, hkv, t))
    score = jnp.zeros((b, hkv, t), jnp.float32)
    if policy.name == "h2o":  # heavy hitters: the attention each prompt token received
      scale, softcap, window, sinks = mask_options(method, options, d)
      ok = masks.visible(*masks.positions(t, t), causal=True, window=window, sinks=sinks)
      p = dense.masked_softmax(q, k, ok & valid[:, None, None, None, :], scale=scale,
                               softcap=softcap)
      score = jnp.sum(p * valid[:, None, None, :, None], axis=(2, 3))  # padding queries: none
    pos, score = policies.cut(policy, pos, score, (self.lengths - 1)[:, None, None])
    slots = self.slots
    if slots >= t:  # room for the whole prompt: pad with empty slots
      pad = slots - t
      pos = jnp.pad(pos, ((0, 0), (0, 0), (0, pad)), constant_values=-1)
      score = jnp.pad(score, ((0, 0), (0, 0), (0, pad)))
      k = jnp.pad(k, ((0, 0), (0, pad), (0, 0), (0, 0)))
      v = jnp.pad(v, ((0, 0), (0, pad), (0, 0), (0, 0)))
    else:  # gather each kv head's kept tokens into the first slots, in position order
      order = jnp.argsort(pos < 0, axis=-1, stable=True)[..., :slots]
      pos, score = (jnp.take_along_axis(x, order, axis=-1) for x in (pos, score))
      idx = jnp.moveaxis(order, 1, 2)[..., None]  # [B, slots, Hkv, 1]
      k = jnp.take_along_axis(k, idx, axis=1)
      v = jnp.take_along_axis(v, idx, axis=1)
    select = policy.name == "tokenselect"
    return o, KVLayer(
        k, v, pos, score, attended=pos,
        sel_q=jnp.zeros((b, h * d if select else 0), jnp.float32),
        sel=jnp.zeros((b, hkv, slots if select else 0), bool),
        has_sel=jnp.zeros((b,), bool), reused=jnp.zeros((b,), jnp.int32), policy=policy)


@flax.struct.dataclass
class MomentumPrefill:
  """Momentum attention's prefill: the KV cache of its softmax part, plus the decayed value sum
  S = sum_i eta^(L-1-i) v_i at each row's last prompt token."""
  kv: KVPrefill

  def attend(self, q, k, v, positions, *, method, impl, options):
    o, kv = self.kv.attend(q, k, v, positions, method=method, impl=impl, options=options)
    eta = float(options["eta"])
    lengths = self.kv.lengths
    age = (lengths[:, None] - 1 - jnp.arange(v.shape[1])[None]).astype(jnp.float32)  # [B, T]
    w = jnp.where(age >= 0, eta ** jnp.maximum(age, 0.0), 0.0)  # padding after L: weight 0
    s = jnp.einsum("bt,btkd->bkd", w, v.astype(jnp.float32))
    return o, MomentumLayer(kv, s, eta)


@flax.struct.dataclass
class MomentumLayer:
  """A KV cache plus momentum attention's state: o_t = softmax part + eta S_{t-1},
  S_t = eta S_{t-1} + v_t (``jaxllm.attention.methods.linear.momentum``)."""
  kv: "KVLayer"
  s: jax.Array  # float32 [B, Hkv, D]
  eta: float = flax.struct.field(pytree_node=False)

  @property
  def attended(self):
    return self.kv.attended

  def attend(self, q, k, v, positions, *, method, impl, options):
    o, kv = self.kv.attend(q, k, v, positions, method=method, impl=impl, options=options)
    mom = linear_apply.expand_kv((self.eta * self.s)[:, None], q.shape[2])  # [B, 1, H, D]
    o = (o.astype(jnp.float32) + mom).astype(q.dtype)
    return o, self.replace(kv=kv, s=self.eta * self.s + v[:, 0].astype(jnp.float32))


@flax.struct.dataclass
class KVLayer:
  """A filled KV cache; ``attend`` is one decode step (T = 1)."""
  k: jax.Array  # [B, S, Hkv, D], rotary positions applied
  v: jax.Array  # [B, S, Hkv, D]
  pos: jax.Array  # int32 [B, Hkv, S]: original position of each slot's token, -1 when empty
  score: jax.Array  # float32 [B, Hkv, S]: h2o's attention accumulated over every query
  attended: jax.Array  # int32 [B, Hkv, S]: the positions the last step attended to, else -1
  # TokenSelect's selection cache: the query that made the kept selection, its vote-chosen slots,
  # whether one exists and how many steps reused it (zero-width for other policies).
  sel_q: jax.Array  # float32 [B, H * D]
  sel: jax.Array  # bool [B, Hkv, S]
  has_sel: jax.Array  # bool [B]
  reused: jax.Array  # int32 [B]
  policy: Policy = flax.struct.field(pytree_node=False)

  def attend(self, q, k, v, positions, *, method, impl, options):
    policy = self.policy
    b, _, h, d = q.shape
    s = self.pos.shape[-1]
    now = positions[:, 0].astype(jnp.int32)  # [B]
    hit = jax.nn.one_hot(policies.free_slot(self.pos), s, dtype=bool)  # [B, Hkv, S]
    pos = jnp.where(hit, now[:, None, None], self.pos)
    score = jnp.where(hit, 0.0, self.score)
    hit_s = jnp.moveaxis(hit, 1, 2)[..., None]  # [B, S, Hkv, 1]
    kc = jnp.where(hit_s, k, self.k)
    vc = jnp.where(hit_s, v, self.v)
    scale, softcap, window, sinks = mask_options(method, options, d)
    vis = visible(now, pos, window=window, sinks=sinks)
    new = self
    if policy.name == "tokenselect":
      vis, new = self._select(q, kc, pos, vis, now, scale, softcap)
    subset = policy.name == "tokenselect" or window is not None  # a window: a sparse decode
    kernel = (subset and policy.name != "h2o"
              and _kernel_wanted(policy.impl if policy.name == "tokenselect" else impl))
    if kernel and softcap is not None:
      raise ValueError(f"the sparse-decode kernel has no logit softcap (softcap={softcap}); "
                       "use impl='xla' for this model")
    if kernel:
      max_chosen = policy.budget if policy.name == "tokenselect" else window + sinks
      o = subset_attention(q, kc, vc, vis, max_chosen=max_chosen, scale=scale)
    else:
      o, p = dense.masked_attention(q, kc, vc, vis[:, :, None, None, :], scale=scale,
                                    softcap=softcap)
      if policy.name == "h2o":
        score = score + jnp.sum(p, axis=(2, 3))
    attended = jnp.where(vis, pos, -1)
    pos, score = policies.cut(policy, pos, score, now[:, None, None])
    return o, new.replace(k=kc, v=vc, pos=pos, score=score, attended=attended)

  def _select(self, q, kc, pos, vis, now, scale, softcap):
    """TokenSelect's step: the fixed tokens, plus either the kept vote-chosen tokens (query still
    similar to the one that chose them) or a fresh soft vote over the whole visible cache."""
    policy = self.policy
    b = q.shape[0]
    now_b = now[:, None, None]
    fixed = policies.fixed_mask(policy, pos, vis, now_b)
    f = q.reshape(b, -1).astype(jnp.float32)  # the step's query, all heads flattened
    norms = jnp.linalg.norm(f, axis=-1) * jnp.linalg.norm(self.sel_q, axis=-1)
    cos = jnp.clip(jnp.sum(f * self.sel_q, -1) / jnp.where(norms == 0, 1.0, norms), -1.0, 1.0)
    reuse = self.has_sel & (cos > policy.threshold)  # [B]

    def fresh(_):
      p = dense.masked_softmax(q, kc, vis[:, :, None, None, :], scale=scale, softcap=softcap)
      vote = jnp.sum(p, axis=(1, 2, 3))[:, None, :]  # softmax weights summed over every head
      return policies.select_mask(policy, pos, vis, vote, now_b) & ~fixed

    # Every row reusing skips the vote (the point of the selection cache).
    chosen = jax.lax.cond(jnp.all(reuse), lambda _: jnp.zeros_like(vis), fresh, None)
    chosen = jnp.where(reuse[:, None, None], self.sel & vis, chosen)
    keep = reuse[:, None]
    return fixed | chosen, self.replace(
        sel_q=jnp.where(keep, self.sel_q, f), sel=chosen, has_sel=jnp.ones_like(self.has_sel),
        reused=self.reused + reuse.astype(jnp.int32))


def _state_options(options: dict) -> dict:
  return {n: x for n, x in options.items() if n not in _FORM_OPTIONS}


@flax.struct.dataclass
class StatePrefill:
  """An empty recurrent state, to be filled by the prompt."""
  lengths: jax.Array  # int32 [B]

  def attend(self, q, k, v, positions, *, method, impl, options):
    del positions
    b, t, h, d = q.shape
    o = attn_api.attention(q, k, v, method=method, impl=impl, causal=True, **options)
    spec = linear_options.spec_for(method, h, d, **_state_options(options))
    # S_L = sum_{i < L} lambda^(L - 1 - i) phi(k_i) [v_i, 1]^T at each row's own length L.
    k_f = feature_maps.feature_map(spec.feature_map)(
        linear_apply.expand_kv(k, h).astype(jnp.float32))
    v_f = linear_apply.expand_kv(v, h).astype(jnp.float32)
    if spec.normalize:
      v_f = jnp.concatenate([v_f, jnp.ones(v_f.shape[:-1] + (1,), jnp.float32)], axis=-1)
    dist = (self.lengths[:, None] - 1 - jnp.arange(t))[:, None, :].astype(jnp.float32)
    w = jnp.where(dist >= 0, jnp.exp(spec.log_decay[None, :, None] * jnp.maximum(dist, 0)), 0.0)
    state = linear_attn.init_state(method, b, h, d, **_state_options(options))
    return o, StateLayer(state.replace(s=jnp.einsum("bthd,bht,bthe->bhde", k_f, w, v_f)))


@flax.struct.dataclass
class StateLayer:
  """A filled recurrent state; ``attend`` is one decode step."""
  state: linear_attn.LinearState

  def attend(self, q, k, v, positions, *, method, impl, options):
    del positions, method, impl, options  # resolved into the state at the prefill
    o, state = linear_attn.step(self.state, q[:, 0], k[:, 0], v[:, 0])
    return o[:, None], StateLayer(state)


@flax.struct.dataclass
class Masked:
  """No cache: softmax attention over the layer's own keys under a given visibility
  [B, Hkv, T, S] (the reference forward for what an evicting decode attended to)."""
  visible: jax.Array

  def attend(self, q, k, v, positions, *, method, impl, options):
    del positions, impl
    scale, softcap, _, _ = mask_options(method, options, q.shape[-1])
    o, _ = dense.masked_attention(q, k, v, self.visible[:, :, None], scale=scale,
                                  softcap=softcap)
    return o, self


def _kv_group(x_BTHD, kv_heads, hkv: int):
  """The query heads [B, T, len(kv_heads) * G, D] that read the kv heads ``kv_heads`` (a GQA
  group stays whole)."""
  b, t, h, d = x_BTHD.shape
  g = h // hkv
  return x_BTHD.reshape(b, t, hkv, g, d)[:, :, kv_heads].reshape(b, t, len(kv_heads) * g, d)


def _merge_groups(parts, order, hkv: int):
  """The inverse of :func:`_kv_group` over a split of the kv heads: the per-part outputs
  [B, T, n_i * G, D], concatenated in ``order`` (the parts' kv heads in sequence), back in head
  order [B, T, H, D]."""
  b, t, _, d = parts[0].shape
  total = sum(p.shape[2] for p in parts)
  g = total // hkv
  o = jnp.concatenate([p.reshape(b, t, -1, g, d) for p in parts], axis=2)
  return o[:, :, np.argsort(order)].reshape(b, t, total, d)


def streaming_visible(now, pos, *, sinks: int, recent: int):
  """What a DuoAttention streaming head lets the query at ``now`` see among cached positions
  ``pos`` (-1 empty): the first ``sinks`` tokens and the ``recent`` tokens before it (plus itself,
  which the decode step appends): the shared visibility rule's band with window = recent + 1."""
  return (pos >= 0) & masks.visible_pairs(now, pos, causal=True, window=recent + 1,
                                          sinks=sinks)


@flax.struct.dataclass
class DuoPrefill:
  """An empty DuoAttention cache with per-kv-head budgets (``jaxllm.inference.duo``): retrieval
  heads (``retrieval[j]`` True) keep every token in ``full_slots`` slots, streaming heads the first
  ``sinks`` and the last ``recent`` tokens in ``stream_slots`` = min(total, sinks + recent) slots.

  The prompt runs the retrieval heads through the model's own method and the streaming heads
  through the block-sparse ``sink_window`` op (window = recent + 1, see
  :func:`streaming_visible`).
  """
  lengths: jax.Array  # int32 [B]
  retrieval: tuple = flax.struct.field(pytree_node=False)  # bool per kv head
  sinks: int = flax.struct.field(pytree_node=False)
  recent: int = flax.struct.field(pytree_node=False)
  full_slots: int = flax.struct.field(pytree_node=False)
  stream_slots: int = flax.struct.field(pytree_node=False)

  def attend(self, q, k, v, positions, *, method, impl, options):
    del positions  # the prompt sits at columns 0..T-1
    b, t, h, d = q.shape
    hkv = k.shape[2]
    ret = np.asarray(self.retrieval, bool)
    r_idx, s_idx = np.flatnonzero(ret), np.flatnonzero(~ret)
    scale, softcap, _, _ = mask_options(method, options, d)
    parts = []
    if r_idx.size:
      parts.append(attn_api.attention(_kv_group(q, r_idx, hkv), k[:, :, r_idx], v[:, :, r_idx],
                                      method=method, impl=impl, causal=True, **options))
    if s_idx.size:
      parts.append(attn_api.attention(
          _kv_group(q, s_idx, hkv), k[:, :, s_idx], v[:, :, s_idx], method="sink_window",
          impl=impl, causal=True, sinks=self.sinks, window=self.recent + 1, scale=scale,
          softcap=softcap))
    o = _merge_groups(parts, np.concatenate([r_idx, s_idx]), hkv)
    col = jnp.arange(t, dtype=jnp.int32)[None]  # [1, T]
    valid = col < self.lengths[:, None]
    full_pos = jnp.where(valid, col, -1)
    # The next query (at position L) sees the sinks and positions >= L - recent.
    keep = valid & ((col < self.sinks) | (col >= self.lengths[:, None] - self.recent))
    stream_pos = jnp.where(keep, col, -1)
    kf, vf, pf = _fit(k[:, :, r_idx], v[:, :, r_idx], full_pos, self.full_slots)
    ks, vs, ps = _fit(k[:, :, s_idx], v[:, :, s_idx], stream_pos, self.stream_slots)
    return o, DuoLayer(kf, vf, pf, ks, vs, ps, retrieval=self.retrieval, sinks=self.sinks,
                       recent=self.recent)


def _fit(k, v, pos_BT, slots: int):
  """Keys, values [B, slots, n, D] and positions [B, n, slots] of the kept tokens (pos >= 0) in
  position order, padded with empty slots; the caller guarantees they fit."""
  b, t, n, _ = k.shape
  pos = jnp.broadcast_to(pos_BT[:, None], (b, n, t))
  if slots >= t:
    pad = slots - t
    return (jnp.pad(k, ((0, 0), (0, pad), (0, 0), (0, 0))),
            jnp.pad(v, ((0, 0), (0, pad), (0, 0), (0, 0))),
            jnp.pad(pos, ((0, 0), (0, 0), (0, pad)), constant_values=-1))
  order = jnp.argsort(pos_BT < 0, axis=-1, stable=True)[:, :slots]  # [B, slots]
  take = lambda x: jnp.take_along_axis(x, order[:, :, None, None], axis=1)
  return take(k), take(v), jnp.take_along_axis(pos, order[:, None, :], axis=-1)


@flax.struct.dataclass
class DuoLayer:
  """A filled DuoAttention cache; ``attend`` is one decode step. Retrieval heads append the new
  token and attend over everything; streaming heads attend over their sinks + recent tokens plus
  the new one, which then replaces the oldest non-sink token (a free slot first), so the streaming
  part never holds more than sinks + recent tokens."""
  kf: jax.Array  # [B, Sf, Kr, D] retrieval heads
  vf: jax.Array
  pf: jax.Array  # int32 [B, Kr, Sf], -1 empty
  ks: jax.Array  # [B, Ss, Ks, D] streaming heads
  vs: jax.Array
  ps: jax.Array  # int32 [B, Ks, Ss]
  retrieval: tuple = flax.struct.field(pytree_node=False)
  sinks: int = flax.struct.field(pytree_node=False)
  recent: int = flax.struct.field(pytree_node=False)

  def attend(self, q, k, v, positions, *, method, impl, options):
    del impl
    d = q.shape[-1]
    hkv = k.shape[2]
    ret = np.asarray(self.retrieval, bool)
    r_idx, s_idx = np.flatnonzero(ret), np.flatnonzero(~ret)
    scale, softcap, _, _ = mask_options(method, options, d)
    now = positions[:, 0].astype(jnp.int32)  # [B]
    now_b = now[:, None, None]
    parts, new = [], {}
    if r_idx.size:
      hit = jax.nn.one_hot(policies.free_slot(self.pf), self.pf.shape[-1], dtype=bool)
      pf = jnp.where(hit, now_b, self.pf)
      hit_s = jnp.moveaxis(hit, 1, 2)[..., None]
      kf = jnp.where(hit_s, k[:, :, r_idx], self.kf)
      vf = jnp.where(hit_s, v[:, :, r_idx], self.vf)
      o, _ = dense.masked_attention(_kv_group(q, r_idx, hkv), kf, vf,
                                    (pf >= 0)[:, :, None, None, :], scale=scale, softcap=softcap)
      parts.append(o)
      new.update(kf=kf, vf=vf, pf=pf)
    if s_idx.size:
      k_s, v_s = k[:, :, s_idx], v[:, :, s_idx]
      n = len(s_idx)
      pos = jnp.concatenate([self.ps, jnp.broadcast_to(now_b, (now.shape[0], n, 1))], axis=-1)
      vis = streaming_visible(now_b, pos, sinks=self.sinks, recent=self.recent)
      o, _ = dense.masked_attention(_kv_group(q, s_idx, hkv),
                                    jnp.concatenate([self.ks, k_s], axis=1),
                                    jnp.concatenate([self.vs, v_s], axis=1),
                                    vis[:, :, None, None, :], scale=scale, softcap=softcap)
      parts.append(o)
      free = self.ps < 0
      oldest = jnp.argmin(jnp.where(self.ps >= self.sinks, self.ps, jnp.iinfo(jnp.int32).max),
                          axis=-1)
      victim = jnp.where(jnp.any(free, axis=-1), jnp.argmax(free, axis=-1), oldest)
      hit = jax.nn.one_hot(victim, self.ps.shape[-1], dtype=bool)  # [B, Ks, Ss]
      hit_s = jnp.moveaxis(hit, 1, 2)[..., None]
      new.update(ks=jnp.where(hit_s, k_s, self.ks), vs=jnp.where(hit_s, v_s, self.vs),
                 ps=jnp.where(hit, now_b, self.ps))
    o = _merge_groups(parts, np.concatenate([r_idx, s_idx]), hkv)
    return o, self.replace(**new)
