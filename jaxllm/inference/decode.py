"""Cached decoding through the model's own modules: prefill, decode steps and generation.

``generate`` reads the prompt in one parallel pass (``prefill``), then feeds one token at a time
(``decode_step``) so each new token costs attention over the cache (or one recurrent update)
instead of a forward over the whole sequence. Both are the model's own forward given per-layer
caches (``cache``): embeddings, blocks, norms and head are the model's; each attention layer
attends through its cache by its method's registered decode rule. Every registered method with a
decode rule runs its own prefill, sparse prefill methods included.

An eviction policy (``policies``) bounds a KV cache: after the prompt and after every step each kv
head keeps at most ``policy.budget`` tokens; the prompt itself is read in full and the policy then
cuts the cache (how H2O and StreamingLLM serve a long prompt). TokenSelect keeps the cache and
picks the tokens each step attends to.

Prompts of different lengths come as one padded [B, T] array with ``lengths`` [B]; ``padding``
says on which side the padding sits. Each row continues from its own last token.

``forward_with_mask`` is the model's forward with an explicit per-layer, per-kv-head visibility:
with the sets of cached tokens each step attended to it equals what ``generate`` computed under an
evicting policy. The tests compare the two.

Supported models: ``io='tokens'``, the standard pre-norm block, any attention method whose
registered ``decode`` is not None.
"""

from __future__ import annotations

import functools
import math

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxllm import attention as attn_api
from jaxllm.attention import masks
from jaxllm.inference import cache as cache_lib
from jaxllm.inference.policies import POLICIES, Policy

PADDING = ("right", "left")


@flax.struct.dataclass
class Cache:
  layers: tuple  # one layer cache per block (``cache.KVLayer`` or ``cache.StateLayer``)
  length: jax.Array  # int32 [B]: each row's tokens so far (the position of its next token)


def check_model(model) -> None:
  """Raises a ValueError naming the field when ``model`` cannot be decoded with a cache."""
  cfg = model.cfg
  if cfg.io != "tokens":
    raise ValueError(f"cached decoding needs model.io='tokens', got {cfg.io!r}")
  if cfg.block != "standard":
    raise ValueError(f"cached decoding supports model.block='standard', got {cfg.block!r}")
  method = attn_api.get(cfg.attention)
  if method.decode is None:
    decodable = sorted(n for n, m in attn_api.METHODS.items() if m.decode is not None)
    raise ValueError(f"model.attention={cfg.attention!r} has no cached decoding; methods that "
                     f"have one: {decodable}")


def as_policy(policy) -> Policy:
  """``policy`` as a :class:`Policy`: None (full cache), a Policy, or a name that needs no other
  field (``'full'``); a policy that builds its own per-layer caches (``layer_caches``, e.g.
  ``jaxllm.inference.duo.DuoPolicy``) passes as it is."""
  if policy is None:
    return Policy()
  if isinstance(policy, Policy) or hasattr(policy, "layer_caches"):
    return policy
  if isinstance(policy, str):
    try:
      return Policy(policy)
    except ValueError as e:
      raise ValueError(f"policy={policy!r}: {e}; allowed names {list(POLICIES)}, or pass "
                       f"Policy({policy!r}, budget=...)") from None
  raise ValueError(f"policy must be a Policy, None or one of {list(POLICIES)}, got "
                   f"{type(policy).__name__}")


def causal_mask(cfg, t):
  """The model's own [T, T] visibility (causal plus its window / sinks options)."""
  _, _, window, sinks = cache_lib.mask_options(cfg.attention, dict(cfg.attention_options),
                                               cfg.dim_per_head)
  return masks.visible(*masks.positions(t, t), causal=True, window=window, sinks=sinks)


def forward_with_mask(model, tokens_BT, visible):
  """The model's logits [B, T, V] with every attention layer restricted to ``visible``.

  Args:
    model: a Transformer whose method decodes over a KV cache (softmax attention).
    tokens_BT: int token ids [B, T].
    visible: bool, broadcastable to [num_layers, B, Hkv, T, T]: query row, key column.
  """
  check_model(model)
  cfg = model.cfg
  if attn_api.get(cfg.attention).decode == "recurrent":
    raise ValueError(f"forward_with_mask is for softmax attention, not model.attention="
                     f"{cfg.attention!r}")
  b, t = tokens_BT.shape
  vis = jnp.broadcast_to(visible, (cfg.num_layers, b, cfg.kv_heads, t, t))
  logits, _ = model(tokens_BT, cache=tuple(cache_lib.Masked(vis[i]) for i in range(len(vis))))
  return logits


def _empty(model, policy: Policy, lengths, slots):
  rule = attn_api.get(model.cfg.attention).decode
  if rule == "recurrent":
    return cache_lib.StatePrefill(lengths)
  if rule == "momentum":
    return cache_lib.MomentumPrefill(cache_lib.KVPrefill(lengths, policy, slots))
  return cache_lib.KVPrefill(lengths, policy, slots)


def prefill(model, tokens_BT, policy: Policy, max_new_tokens: int, lengths=None):
  """Reads right-padded prompts in one pass of the model and builds the cache.

  Returns (logits of each row's last prompt token [B, V], cache). A KV cache has
  ``policy.slots(T + max_new_tokens)`` slots per layer and kv head and holds at most
  ``policy.budget`` tokens.
  """
  check_model(model)
  if getattr(policy, "name", None) == "sirllm":
    raise ValueError("policy 'sirllm' evicts by dialogue turns with positions as slots: use "
                     "jaxllm.inference.sirllm (start, turn, respond) or decode.generate")
  b, t = tokens_BT.shape
  lengths = (jnp.full((b,), t, jnp.int32) if lengths is None
             else jnp.asarray(lengths, jnp.int32))
  if hasattr(policy, "layer_caches"):  # per-head budgets (``duo.DuoPolicy``): its own caches
    empty = policy.layer_caches(model, lengths, t + max_new_tokens)
  else:
    slots = max(policy.slots(t + max_new_tokens), 1)
    empty = tuple(_empty(model, policy, lengths, slots) for _ in model.blocks)
  logits, layers = model(tokens_BT, cache=empty, output_index=lengths - 1)
  return logits[:, 0], Cache(layers, lengths)


def decode_step(model, cache: Cache, tokens_B):
  """Feeds one token per row at its position ``cache.length``.

  Returns (logits [B, V] for the next position, the updated cache, per layer the positions its kv
  heads attended to this step: int32 [B, Hkv, S], -1 for unused slots; None for a recurrent
  layer).
  """
  logits, layers = model(tokens_B[:, None], positions=cache.length[:, None], cache=cache.layers)
  attended = tuple(getattr(lc, "attended", None) for lc in layers)
  return logits[:, 0], Cache(layers, cache.length + 1), attended


def _number(name, value, ok, allowed):
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not ok(value):
    raise ValueError(f"{name} must be {allowed}, got {value!r}")


def _check_prompt(model, prompt_BT, extra: int, lengths, padding: str):
  """Validates the prompt; returns it right-padded and its lengths [B] (int32)."""
  prompt_BT = jnp.asarray(prompt_BT)
  if prompt_BT.ndim != 2 or prompt_BT.shape[1] < 1:
    raise ValueError(f"prompt must be int token ids [B, T] with T >= 1, got shape {prompt_BT.shape}")
  if not jnp.issubdtype(prompt_BT.dtype, jnp.integer):
    raise ValueError(f"prompt must hold integer token ids, got dtype {prompt_BT.dtype}")
  if padding not in PADDING:
    raise ValueError(f"padding={padding!r} unknown; allowed: {list(PADDING)}")
  b, t = prompt_BT.shape
  if lengths is None:
    lengths = np.full((b,), t, np.int32)
  else:
    lengths = np.asarray(lengths)
    if (lengths.shape != (b,) or not np.issubdtype(lengths.dtype, np.integer)
        or lengths.min() < 1 or lengths.max() > t):
      raise ValueError(f"lengths must be int [B] = [{b}] with 1 <= lengths <= T = {t}, got "
                       f"{lengths.tolist()}")
  cfg = model.cfg
  need = int(lengths.max()) + extra - 1
  if cfg.positions == "learned" and need > cfg.max_len:
    raise ValueError(f"prompt plus new tokens needs {need} positions, more than the model's "
                     f"learned max_len={cfg.max_len}")
  idx = np.arange(t)[None] + (t - lengths[:, None] if padding == "left" else 0)
  prompt_BT = jnp.take_along_axis(prompt_BT, jnp.asarray(idx % t), axis=1)  # right-padded
  real = prompt_BT[jnp.asarray(np.arange(t)[None] < lengths[:, None])]
  if int(jnp.min(real)) < 0 or int(jnp.max(real)) >= cfg.vocab_size:
    raise ValueError(f"prompt token ids must lie in [0, vocab_size={cfg.vocab_size})")
  return prompt_BT, jnp.asarray(lengths, jnp.int32)


def sample(logits_BV, key, *, temperature: float, top_p: float = 1.0):
  """Greedy (temperature 0) or a draw from softmax(logits / temperature), restricted with
  ``top_p`` < 1 to the smallest set of most likely tokens whose probability reaches top_p
  (nucleus sampling, Holtzman et al. 2020)."""
  if temperature == 0:
    return jnp.argmax(logits_BV, axis=-1).astype(jnp.int32)
  logits = logits_BV / temperature
  if top_p < 1:
    order = jnp.argsort(-logits, axis=-1)
    probs = jax.nn.softmax(jnp.take_along_axis(logits, order, axis=-1), axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs  # mass of the more likely tokens
    drop = jnp.zeros_like(before, bool).at[
        jnp.arange(logits.shape[0])[:, None], order].set(before >= top_p)
    logits = jnp.where(drop, -jnp.inf, logits)
  return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


def generate(model, prompt_BT, max_new_tokens: int, policy=None, *, lengths=None,
             padding: str = "right", temperature: float = 0.0, top_p: float = 1.0, rng=None,
             return_trace: bool = False):
  """Generates ``max_new_tokens`` tokens after each prompt with a cache.

  Args:
    model: a decodable Transformer (see :func:`check_model`).
    prompt_BT: int token ids [B, T], T >= 1.
    max_new_tokens: tokens to generate (>= 1).
    policy: a cache :class:`Policy`, a policy name that needs no budget, or None (full cache).
    lengths: int [B] real prompt tokens per row (default: all T); the rest is padding.
    padding: ``right`` (row b is ``prompt[b, :lengths[b]]``) or ``left`` (``prompt[b, T - L:]``).
    temperature: 0 for greedy decoding, else sampling from softmax(logits / temperature).
    top_p: nucleus sampling mass in (0, 1]; below 1 needs temperature > 0.
    rng: a jax PRNG key, needed when temperature > 0.
    return_trace: also return, per decode step, the positions each layer attended to.

  Returns:
    dict with ``tokens`` int32 [B, N], ``logits`` float32 [B, N, V] (the model's logits each token
    was chosen from) and, with ``return_trace``, ``attended``: a list (one per step after the
    first token) of per-layer int32 [B, Hkv, S].
  """
  check_model(model)
  policy = as_policy(policy)
  if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
    raise ValueError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}")
  _number("temperature", temperature, lambda x: 0 <= x < math.inf, "a finite number >= 0")
  _number("top_p", top_p, lambda x: 0 < x <= 1, "a number in (0, 1]")
  if top_p < 1 and temperature == 0:
    raise ValueError(f"top_p={top_p} needs temperature > 0 (greedy decoding takes the argmax)")
  if temperature > 0 and rng is None:
    raise ValueError("sampling (temperature > 0) needs rng, a jax PRNG key")
  prompt_BT, lengths = _check_prompt(model, prompt_BT, max_new_tokens, lengths, padding)
  if getattr(policy, "name", None) == "sirllm":  # one dialogue turn on an empty cache
    if return_trace or int(jnp.min(lengths)) != prompt_BT.shape[1]:
      raise ValueError("policy 'sirllm' generates from unpadded prompts without return_trace")
    from jaxllm.inference import sirllm
    return sirllm.generate(model, prompt_BT, max_new_tokens, policy, temperature=temperature,
                           top_p=top_p, rng=rng)
  keys = (jax.random.split(rng, max_new_tokens) if temperature > 0
          else [None] * max_new_tokens)
  choose = lambda logits, key: sample(logits, key, temperature=temperature, top_p=top_p)
  logits, cache = _first(model, policy, max_new_tokens, prompt_BT, lengths)
  out_tokens, out_logits, trace = [], [logits], []
  tok = choose(logits, keys[0])
  out_tokens.append(tok)
  for i in range(1, max_new_tokens):
    logits, cache, attended = _step(model, cache, tok)
    if return_trace:
      trace.append(attended)
    tok = choose(logits, keys[i])
    out_tokens.append(tok)
    out_logits.append(logits)
  result = {"tokens": jnp.stack(out_tokens, axis=1), "logits": jnp.stack(out_logits, axis=1)}
  if return_trace:
    result["attended"] = trace
  return result


def teacher_forced(model, prompt_BT, continuation_BN, policy=None):
  """Scores a given continuation through the cache: the prompt is prefilled, then the continuation
  is fed one token at a time (as in generation, but with the given tokens).

  Returns float32 logits [B, N, V]; entry i is the prediction for ``continuation_BN[:, i]``, made
  with whatever the policy left in the cache by then (how StreamingLLM and H2O measure perplexity
  and retrieval under a bounded cache).
  """
  check_model(model)
  policy = as_policy(policy)
  prompt_BT, continuation_BN = jnp.asarray(prompt_BT), jnp.asarray(continuation_BN)
  if (prompt_BT.ndim != 2 or continuation_BN.ndim != 2 or prompt_BT.shape[1] < 1
      or continuation_BN.shape[1] < 1 or prompt_BT.shape[0] != continuation_BN.shape[0]):
    raise ValueError("teacher_forced: prompt [B, T] and continuation [B, N] (T, N >= 1, same B) "
                     f"expected, got {prompt_BT.shape} and {continuation_BN.shape}")
  prompt_BT, lengths = _check_prompt(model, prompt_BT, continuation_BN.shape[1], None, "right")
  return _forced(model, policy, prompt_BT, continuation_BN, lengths)


# Compiled once per (model structure, policy, shapes); the policy is a static argument.
@functools.partial(nnx.jit, static_argnums=(1,))
def _forced(model, policy, prompt, cont, lengths):
  logits, cache = prefill(model, prompt, policy, cont.shape[1], lengths)

  def body(cache, tok):
    logits, cache, _ = decode_step(model, cache, tok)
    return cache, logits

  _, rest = jax.lax.scan(body, cache, cont[:, :-1].T)
  return jnp.concatenate([logits[:, None], jnp.moveaxis(rest, 0, 1)], axis=1)


@functools.partial(nnx.jit, static_argnums=(1, 2))
def _first(model, policy, max_new_tokens, prompt, lengths):
  return prefill(model, prompt, policy, max_new_tokens, lengths)


@nnx.jit
def _step(model, cache, tokens):
  return decode_step(model, cache, tokens)


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
