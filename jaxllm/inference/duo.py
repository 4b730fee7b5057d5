"""DuoAttention (Xiao et al. 2024): retrieval heads keep the full KV cache, streaming heads keep
attention sinks and recent tokens only, with the split learned per KV head.

Training (:func:`train_gates`). Every KV head j of layer l gets a gate alpha in [0, 1]; the mixed
model's attention output of each query head in j's GQA group is
``alpha * full + (1 - alpha) * sink_window`` (:class:`Gated`, through the model's own attention
layers, so any jaxllm model or one loaded by ``jaxllm.interop.load_hf`` works). The base model is
frozen: only the [L, K] gates are optimised (``jaxllm.optim.make``), starting at 1 and clamped to
[0, 1] after every update. The objective (:func:`duo_loss`) is the squared difference of the final
hidden states (after the final norm, as the official code's ``model.model`` output) of the full
and the mixed model on the passkey answer tokens only, plus ``reg`` (0.05) x L1 on the gates.
Training data (:func:`passkey_sample`): real-text haystacks with several passkeys of digits
inserted at random depths and all of them asked for at the end.

Deployment (:class:`DuoPolicy`). From a pattern file (:func:`save_pattern`: per layer per KV head
alpha plus the sink / recent sizes trained with) and a target streaming fraction, the KV heads
with the lowest gates become streaming heads (:func:`select_retrieval`); one cache per layer with
per-head budgets (``jaxllm.inference.cache.DuoPrefill`` / ``DuoLayer``) keeps every token for
retrieval heads and ``sinks + recent`` tokens for streaming heads, decoded through
``jaxllm.inference.decode`` (``generate``, ``teacher_forced``). The prefill runs the streaming
heads through the block-sparse ``sink_window`` op and the retrieval heads with the model's method.

Defaults follow the paper / REFERENCE: training sink 128, recent 256, lr 0.02, 2000 steps, 10
passkeys of 32 tokens, reg 0.05; deployment sink 64, recent 256.

Comparison with the official code (mit-han-lab/duo-attention, ``duo_attn/train.py``,
``duo_attn/patch/llama.py``, ``duo_attn/utils.py``):

* Gate: followed. One scalar per KV head (``full_attention_heads``), expanded over its query
  group, ``initial_value`` 1, clamped in place to [0, 1] between steps (and in the forward).
* Loss normalisation: followed. ``(h_full - h_mixed)^2`` averaged over the hidden dimension,
  summed over answer tokens and divided by their count. The L1 term: the official ``l1_loss``
  lives in a ``duo_attn/loss.py`` that the public repository does not contain; here it is the
  mean |alpha| over all KV heads of all layers (``reg`` multiplies it).
* Optimiser: AdamW, weight decay 0, the official LambdaLR schedule (:func:`official_schedule`:
  linear warmup over the first fifth from 0.1x, constant, linear decay over the last fifth to 0.1x).
* Streaming attention in training: the official default is a block-granular mask (sink and recent
  rounded up to 128-token blocks); here it is the element-exact sink + window band (the ``dense``
  method with ``sinks`` / ``window``, exact like the block-sparse op), the same rule
  the deployed cache attends with (window = recent + 1: the sinks, the ``recent`` previous tokens
  and the query itself, as the official decode step attends to its sink + recent cache plus the
  new token).
* Deployment threshold: followed in effect. The official ``sparsify_attention_heads`` takes
  ``np.quantile(gates, sparsity)`` over all layers' heads (ties broken by 1e-6 noise) and keeps
  heads at or above it full; here exactly ``round(fraction * L * K)`` heads with the lowest gates
  stream (ties: lower layer, then lower head first), so the count equals
  ``jaxllm.inference.cost_model``'s ``duo`` prediction.
* Prefill: the official decoder prefills all heads densely and then cuts the streaming heads'
  cache; here streaming heads prefill through the sink + window block-sparse op (the paper's
  deployment), so the prompt's outputs already follow the streaming rule.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxllm import attention as attn_api
from jaxllm.inference import cache as cache_lib
from jaxllm.results import write_json

PATTERN_VERSION = 1


def _int(name: str, value, low: int) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
    raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
  return int(value)


def _fraction(name: str, value) -> float:
  if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
    raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
  return float(value)


def check_model(model) -> None:
  """DuoAttention mixes softmax attention heads: the model's method must decode over a KV cache
  with no window of its own (``dense``); anything else raises a ValueError naming it."""
  cfg = model.cfg
  if cfg.io != "tokens" or cfg.block != "standard":
    raise ValueError(f"DuoAttention needs model.io='tokens' and model.block='standard', got "
                     f"io={cfg.io!r}, block={cfg.block!r}")
  method = attn_api.get(cfg.attention)
  _, _, window, _ = cache_lib.mask_options(cfg.attention, dict(cfg.attention_options),
                                           cfg.dim_per_head)
  if method.decode not in ("dense", "sparse") or window is not None:
    raise ValueError(f"DuoAttention needs full softmax attention (model.attention='dense' "
                     f"without a window), got model.attention={cfg.attention!r}")


# --- training ---------------------------------------------------------------------------------

@flax.struct.dataclass
class Gated:
  """A layer 'cache' that mixes, per KV head, full attention and sink + window attention:
  ``alpha * full + (1 - alpha) * sink_window`` for each query head of the head's group."""
  alpha: jax.Array  # float32 [Hkv], already clamped
  sinks: int = flax.struct.field(pytree_node=False)
  recent: int = flax.struct.field(pytree_node=False)

  def attend(self, q, k, v, positions, *, method, impl, options):
    del positions
    b, t, h, d = q.shape
    hkv = k.shape[2]
    scale, softcap, _, _ = cache_lib.mask_options(method, options, d)
    full = attn_api.attention(q, k, v, method=method, impl=impl, causal=True, **options)
    # The same band as the deployed prefill's block-sparse op, through the dense method: its
    # gradient compiles and runs far faster on CPU than the block-gather path's.
    stream = attn_api.attention(q, k, v, method="dense", impl="xla", causal=True,
                                sinks=self.sinks, window=self.recent + 1, scale=scale,
                                softcap=softcap)
    a = jnp.repeat(self.alpha.astype(jnp.float32), h // hkv)[None, None, :, None]
    o = a * full.astype(jnp.float32) + (1 - a) * stream.astype(jnp.float32)
    return o.astype(q.dtype), self


def final_hidden(model, tokens_BT, alpha_LK=None, *, sinks: int = 128, recent: int = 256):
  """The model's final hidden states [B, T, E] (after the final norm); with gates [L, K] those of
  the mixed model."""
  if alpha_LK is None:
    _, hidden = model(tokens_BT, return_hidden=True)
  else:
    caches = tuple(Gated(alpha_LK[i], sinks, recent) for i in range(alpha_LK.shape[0]))
    (_, hidden), _ = model(tokens_BT, return_hidden=True, cache=caches)
  return model.final_norm(hidden[-1]).astype(jnp.float32)


def duo_loss(model, alpha_LK, tokens_BT, answer_BT, *, sinks: int, recent: int,
             reg: float = 0.05):
  """DuoAttention's objective: mean over answer tokens of the mean squared difference (over the
  hidden dimension) of the full and mixed models' final hidden states, plus ``reg`` x mean |alpha|.

  Returns (loss, (distill, l1)). Gates are clamped to [0, 1] first; the full model's states are
  constants (the base model is frozen).
  """
  alpha = jnp.clip(alpha_LK, 0.0, 1.0)
  full = jax.lax.stop_gradient(final_hidden(model, tokens_BT))
  mixed = final_hidden(model, tokens_BT, alpha, sinks=sinks, recent=recent)
  mask = answer_BT.astype(jnp.float32)
  per_token = jnp.mean((full - mixed) ** 2, axis=-1)
  distill = jnp.sum(per_token * mask) / jnp.maximum(jnp.sum(mask), 1.0)
  l1 = jnp.mean(jnp.abs(alpha))
  return distill + reg * l1, (distill, l1)


def official_schedule(learning_rate: float, steps: int):
  """The official training's LambdaLR: ``min(1, max((s + 1) / (N // 5), 0.1),
  max((N - s) / (N // 5), 0.1))`` times the learning rate."""
  fifth = max(steps // 5, 1)

  def schedule(step):
    s = jnp.asarray(step, jnp.float32)
    up = jnp.maximum((s + 1) / fifth, 0.1)
    down = jnp.maximum((steps - s) / fifth, 0.1)
    return learning_rate * jnp.minimum(1.0, jnp.minimum(up, down))

  return schedule


def train_gates(model, batches, *, steps: int = 2000, learning_rate: float = 0.02,
                sinks: int = 128, recent: int = 256, reg: float = 0.05, log_every: int = 0,
                log=print):
  """Learns the [L, K] gates of a frozen ``model`` on ``batches(step) -> (tokens, answer_mask)``.

  Returns (alpha float32 [L, K] in [0, 1], history: list of (step, loss, distill, l1)).
  """
  from flax import nnx
  from jaxllm import optim
  check_model(model)
  steps = _int("steps", steps, 1)
  sinks, recent = _int("sinks", sinks, 1), _int("recent", recent, 1)
  if isinstance(reg, bool) or not isinstance(reg, (int, float)) or not reg >= 0:
    raise ValueError(f"reg must be a number >= 0, got {reg!r}")
  if (isinstance(learning_rate, bool) or not isinstance(learning_rate, (int, float))
      or not 0 < learning_rate < math.inf):
    raise ValueError(f"learning_rate must be a finite number > 0, got {learning_rate!r}")
  cfg = model.cfg
  opt = optim.make("adamw", official_schedule(float(learning_rate), steps), weight_decay=0.0)
  alpha = jnp.ones((cfg.num_layers, cfg.kv_heads), jnp.float32)
  state = opt.init(alpha)

  @nnx.jit
  def step_fn(model, alpha, state, tokens, answer):
    grad_fn = jax.value_and_grad(
        lambda a: duo_loss(model, a, tokens, answer, sinks=sinks, recent=recent, reg=reg),
        has_aux=True)
    (loss, (distill, l1)), g = grad_fn(alpha)
    updates, state = opt.update(g, state, alpha)
    alpha = jnp.clip(optax.apply_updates(alpha, updates), 0.0, 1.0)
    return alpha, state, loss, distill, l1

  history = []
  for s in range(steps):
    tokens, answer = batches(s)
    alpha, state, loss, distill, l1 = step_fn(model, alpha, state, jnp.asarray(tokens),
                                              jnp.asarray(answer))
    if log_every and (s % log_every == 0 or s == steps - 1):
      history.append((s, float(loss), float(distill), float(l1)))
      log(f"duo gates step {s}: loss {float(loss):.5f} distill {float(distill):.5f} "
          f"l1 {float(l1):.3f}")
  return np.asarray(alpha), history


# --- synthetic passkey data ---------------------------------------------------------------------

# One letter names each passkey, and a "$" (rare in Python source) follows it, so the answer's
# first digit follows a (name, "$") pair that occurs once: a small model can find it.
_NAMES = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def passkey_sample(rng, tokenizer, haystack, *, length: int, num_passkeys: int = 10,
                   passkey_length: int = 32, num_queries: int | None = None,
                   depth_range=(0.0, 1.0)):
  """One real-text haystack of exactly ``length`` tokens with ``num_passkeys`` passkeys of
  ``passkey_length`` random digits inserted at random depths (``PASSKEY_C$<digits>``, C a letter),
  then ``num_queries`` of them (default all, in random order) asked for at the end by repeating
  the passkey's prefix (``PASSKEY_C$``), as the landmark-attention passkey task repeats "The pass
  key is".

  Returns (tokens int32 [length], answer bool [length]: True on the asked passkeys' digits).
  """
  length = _int("length", length, 1)
  num_passkeys = _int("num_passkeys", num_passkeys, 1)
  passkey_length = _int("passkey_length", passkey_length, 1)
  num_queries = num_passkeys if num_queries is None else _int("num_queries", num_queries, 1)
  if num_queries > num_passkeys:
    raise ValueError(f"num_queries={num_queries} must be <= num_passkeys={num_passkeys}")
  lo, hi = (float(x) for x in depth_range)
  if not 0 <= lo <= hi <= 1:
    raise ValueError(f"depth_range must be (lo, hi) with 0 <= lo <= hi <= 1, got {depth_range}")
  if num_passkeys > len(_NAMES):
    raise ValueError(f"num_passkeys must be <= {len(_NAMES)}, got {num_passkeys}")
  enc = lambda s: np.asarray(tokenizer.encode(s), np.int32)
  keys = ["".join(str(int(c)) for c in rng.integers(0, 10, passkey_length))
          for _ in range(num_passkeys)]
  needles = [enc(f"\nPASSKEY_{_NAMES[i]}${key}\n") for i, key in enumerate(keys)]
  asked = rng.permutation(num_passkeys)[:num_queries]
  questions = [(enc(f"\nPASSKEY_{_NAMES[i]}$"), enc(keys[i])) for i in asked]
  fixed = sum(len(n) for n in needles) + sum(len(q) + len(a) for q, a in questions)
  context = length - fixed
  if context < 1:
    raise ValueError(f"length={length} is too short for {num_passkeys} passkeys and "
                     f"{num_queries} questions ({fixed} tokens)")
  if len(haystack) <= context:
    raise ValueError(f"haystack has {len(haystack)} tokens, need more than {context}")
  start = int(rng.integers(0, len(haystack) - context))
  hay = np.asarray(haystack[start:start + context], np.int32)
  cuts = np.sort(rng.integers(round(lo * context), round(hi * context) + 1, num_passkeys))
  pieces, flags, prev = [], [], 0
  for cut, needle in zip(cuts, needles):
    pieces += [hay[prev:cut], needle]
    prev = cut
  pieces.append(hay[prev:])
  flags = [np.zeros(len(p), bool) for p in pieces]
  for q, a in questions:
    pieces += [q, a]
    flags += [np.zeros(len(q), bool), np.ones(len(a), bool)]
  tokens, answer = np.concatenate(pieces), np.concatenate(flags)
  assert len(tokens) == length
  return tokens, answer


def passkey_batch(rng, tokenizer, haystack, batch: int, **kw):
  """``batch`` samples of :func:`passkey_sample`: (tokens int32 [B, T], answer bool [B, T])."""
  rows = [passkey_sample(rng, tokenizer, haystack, **kw) for _ in range(batch)]
  return np.stack([r[0] for r in rows]), np.stack([r[1] for r in rows])


# --- pattern files ------------------------------------------------------------------------------

def save_pattern(path: str, alpha_LK, *, sinks: int, recent: int, meta: dict | None = None):
  """Writes the learned gates as JSON (atomically): ``alpha`` per layer per KV head and the sink /
  recent sizes they were trained with."""
  alpha = np.asarray(alpha_LK, np.float64)
  if alpha.ndim != 2:
    raise ValueError(f"alpha must be [num_layers, kv_heads], got shape {alpha.shape}")
  return write_json(path, dict(version=PATTERN_VERSION, num_layers=alpha.shape[0],
                               kv_heads=alpha.shape[1], sinks=int(sinks), recent=int(recent),
                               alpha=alpha.tolist(), meta=meta or {}))


def load_pattern(path: str) -> dict:
  """Reads a pattern file; ``alpha`` comes back as float64 [L, K] clamped to [0, 1]."""
  if not os.path.isfile(path):
    raise ValueError(f"pattern file {path!r} does not exist")
  with open(path) as f:
    p = json.load(f)
  missing = sorted({"alpha", "sinks", "recent"} - set(p))
  if missing:
    raise ValueError(f"pattern file {path!r} lacks {missing}")
  p["alpha"] = np.clip(np.asarray(p["alpha"], np.float64), 0.0, 1.0)
  if p["alpha"].ndim != 2:
    raise ValueError(f"pattern file {path!r}: alpha must be [num_layers, kv_heads]")
  return p


# --- deployment ---------------------------------------------------------------------------------

def select_retrieval(alpha_LK, fraction: float):
  """Bool [L, K]: True for retrieval heads. The ``round(fraction * L * K)`` KV heads with the
  lowest gates stream (ties: lower layer, then lower head, first); the rest keep the full cache."""
  fraction = _fraction("fraction", fraction)
  alpha = np.asarray(alpha_LK, np.float64)
  n_stream = round(fraction * alpha.size)
  order = np.argsort(alpha.reshape(-1), kind="stable")
  retrieval = np.ones(alpha.size, bool)
  retrieval[order[:n_stream]] = False
  return retrieval.reshape(alpha.shape)


def random_retrieval(num_layers: int, kv_heads: int, fraction: float, seed: int = 0):
  """The baseline head choice: ``round(fraction * L * K)`` streaming heads drawn at random."""
  fraction = _fraction("fraction", fraction)
  n = num_layers * kv_heads
  retrieval = np.ones(n, bool)
  retrieval[np.random.default_rng(seed).permutation(n)[:round(fraction * n)]] = False
  return retrieval.reshape(num_layers, kv_heads)


@dataclasses.dataclass(frozen=True)
class DuoPolicy:
  """A deployed DuoAttention split: ``retrieval[l][j]`` says whether KV head j of layer l keeps
  the full cache; streaming heads keep ``sinks`` + ``recent`` tokens (deployment 64 / 256).

  Pass it as the ``policy`` of ``jaxllm.inference.decode.generate`` / ``teacher_forced``.
  """
  retrieval: tuple
  sinks: int = 64
  recent: int = 256

  def __post_init__(self):
    _int("sinks", self.sinks, 1)
    _int("recent", self.recent, 1)
    r = self.retrieval
    if (not isinstance(r, tuple) or not r or any(not isinstance(x, tuple) or not x for x in r)
        or len({len(x) for x in r}) != 1 or any(not isinstance(b, bool) for x in r for b in x)):
      raise ValueError("retrieval must be a non-empty tuple (per layer) of equal-length tuples "
                       "(per KV head) of bools")

  @classmethod
  def from_mask(cls, retrieval_LK, *, sinks: int = 64, recent: int = 256) -> "DuoPolicy":
    m = np.asarray(retrieval_LK, bool)
    return cls(tuple(tuple(bool(x) for x in row) for row in m), sinks, recent)

  @classmethod
  def from_pattern(cls, pattern, fraction: float, *, sinks: int = 64,
                   recent: int = 256) -> "DuoPolicy":
    """The split at streaming ``fraction`` of a pattern (a dict from :func:`load_pattern`, or a
    path to its file)."""
    if isinstance(pattern, str):
      pattern = load_pattern(pattern)
    return cls.from_mask(select_retrieval(pattern["alpha"], fraction), sinks=sinks,
                         recent=recent)

  @property
  def streaming_fraction(self) -> float:
    m = np.asarray(self.retrieval, bool)
    return float(1 - m.mean())

  def check(self, model) -> None:
    check_model(model)
    cfg = model.cfg
    shape = (len(self.retrieval), len(self.retrieval[0]))
    if shape != (cfg.num_layers, cfg.kv_heads):
      raise ValueError(f"DuoPolicy retrieval is [layers, kv_heads] = {list(shape)}, the model "
                       f"has [{cfg.num_layers}, {cfg.kv_heads}]")

  def layer_caches(self, model, lengths, total_len: int):
    """The empty per-layer caches for prompts of ``lengths`` and ``total_len`` tokens in all."""
    self.check(model)
    stream_slots = min(total_len, self.sinks + self.recent)
    return tuple(cache_lib.DuoPrefill(lengths, row, self.sinks, self.recent, total_len,
                                      stream_slots) for row in self.retrieval)

  def visibility(self, t: int):
    """Bool [L, 1, K, T, T]: what each KV head's queries see over a length-T sequence (causal
    for retrieval heads, sinks + recent band for streaming heads): the reference the deployed
    decode equals (``decode.forward_with_mask``)."""
    pos = jnp.arange(t)
    causal = pos[None, :] <= pos[:, None]
    band = cache_lib.streaming_visible(pos[:, None], pos[None, :], sinks=self.sinks,
                                       recent=self.recent)
    m = jnp.asarray(np.asarray(self.retrieval, bool))[:, None, :, None, None]
    return jnp.where(m, causal, band)


def cache_bytes(cache) -> int:
  """Bytes of keys and values a decoding cache (``decode.Cache``, or its ``jax.eval_shape``)
  allocates."""
  size = lambda x: int(np.prod(x.shape)) * jnp.dtype(x.dtype).itemsize
  total = 0
  for layer in cache.layers:
    if isinstance(layer, cache_lib.DuoLayer):
      total += sum(size(x) for x in (layer.kf, layer.vf, layer.ks, layer.vs))
    else:
      total += size(layer.k) + size(layer.v)
  return total
