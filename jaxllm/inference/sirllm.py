"""SirLLM (Yao et al. 2024, "SirLLM: Streaming Infinite Retentive LLM"): a dialogue KV cache that
keeps the tokens the model found surprising.

Every cached token carries one float32 scalar, its token entropy from the model's own logits,
shared by every layer and kv head. The cache holds at most ``policy.budget`` = sinks (start_size)
+ recent + token_entropy_size tokens. A dialogue runs by turns (:func:`turn`, :func:`respond`); a
turn appends one chunk of n_in tokens (a message, or a prompt plus the reply generated to it).
Before the chunk is appended:

1. if the cache would overflow (cached + n_in > budget) it keeps the top
   (token_entropy_size - n_in) cached tokens by their current entropy (every cached token
   competes, sinks included; ties: the older first) together with the sinks, fills the room left
   up to budget - n_in with the most recent of the others, and compacts them in their original
   order, the same tokens in every layer and kv head (the public code's
   ``evict_for_space_token_entropy``);
2. every stored entropy is multiplied by ``eta`` (memory decay, once per turn);

then the chunk is appended and its entropies are stored undecayed.

Positions are slots: a key is stored before rotation and rotated by its current slot index at
every forward, and a new token's query sits at the slot it is written to (StreamingLLM's position
shift, which SirLLM's public code uses). The model's attention layer hands the cache keys rotated
at the positions the driver passes, which are the slot indices; the cache undoes that rotation
(rotary embedding at the negated positions) to store them.

Entropy rules (``policy.entropy_rule``), with z_t the logits the model outputs at token x_t:

* ``paper``: e_t = -log softmax(z_{t-1})[x_t]. A chunk's first token takes z_{t-1} from the
  previous turn's last token; the dialogue's very first token (no prediction) gets the largest
  entropy of its chunk, the public code's convention.
* ``public``: the public code's value, one position early: token t stores
  -log softmax(z_{t-1})[x_{t-1}] within its chunk and a chunk's first token the chunk's largest
  -log softmax(z_j)[x_j].

``Policy("streaming", budget, sinks)`` runs the same turns with StreamingLLM's per-turn eviction
(the sinks plus the most recent tokens, the public code's ``evict_for_space``), positions as
slots: the baseline at equal cache size.

    state = sirllm.start(model, Policy("sirllm", budget=1024, eta=1.0), batch=1)
    logits, state = sirllm.turn(model, state, user_tokens_BC)
    reply_BN, reply_logits, state = sirllm.respond(model, state, prompt_BT, max_new_tokens=20)

Supported models: those ``decode.check_model`` accepts with a ``dense``-decoding (softmax)
attention method and rotary (or no) positions.
"""

from __future__ import annotations

import functools

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxllm import attention as attn_api
from jaxllm.attention.methods import dense
from jaxllm.inference import cache as cache_lib
from jaxllm.inference import policies
from jaxllm.inference.policies import Policy
from jaxllm.models import layers

TURN_POLICIES = ("sirllm", "streaming")


@flax.struct.dataclass
class SlotLayer:
  """One layer's cache: keys before rotation and values, the first ``count`` slots occupied."""
  k: jax.Array  # [B, S, Hkv, D], no rotary position applied
  v: jax.Array  # [B, S, Hkv, D]
  count: jax.Array  # int32 []: occupied slots, the same in every row
  rope: tuple | None = flax.struct.field(pytree_node=False)  # (theta, scaling) or None

  def attend(self, q, k, v, positions, *, method, impl, options):
    """A chunk of T tokens at slots ``positions`` [B, T] = count + 0..T-1 (q and k rotated there)
    attends causally over the cache and itself."""
    del impl  # the masked softmax over the slots is the reference path
    if self.rope is not None:
      k = layers.rope(k, -positions, *self.rope)
    start = (0, self.count, 0, 0)
    kc = jax.lax.dynamic_update_slice(self.k, k.astype(self.k.dtype), start)
    vc = jax.lax.dynamic_update_slice(self.v, v.astype(self.v.dtype), start)
    slots = jnp.arange(kc.shape[1])
    k_rot = kc if self.rope is None else layers.rope(kc, slots, *self.rope)
    ok = slots[None, None, :] <= positions[:, :, None]  # [B, T, S]
    scale, softcap, _, _ = cache_lib.mask_options(method, options, q.shape[-1])
    o, _ = dense.masked_attention(q, k_rot, vc, ok[:, None, None], scale=scale, softcap=softcap)
    return o, self.replace(k=kc, v=vc, count=self.count + q.shape[1])


@flax.struct.dataclass
class Dialogue:
  """A turn-based cache: per-layer slots plus what SirLLM keeps per slot (shared by layers)."""
  layers: tuple  # one SlotLayer per block
  tokens: jax.Array  # int32 [B, S]: each slot's token id
  pos: jax.Array  # int32 [B, S]: each slot's position in the dialogue, -1 when empty
  entropy: jax.Array  # float32 [B, S]: each slot's current (decayed) token entropy
  count: jax.Array  # int32 []: occupied slots (the first ``count``), the same in every row
  length: jax.Array  # int32 []: tokens the dialogue has had so far
  last_logits: jax.Array  # float32 [B, V]: the model's logits at the dialogue's last token
  policy: Policy = flax.struct.field(pytree_node=False)


def _check(model, policy: Policy):
  from jaxllm.inference import decode
  decode.check_model(model)
  cfg = model.cfg
  if not isinstance(policy, Policy) or policy.name not in TURN_POLICIES:
    raise ValueError(f"turn-based caching needs a Policy named one of {list(TURN_POLICIES)}, got "
                     f"{policy!r}")
  rule = attn_api.get(cfg.attention).decode
  _, _, window, sinks = cache_lib.mask_options(cfg.attention, dict(cfg.attention_options),
                                               cfg.dim_per_head)
  if rule not in ("dense", "sparse") or window is not None or sinks:
    raise ValueError(f"policy {policy.name!r} by turns needs causal softmax attention over the "
                     f"whole cache (a method whose decode rule is 'dense', or 'sparse' without "
                     f"window or sinks); model.attention={cfg.attention!r} decodes by {rule!r} "
                     f"with window={window}, sinks={sinks}")
  if cfg.positions == "learned":
    raise ValueError("positions as slots re-rotate cached keys: need model.positions in "
                     "['rope', 'none'], got 'learned'")


def start(model, policy: Policy, batch: int = 1) -> Dialogue:
  """An empty dialogue cache of ``policy.budget`` slots for ``batch`` dialogues."""
  _check(model, policy)
  if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
    raise ValueError(f"batch must be a positive int, got {batch!r}")
  cfg = model.cfg
  s = policy.budget
  shape = (batch, s, cfg.kv_heads, cfg.dim_per_head)
  rope = (cfg.rope_theta, cfg.rope_scaling) if cfg.positions == "rope" else None
  zero = jnp.zeros((), jnp.int32)
  slot_layers = tuple(SlotLayer(jnp.zeros(shape, cfg.compute_dtype),
                                jnp.zeros(shape, cfg.compute_dtype), zero, rope)
                      for _ in model.blocks)
  return Dialogue(slot_layers, jnp.zeros((batch, s), jnp.int32), jnp.full((batch, s), -1, jnp.int32),
                  jnp.zeros((batch, s), jnp.float32), zero, zero,
                  jnp.zeros((batch, cfg.vocab_size), jnp.float32), policy)


def keep_slots(policy: Policy, entropy_BS, count, n_in: int):
  """Which occupied slots stay before a chunk of ``n_in`` tokens is appended (bool [B, S]).

  Without overflow (count + n_in <= budget) every occupied slot stays. Otherwise: the top
  (token_entropy_size - n_in) occupied slots by entropy (ties: lower slot first) and the sinks,
  then the most recent others until budget - n_in slots are kept. ``streaming`` has no entropy
  part: the sinks and the most recent.
  """
  s = entropy_BS.shape[-1]
  slot = jnp.arange(s)
  occupied = jnp.broadcast_to(slot < count, entropy_BS.shape)
  top = max(policy.token_entropy_size - n_in, 0) if policy.name == "sirllm" else 0
  keep = (policies.lowest_ranks(occupied, -entropy_BS.astype(jnp.float32), top)
          | (occupied & (slot < policy.sinks)))
  room = (policy.budget - n_in) - jnp.sum(keep, axis=-1, keepdims=True)
  other = occupied & ~keep
  newer = jnp.cumsum(other[..., ::-1], axis=-1)[..., ::-1]  # others at this slot or later
  keep = keep | (other & (newer <= room))
  return jnp.where(count + n_in > policy.budget, keep, occupied)


def chunk_entropy(rule: str, tokens_BC, logits_BCV, prev_logits_BV, has_prev):
  """Float32 [B, C] token entropies of a chunk by ``rule`` (see the module docstring).

  ``prev_logits_BV``: the logits at the token before the chunk, used when ``has_prev``.
  """
  logp = jax.nn.log_softmax(logits_BCV.astype(jnp.float32), axis=-1)
  gather = lambda lp: -jnp.take_along_axis(lp, tokens_BC[..., None], axis=-1)[..., 0]
  if rule == "public":
    own = gather(logp)  # -log softmax(z_j)[x_j]
    return jnp.concatenate([jnp.max(own, axis=-1, keepdims=True), own[:, :-1]], axis=1)
  prev = jax.nn.log_softmax(prev_logits_BV.astype(jnp.float32), axis=-1)
  e = gather(jnp.concatenate([prev[:, None], logp[:, :-1]], axis=1))
  first = (jnp.max(e[:, 1:], axis=-1) if e.shape[1] > 1 else jnp.zeros(e.shape[:1], e.dtype))
  return e.at[:, 0].set(jnp.where(has_prev, e[:, 0], first))


@functools.partial(jax.jit, static_argnums=(1,))
def _begin(state: Dialogue, n_in: int) -> Dialogue:
  """Eviction for a chunk of ``n_in`` tokens, then memory decay."""
  policy = state.policy
  keep = keep_slots(policy, state.entropy, state.count, n_in)
  order = jnp.argsort(~keep, axis=-1, stable=True)  # kept slots first, in slot order
  kept = jnp.take_along_axis(keep, order, axis=-1)
  take = lambda x: jnp.take_along_axis(x, order, axis=-1)
  idx = order[:, :, None, None]
  new_layers = tuple(
      lc.replace(k=jnp.take_along_axis(lc.k, idx, axis=1), v=jnp.take_along_axis(lc.v, idx, axis=1),
                 count=jnp.sum(keep[0]).astype(jnp.int32))
      for lc in state.layers)
  eta = policy.eta if policy.name == "sirllm" else 1.0
  return state.replace(
      layers=new_layers, tokens=jnp.where(kept, take(state.tokens), 0),
      pos=jnp.where(kept, take(state.pos), -1),
      entropy=jnp.where(kept, take(state.entropy) * eta, 0.0),
      count=jnp.sum(keep[0]).astype(jnp.int32))


# The model's pass is compiled once per (model structure, cache shape, chunk length), whatever
# the policy; the policy's bookkeeping is compiled separately.
@nnx.jit
def _forward(model, slot_layers, count, tokens_BC):
  b, c = tokens_BC.shape
  slots = jnp.broadcast_to(count + jnp.arange(c, dtype=jnp.int32), (b, c))
  return model(tokens_BC, positions=slots, cache=slot_layers)


@jax.jit
def _record(state: Dialogue, slot_layers, tokens_BC) -> Dialogue:
  b, c = tokens_BC.shape
  at = (0, state.count)
  pos = jnp.broadcast_to(state.length + jnp.arange(c, dtype=jnp.int32), (b, c))
  return state.replace(
      layers=slot_layers, tokens=jax.lax.dynamic_update_slice(state.tokens, tokens_BC, at),
      pos=jax.lax.dynamic_update_slice(state.pos, pos, at), count=state.count + c,
      length=state.length + c)


def _feed(model, state: Dialogue, tokens_BC):
  """Appends a chunk at the next slots without eviction; returns its logits [B, C, V]."""
  logits, slot_layers = _forward(model, state.layers, state.count, tokens_BC)
  return logits, _record(state, slot_layers, tokens_BC)


@jax.jit
def _finish(state: Dialogue, tokens_BC, logits_BCV):
  """Stores the entropies of the chunk that ends at slot ``count`` - 1."""
  c = tokens_BC.shape[1]
  has_prev = state.length > c
  e = chunk_entropy(state.policy.entropy_rule, tokens_BC, logits_BCV, state.last_logits, has_prev)
  return state.replace(
      entropy=jax.lax.dynamic_update_slice(state.entropy, e, (0, state.count - c)),
      last_logits=logits_BCV[:, -1].astype(jnp.float32))


def _check_chunk(model, state: Dialogue, tokens, n_in: int, what: str):
  if not isinstance(state, Dialogue):
    raise ValueError(f"state must be a sirllm.Dialogue (from sirllm.start), got "
                     f"{type(state).__name__}")
  tokens = np.asarray(tokens)
  b = state.tokens.shape[0]
  if tokens.ndim != 2 or tokens.shape[0] != b or tokens.shape[1] < 1:
    raise ValueError(f"{what} must be int token ids [B, C] with B = {b} (the dialogue batch) "
                     f"and C >= 1, got shape {tokens.shape}")
  if not np.issubdtype(tokens.dtype, np.integer):
    raise ValueError(f"{what} must hold integer token ids, got dtype {tokens.dtype}")
  if tokens.min() < 0 or tokens.max() >= model.cfg.vocab_size:
    raise ValueError(f"{what} token ids must lie in [0, vocab_size={model.cfg.vocab_size})")
  policy = state.policy
  if n_in > policy.budget - policy.sinks:
    raise ValueError(f"a turn of {n_in} tokens does not fit the cache: need n_in <= budget - "
                     f"sinks = {policy.budget - policy.sinks}")
  return jnp.asarray(tokens, jnp.int32)


def turn(model, state: Dialogue, tokens_BC, *, reserve: int = 0):
  """One dialogue turn: evicts for the chunk (plus ``reserve`` tokens still to come in this turn),
  decays the stored entropies, appends the chunk and stores its entropies.

  Returns (the model's logits at every chunk token [B, C, V] float32, the updated dialogue).
  """
  if isinstance(reserve, bool) or not isinstance(reserve, int) or reserve < 0:
    raise ValueError(f"reserve must be an int >= 0, got {reserve!r}")
  tokens_BC = _check_chunk(model, state, tokens_BC, jnp.shape(tokens_BC)[-1] + reserve, "tokens")
  state = _begin(state, tokens_BC.shape[1] + reserve)
  logits, state = _feed(model, state, tokens_BC)
  return logits, _finish(state, tokens_BC, logits)


def respond(model, state: Dialogue, prompt_BT, max_new_tokens: int, *, temperature: float = 0.0,
            top_p: float = 1.0, rng=None):
  """One turn whose chunk is the prompt and the reply generated to it: evicts for
  T + ``max_new_tokens`` tokens, reads the prompt, then generates and appends the reply token by
  token (every reply token is cached, so the reply is part of the dialogue history).

  Returns (reply tokens int32 [B, N], the logits each was chosen from [B, N, V], the dialogue).
  """
  from jaxllm.inference import decode
  if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
    raise ValueError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}")
  if temperature > 0 and rng is None:
    raise ValueError("sampling (temperature > 0) needs rng, a jax PRNG key")
  prompt_BT = _check_chunk(model, state, prompt_BT, jnp.shape(prompt_BT)[-1] + max_new_tokens,
                           "prompt")
  keys = (jax.random.split(rng, max_new_tokens) if temperature > 0 else [None] * max_new_tokens)
  state = _begin(state, prompt_BT.shape[1] + max_new_tokens)
  logits, state = _feed(model, state, prompt_BT)
  all_logits, out, chosen_from = [logits], [], []
  nxt = logits[:, -1]
  for i in range(max_new_tokens):
    tok = decode.sample(nxt, keys[i], temperature=temperature, top_p=top_p)
    out.append(tok)
    chosen_from.append(nxt)
    logits, state = _feed(model, state, tok[:, None])
    all_logits.append(logits)
    nxt = logits[:, -1]
  reply = jnp.stack(out, axis=1)
  state = _finish(state, jnp.concatenate([prompt_BT, reply], axis=1),
                  jnp.concatenate(all_logits, axis=1))
  return reply, jnp.stack(chosen_from, axis=1), state


def generate(model, prompt_BT, max_new_tokens: int, policy: Policy, **sampling) -> dict:
  """``decode.generate`` under a turn policy: one turn on an empty cache."""
  prompt_BT = jnp.asarray(prompt_BT)
  state = start(model, policy, prompt_BT.shape[0] if prompt_BT.ndim == 2 else 1)
  tokens, logits, _ = respond(model, state, prompt_BT, max_new_tokens, **sampling)
  return {"tokens": tokens, "logits": logits}
