"""KV-cache decoding for the softmax-attention decoder: prefill, decode steps and generation.

``generate`` reads the prompt in one parallel pass (``prefill``), caches every layer's keys and
values, then feeds one token at a time (``decode_step``) so each new token costs attention over the
cache instead of a forward over the whole sequence. An eviction policy (``policies``) bounds the
cache: after the prompt and after every step each kv head keeps at most ``policy.budget`` tokens.
The prompt itself is read with full causal attention; the policy then cuts the cache using the
prompt's accumulated attention (how H2O and StreamingLLM serve a long prompt).

``forward_with_mask`` is the plain reference: the whole sequence in one pass with an explicit
per-layer, per-kv-head visibility mask. With the causal mask it equals the model's own forward; with
the sets of cached tokens each step attended to it equals what ``generate`` computed under an
evicting policy. The tests compare the two.

Supported models: ``io='tokens'``, the standard pre-norm block and ``attention='dense'`` (options
``scale``, ``softcap``, ``window``, ``sinks`` are honoured). Other attention methods have their own
decoders (e.g. the recurrent form of linear attention) and are refused here by name.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxllm.attention import masks
from jaxllm.inference import policies
from jaxllm.inference.policies import Policy
from jaxllm.models import layers

DENSE_OPTIONS = ("scale", "softcap", "window", "sinks")


class LayerCache(NamedTuple):
  k: jax.Array  # [B, S, Hkv, D], rotary positions applied
  v: jax.Array  # [B, S, Hkv, D]
  pos: jax.Array  # int32 [B, Hkv, S]: original position of each slot's token, -1 when empty
  score: jax.Array  # float32 [B, Hkv, S]: attention accumulated over every query that saw it


class KVCache(NamedTuple):
  layers: tuple  # one LayerCache per block
  length: jax.Array  # int32 scalar: tokens read so far (the position of the next token)


def check_model(model) -> None:
  """Raises a ValueError naming the field when ``model`` cannot be decoded with a KV cache."""
  cfg = model.cfg
  if cfg.io != "tokens":
    raise ValueError(f"KV-cache decoding needs model.io='tokens', got {cfg.io!r}")
  if cfg.block != "standard":
    raise ValueError(f"KV-cache decoding supports model.block='standard', got {cfg.block!r}")
  if cfg.attention != "dense":
    raise ValueError(f"KV-cache decoding is for softmax attention (model.attention='dense'), got "
                     f"{cfg.attention!r}; linear methods decode with their recurrent form")
  bad = sorted(set(dict(cfg.attention_options)) - set(DENSE_OPTIONS))
  if bad:
    raise ValueError(f"KV-cache decoding: model.attention_options {bad} unsupported; allowed: "
                     f"{list(DENSE_OPTIONS)}")


def _options(cfg):
  o = dict(cfg.attention_options)
  scale = o.get("scale")
  return (1.0 / math.sqrt(cfg.dim_per_head) if scale is None else float(scale), o.get("softcap"),
          o.get("window"), int(o.get("sinks", 0) or 0))


def _qkv(attn, x_BTD, positions_T):
  cfg = attn.cfg
  b, t, _ = x_BTD.shape
  q = attn.wq(x_BTD).reshape(b, t, cfg.num_heads, cfg.dim_per_head)
  k = attn.wk(x_BTD).reshape(b, t, cfg.kv_heads, cfg.dim_per_head)
  v = attn.wv(x_BTD).reshape(b, t, cfg.kv_heads, cfg.dim_per_head)
  if cfg.positions == "rope":
    q = layers.rope(q, positions_T, cfg.rope_theta, cfg.rope_scaling)
    k = layers.rope(k, positions_T, cfg.rope_theta, cfg.rope_scaling)
  return q, k, v


def _probs(cfg, q, k, visible):
  """Softmax weights [B, Hkv, G, T, S] of q [B, T, H, D] over k [B, S, Hkv, D] where ``visible``
  [B, Hkv, T, S] is True (float32 logits; rows with nothing visible are 0)."""
  b, t, h, d = q.shape
  hkv = k.shape[2]
  scale, softcap, _, _ = _options(cfg)
  q_g = q.reshape(b, t, hkv, h // hkv, d)
  logits = jnp.einsum("btkgd,bskd->bkgts", q_g, k, preferred_element_type=jnp.float32) * scale
  if softcap is not None:
    logits = softcap * jnp.tanh(logits / softcap)
  logits = jnp.where(visible[:, :, None], logits, -jnp.inf)
  m = jnp.max(logits, axis=-1, keepdims=True)
  p = jnp.exp(logits - jnp.where(jnp.isfinite(m), m, 0.0))
  denom = jnp.sum(p, axis=-1, keepdims=True)
  return p / jnp.where(denom == 0, 1.0, denom)


def _attend(cfg, q, k, v, visible):
  """Softmax attention (see :func:`_probs`). Returns (out [B, T, H, D], probs [B, Hkv, G, T, S])."""
  b, t, h, d = q.shape
  p = _probs(cfg, q, k, visible)
  o = jnp.einsum("bkgts,bskd->btkgd", p.astype(v.dtype), v, preferred_element_type=jnp.float32)
  return o.reshape(b, t, h, d).astype(q.dtype), p


def _model_visible(cfg, q_pos, k_pos):
  """The model's own mask between a query position and cached slots' positions (any shape, -1 for
  an empty slot): ``attention.masks.visible``'s causal window / sinks rule, elementwise."""
  _, _, window, sinks = _options(cfg)
  ok = (k_pos >= 0) & (k_pos <= q_pos)
  if window is not None:
    ok = ok & ((k_pos > q_pos - window) | (k_pos < sinks))
  return ok


def _embed(model, tokens_BT, positions_T):
  x = model.tok_embed(tokens_BT)
  if model.cfg.positions == "learned":
    x = x + model.pos_embed(positions_T)[None]
  return x


def _logits(model, x_BTD):
  y = model.final_norm(x_BTD)
  out = model.tok_embed.attend(y) if model.cfg.tie_embeddings else model.lm_head(y)
  return out.astype(jnp.float32)


def _block(block, x_BTD, attend_fn):
  """One pre-norm block; ``attend_fn(normed x) -> (attention out [B, T, H, D], aux)``."""
  h = block.attn_norm(x_BTD)
  b, t, _ = h.shape
  o, aux = attend_fn(h)
  cfg = block.attn.cfg
  x_BTD = x_BTD + block.attn.wo(o.reshape(b, t, cfg.num_heads * cfg.dim_per_head))
  return x_BTD + block.mlp(block.mlp_norm(x_BTD)), aux


def forward_with_mask(model, tokens_BT, visible):
  """Reference forward: logits [B, T, V] with attention restricted to ``visible``.

  Args:
    model: a decodable Transformer (see :func:`check_model`).
    tokens_BT: int token ids [B, T].
    visible: bool, broadcastable to [num_layers, B, Hkv, T, T]: query row, key column.
  """
  check_model(model)
  cfg = model.cfg
  b, t = tokens_BT.shape
  vis = jnp.broadcast_to(visible, (cfg.num_layers, b, cfg.kv_heads, t, t))
  positions = jnp.arange(t)
  x = _embed(model, tokens_BT, positions)
  for i, block in enumerate(model.blocks):
    def attend(h, i=i, block=block):
      q, k, v = _qkv(block.attn, h, positions)
      return _attend(cfg, q, k, v, vis[i])
    x, _ = _block(block, x, attend)
  return _logits(model, x)


def causal_mask(cfg, t):
  """The model's own [T, T] visibility (causal plus its window / sinks options)."""
  _, _, window, sinks = _options(cfg)
  return masks.visible(*masks.positions(t, t), causal=True, window=window, sinks=sinks)


def _compact(keep, arrays, slots):
  """Moves the kept entries (True in ``keep`` [B, Hkv, T]) to the front, ``slots`` wide."""
  order = jnp.argsort(~keep, axis=-1, stable=True)[..., :slots]  # kept first, in position order
  return [jnp.take_along_axis(a, order, axis=-1) for a in arrays], jnp.take_along_axis(
      keep, order, axis=-1), order


def prefill(model, tokens_BT, policy: Policy, max_new_tokens: int):
  """Reads the prompt in one pass and builds the cache.

  Returns (logits of the last prompt position [B, V], cache). The cache has
  ``policy.slots(T + max_new_tokens)`` slots per layer and kv head, holding at most
  ``policy.budget`` tokens.
  """
  check_model(model)
  cfg = model.cfg
  b, t = tokens_BT.shape
  slots = max(policy.slots(t + max_new_tokens), 1)
  positions = jnp.arange(t)
  vis = jnp.broadcast_to(causal_mask(cfg, t), (b, cfg.kv_heads, t, t))
  x = _embed(model, tokens_BT, positions)
  caches = []
  for block in model.blocks:
    def attend(h, block=block):
      q, k, v = _qkv(block.attn, h, positions)
      o, p = _attend(cfg, q, k, v, vis)
      return o, (k, v, p.sum(axis=(2, 3)))  # score: summed over the group's heads and queries
    x, (k, v, score) = _block(block, x, attend)
    pos = jnp.broadcast_to(positions.astype(jnp.int32), (b, cfg.kv_heads, t))
    pos, score = policies.cut(policy, pos, score, t - 1)
    if slots >= t:  # room for the whole prompt: pad with empty slots
      pad = slots - t
      pos = jnp.pad(pos, ((0, 0), (0, 0), (0, pad)), constant_values=-1)
      score = jnp.pad(score, ((0, 0), (0, 0), (0, pad)))
      k = jnp.pad(k, ((0, 0), (0, pad), (0, 0), (0, 0)))
      v = jnp.pad(v, ((0, 0), (0, pad), (0, 0), (0, 0)))
    else:  # gather each kv head's kept tokens into the first slots
      (pos, score), keep, order = _compact(pos >= 0, [pos, score], slots)
      pos, score = jnp.where(keep, pos, -1), jnp.where(keep, score, 0.0)
      idx = jnp.moveaxis(order, 1, 2)[..., None]  # [B, slots, Hkv, 1]
      k = jnp.take_along_axis(k, idx, axis=1)
      v = jnp.take_along_axis(v, idx, axis=1)
    caches.append(LayerCache(k, v, pos, score))
  logits = _logits(model, x[:, -1:])[:, 0]
  return logits, KVCache(tuple(caches), jnp.asarray(t, jnp.int32))


def decode_step(model, cache: KVCache, tokens_B, policy: Policy):
  """Feeds one token per sequence at position ``cache.length``.

  Returns (logits [B, V] for the next position, the updated cache, the positions each layer's kv
  heads attended to this step: a tuple of int32 [B, Hkv, S], -1 for unused slots).
  """
  cfg = model.cfg
  now = cache.length
  positions = now[None]
  x = _embed(model, tokens_B[:, None], positions)
  new_layers, attended = [], []
  for block, lc in zip(model.blocks, cache.layers):
    def attend(h, block=block, lc=lc):
      q, k, v = _qkv(block.attn, h, positions)
      hit = jax.nn.one_hot(policies.free_slot(lc.pos), lc.pos.shape[-1], dtype=bool)  # [B,Hkv,S]
      pos = jnp.where(hit, now, lc.pos)
      score = jnp.where(hit, 0.0, lc.score)
      hit_s = jnp.moveaxis(hit, 1, 2)[..., None]  # [B, S, Hkv, 1]
      kc = jnp.where(hit_s, k, lc.k)
      vc = jnp.where(hit_s, v, lc.v)
      visible = _model_visible(cfg, now, pos)  # [B, Hkv, S]
      if policy.name == "tokenselect":  # no eviction: every kv head holds the same positions
        p = _probs(cfg, q, kc, visible[:, :, None, :])
        vote = p.sum(axis=(1, 2, 3))[:, None, :]  # softmax weights summed over all query heads
        visible = policies.select_mask(policy, pos, visible, vote, now)
      o, p = _attend(cfg, q, kc, vc, visible[:, :, None, :])
      return o, (kc, vc, pos, score + p.sum(axis=(2, 3)), visible)
    x, (kc, vc, pos, score, visible) = _block(block, x, attend)
    attended.append(jnp.where(visible, pos, -1))
    pos, score = policies.cut(policy, pos, score, now)
    new_layers.append(LayerCache(kc, vc, pos, score))
  logits = _logits(model, x)[:, 0]
  return logits, KVCache(tuple(new_layers), now + 1), tuple(attended)


def generate(model, prompt_BT, max_new_tokens: int, policy: Policy | None = None, *,
             temperature: float = 0.0, rng=None, return_trace: bool = False):
  """Generates ``max_new_tokens`` tokens after ``prompt_BT`` with a KV cache.

  Args:
    model: a decodable Transformer (see :func:`check_model`).
    prompt_BT: int token ids [B, T], T >= 1 (every sequence the same length).
    max_new_tokens: tokens to generate (>= 1).
    policy: cache eviction policy; default ``Policy('full')``.
    temperature: 0 for greedy decoding, else sampling from softmax(logits / temperature).
    rng: a jax PRNG key, needed when temperature > 0.
    return_trace: also return, per decode step, the positions each layer attended to.

  Returns:
    dict with ``tokens`` int32 [B, N], ``logits`` float32 [B, N, V] (the distribution each token
    was chosen from) and, with ``return_trace``, ``attended``: a list (one per step after the
    first token) of tuples of int32 [B, Hkv, S] per layer.
  """
  check_model(model)
  policy = Policy() if policy is None else policy
  prompt_BT = jnp.asarray(prompt_BT)
  if prompt_BT.ndim != 2 or prompt_BT.shape[1] < 1:
    raise ValueError(f"prompt must be int token ids [B, T] with T >= 1, got shape {prompt_BT.shape}")
  if not jnp.issubdtype(prompt_BT.dtype, jnp.integer):
    raise ValueError(f"prompt must hold integer token ids, got dtype {prompt_BT.dtype}")
  if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
    raise ValueError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}")
  if temperature < 0:
    raise ValueError(f"temperature must be >= 0, got {temperature}")
  if temperature > 0 and rng is None:
    raise ValueError("sampling (temperature > 0) needs rng, a jax PRNG key")
  cfg = model.cfg
  total = prompt_BT.shape[1] + max_new_tokens
  if cfg.positions == "learned" and total - 1 > cfg.max_len:
    raise ValueError(f"prompt plus max_new_tokens needs {total - 1} positions, more than the "
                     f"model's learned max_len={cfg.max_len}")
  vocab = cfg.vocab_size
  if int(jnp.min(prompt_BT)) < 0 or int(jnp.max(prompt_BT)) >= vocab:
    raise ValueError(f"prompt token ids must lie in [0, vocab_size={vocab})")

  def choose(logits, key):
    if temperature == 0:
      return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    return jax.random.categorical(key, logits / temperature, axis=-1).astype(jnp.int32)

  keys = (jax.random.split(rng, max_new_tokens) if temperature > 0
          else [None] * max_new_tokens)
  logits, cache = _first(model, policy, max_new_tokens, prompt_BT)
  out_tokens, out_logits, trace = [], [logits], []
  tok = choose(logits, keys[0])
  out_tokens.append(tok)
  for i in range(1, max_new_tokens):
    logits, cache, attended = _step(model, policy, cache, tok)
    if return_trace:
      trace.append(attended)
    tok = choose(logits, keys[i])
    out_tokens.append(tok)
    out_logits.append(logits)
  result = {"tokens": jnp.stack(out_tokens, axis=1), "logits": jnp.stack(out_logits, axis=1)}
  if return_trace:
    result["attended"] = trace
  return result


def teacher_forced(model, prompt_BT, continuation_BN, policy: Policy | None = None):
  """Scores a given continuation through the cache: the prompt is prefilled, then the continuation
  is fed one token at a time (as in generation, but with the given tokens).

  Returns float32 logits [B, N, V]; entry i is the prediction for ``continuation_BN[:, i]``, made
  with whatever the policy left in the cache by then (how StreamingLLM and H2O measure perplexity
  and retrieval under a bounded cache).
  """
  check_model(model)
  policy = Policy() if policy is None else policy
  prompt_BT, continuation_BN = jnp.asarray(prompt_BT), jnp.asarray(continuation_BN)
  if (prompt_BT.ndim != 2 or continuation_BN.ndim != 2 or prompt_BT.shape[1] < 1
      or continuation_BN.shape[1] < 1 or prompt_BT.shape[0] != continuation_BN.shape[0]):
    raise ValueError("teacher_forced: prompt [B, T] and continuation [B, N] (T, N >= 1, same B) "
                     f"expected, got {prompt_BT.shape} and {continuation_BN.shape}")
  n = continuation_BN.shape[1]
  total = prompt_BT.shape[1] + n
  if model.cfg.positions == "learned" and total - 1 > model.cfg.max_len:
    raise ValueError(f"prompt plus continuation needs {total - 1} positions, more than the "
                     f"model's learned max_len={model.cfg.max_len}")
  return _forced(model, policy, prompt_BT, continuation_BN)


# Compiled once per (model structure, policy, shapes); the policy is a static argument.
@functools.partial(nnx.jit, static_argnums=(1,))
def _forced(model, policy, prompt, cont):
  logits, cache = prefill(model, prompt, policy, cont.shape[1])

  def body(cache, tok):
    logits, cache, _ = decode_step(model, cache, tok, policy)
    return cache, logits

  _, rest = jax.lax.scan(body, cache, cont[:, :-1].T)
  return jnp.concatenate([logits[:, None], jnp.moveaxis(rest, 0, 1)], axis=1)


@functools.partial(nnx.jit, static_argnums=(1, 2))
def _first(model, policy, max_new_tokens, prompt):
  return prefill(model, prompt, policy, max_new_tokens)


@functools.partial(nnx.jit, static_argnums=(1,))
def _step(model, policy, cache, tokens):
  return decode_step(model, cache, tokens, policy)


def trace_mask(cfg, prompt_len: int, attended, batch: int):
  """The [L, B, Hkv, T, T] visibility a traced generation used (T = prompt + traced steps + 1):
  the prompt rows causal, each decode row exactly the positions that step attended to."""
  t = prompt_len + len(attended)
  base = np.asarray(causal_mask(cfg, t))
  mask = np.broadcast_to(base, (cfg.num_layers, batch, cfg.kv_heads, t, t)).copy()
  for j, per_layer in enumerate(attended):
    row = prompt_len + j
    for layer, pos in enumerate(per_layer):
      pos = np.asarray(pos)  # [B, Hkv, S]
      hit = np.zeros((batch, cfg.kv_heads, t), bool)
      b_idx, h_idx, s_idx = np.nonzero(pos >= 0)
      hit[b_idx, h_idx, pos[b_idx, h_idx, s_idx]] = True
      mask[layer, :, :, row, :] = hit
  return jnp.asarray(mask)
