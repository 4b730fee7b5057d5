"""KV-cache policies: which cached tokens a decoder keeps, or attends to, under a token budget.

An eviction policy sees, per kv head, the original position of every cache slot (-1 for an empty
slot) and the attention each slot has accumulated, and names the slots to drop so that at most
``budget`` tokens remain. A selection policy (``tokenselect``) keeps the cache whole and picks the
tokens each step attends to. Policies:

* ``full``: never evicts; the cache must hold the whole sequence.
* ``streaming`` (StreamingLLM, "attention sinks"): keeps the first ``sinks`` tokens and the most
  recent ``budget - sinks``; the oldest non-sink token goes first.
* ``h2o`` (heavy hitters, Zhang et al. 2023): keeps the ``recent`` latest tokens and, among the
  others, the ones with the largest accumulated attention (the sum, over every query that has seen
  them, of their softmax weight); the lowest-scoring non-recent token goes first. The budget is
  split equally between heavy hitters and recent tokens unless ``recent`` is given (as in the
  paper's runs, whose heavy-hitter share is 20% of the full cache).
* ``tokenselect`` (TokenSelect): evicts nothing; at every decode step each layer attends to at
  most ``budget`` tokens: the first ``sinks``, the latest ``recent`` and, among the rest, the ones
  with the largest soft vote (each query head's softmax of q.k over the cache, summed over the
  layer's heads). Its selection cache reuses a layer's last vote-chosen tokens (the sinks and
  recent tokens are always fresh) while the step's query stays similar to the query that chose
  them: cosine similarity of the flattened [H * D] queries above ``threshold`` (0.9, the official
  code's ``similarity_threshold``). ``impl='pallas'`` reads only the selected tokens through the
  sparse-decode kernel (``pallas_kernels.sparse_decode``; interpreted on CPU); ``auto`` takes the
  kernel on GPU / TPU and the masked softmax elsewhere.
* ``sirllm`` (SirLLM, Yao et al. 2024): a cache of ``sinks`` (start_size) + ``recent`` +
  ``token_entropy_size`` tokens that evicts once per dialogue turn by token entropy, with memory
  decay ``eta`` and positions as slots inside the cache; it runs by turns in
  ``jaxllm.inference.sirllm`` (see there for the rule). ``entropy_rule``: ``paper``
  (e_t = -log P(x_t | x_<t)) or ``public`` (the public code's value, one position early).

Token positions are kept with the cached keys (rotary positions are applied before caching), so an
evicted cache still scores each key at its original position.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

POLICIES = ("full", "streaming", "h2o", "tokenselect", "sirllm")
IMPLS = ("xla", "pallas", "auto")
ENTROPY_RULES = ("paper", "public")


@dataclasses.dataclass(frozen=True)
class Policy:
  """An eviction policy and its budget (the most tokens kept per kv head after each step)."""
  name: str = "full"
  budget: int | None = None  # None: unbounded (only for "full")
  sinks: int = 4  # streaming, tokenselect, sirllm (start_size): tokens kept from the start
  recent: int | None = None  # h2o, tokenselect: latest tokens always kept; None -> budget // 2
  # (sirllm: the cache's recent part, None -> 0)
  threshold: float = 0.9  # tokenselect: reuse the selection above this query cosine similarity
  impl: str = "auto"  # tokenselect: how the selected subset is read (see the module docstring)
  # sirllm (defaults: the public Grocery run, eta 1; budget = sinks + recent + token_entropy_size,
  # either given, the other derived; recent defaults to 0).
  token_entropy_size: int | None = None
  eta: float = 1.0  # memory decay of the stored entropies, once per turn
  entropy_rule: str = "paper"

  def __post_init__(self):
    if self.name not in POLICIES:
      raise ValueError(f"policy name {self.name!r} unknown; allowed: {list(POLICIES)}")
    if self.name == "sirllm":
      self._sirllm_fields()
    b = self.budget
    if b is not None and (isinstance(b, bool) or not isinstance(b, int) or b < 1):
      raise ValueError(f"policy.budget must be a positive int or None, got {b!r}")
    if self.name != "full" and b is None:
      raise ValueError(f"policy {self.name!r} needs a budget (the tokens kept per kv head)")
    if self.name == "streaming" and not 0 <= self.sinks < b:
      raise ValueError(f"streaming policy: sinks must be in [0, budget={b}), got {self.sinks}")
    if self.name == "h2o" and self.recent is not None and not 1 <= self.recent <= b:
      raise ValueError(f"h2o policy: recent must be in [1, budget={b}], got {self.recent}")
    if self.name == "tokenselect" and not (
        self.sinks >= 0 and self.num_recent >= 1 and self.sinks + self.num_recent <= b):
      raise ValueError(f"tokenselect policy: need sinks >= 0, recent >= 1 and sinks + recent <= "
                       f"budget={b}; got sinks={self.sinks}, recent={self.num_recent}")
    t = self.threshold
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not -1 <= t <= 1:
      raise ValueError(f"policy.threshold must be a number in [-1, 1] (1: never reuse a "
                       f"selection, -1: always), got {t!r}")
    if self.impl not in IMPLS:
      raise ValueError(f"policy.impl={self.impl!r} unknown; allowed: {list(IMPLS)}")

  def _sirllm_fields(self):
    for f in ("sinks", "recent", "token_entropy_size", "budget"):
      v = getattr(self, f)
      if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
        raise ValueError(f"sirllm policy: {f} must be an int >= 0 or None, got {v!r}")
    recent = self.recent or 0
    te, b = self.token_entropy_size, self.budget
    if te is None and b is None:
      raise ValueError("sirllm policy needs token_entropy_size (the entropy-selected tokens) or "
                       "budget (the cache size, sinks + recent + token_entropy_size)")
    if te is None:
      te = b - self.sinks - recent
    if b is None:
      b = self.sinks + recent + te
    if te < 0 or b != self.sinks + recent + te or b < 1:
      raise ValueError(f"sirllm policy: budget={b} must equal sinks={self.sinks} + recent="
                       f"{recent} + token_entropy_size={te} and be >= 1")
    object.__setattr__(self, "token_entropy_size", te)
    object.__setattr__(self, "budget", b)
    e = self.eta
    if isinstance(e, bool) or not isinstance(e, (int, float)) or not 0 <= e <= 1:
      raise ValueError(f"sirllm policy: eta (memory decay) must be a number in [0, 1], got {e!r}")
    if self.entropy_rule not in ENTROPY_RULES:
      raise ValueError(f"sirllm policy: entropy_rule={self.entropy_rule!r} unknown; allowed: "
                       f"{list(ENTROPY_RULES)}")

  @property
  def num_recent(self) -> int:
    return self.budget // 2 if self.recent is None else self.recent

  def slots(self, total_len: int) -> int:
    """Cache slots to allocate for a sequence of ``total_len`` tokens: the budget plus one slot
    that holds the newest token while the step's query attends (it is evicted right after)."""
    if self.name == "tokenselect":  # selects per step, keeps the whole cache
      return total_len
    if self.name == "full":
      if self.budget is not None and self.budget < total_len:
        raise ValueError(f"full policy: budget={self.budget} cannot hold the {total_len} tokens of "
                         "prompt plus generation; raise it or use an evicting policy")
      return total_len
    return min(self.budget + 1, total_len)


def keep_mask(policy: Policy, pos, score, now):
  """Which occupied slots to keep so that at most ``policy.budget`` remain.

  Args:
    policy: the eviction policy.
    pos: int32 [..., S] original position of each slot's token, -1 where the slot is empty.
    score: float32 [..., S] accumulated attention of each slot (used by ``h2o``).
    now: the position of the newest token (int or scalar array).

  Returns:
    bool [..., S]: True for slots whose token stays (empty slots are False).
  """
  occupied = pos >= 0
  if policy.name in ("full", "tokenselect"):
    return occupied
  n_drop = jnp.maximum(jnp.sum(occupied, axis=-1, keepdims=True) - policy.budget, 0)
  if policy.name == "streaming":
    protected = pos < policy.sinks
    priority = pos.astype(jnp.float32)  # evict the oldest non-sink first
  else:
    protected = pos > now - policy.num_recent
    priority = score.astype(jnp.float32)  # evict the lowest accumulated attention first
  return occupied & ~lowest_ranks(occupied & ~protected, priority, n_drop)


def lowest_ranks(candidate, priority, n):
  """True for the ``n`` candidates (per row) of lowest priority (ties: lower slot index first)."""
  priority = jnp.where(candidate, priority, jnp.inf)
  rank = jnp.argsort(jnp.argsort(priority, axis=-1, stable=True), axis=-1, stable=True)
  return candidate & (rank < n)


def select_mask(policy: Policy, pos, visible, vote, now):
  """TokenSelect's per-step selection: which visible slots the query attends to.

  Args:
    policy: a ``tokenselect`` policy.
    pos: int32 [..., S] original positions (-1 empty); visible: bool [..., S] the model's own mask;
    vote: float [..., S] the soft vote of each slot; now: the newest token's position.

  Returns:
    bool [..., S]: the sinks, the ``recent`` latest tokens, and the best-voted others, at most
    ``policy.budget`` in all.
  """
  protected = fixed_mask(policy, pos, visible, now)
  room = policy.budget - jnp.sum(protected, axis=-1, keepdims=True)
  return protected | lowest_ranks(visible & ~protected, -vote.astype(jnp.float32), room)


def fixed_mask(policy: Policy, pos, visible, now):
  """TokenSelect's always-attended tokens: the visible sinks and the ``recent`` latest."""
  return visible & ((pos < policy.sinks) | (pos > now - policy.num_recent))


def cut(policy: Policy, pos, score, now):
  """Applies :func:`keep_mask`: evicted slots get position -1 and score 0."""
  keep = keep_mask(policy, pos, score, now)
  return jnp.where(keep, pos, -1), jnp.where(keep, score, 0.0)


def free_slot(pos):
  """Index of the first empty slot along the last axis (the caller guarantees one exists)."""
  return jnp.argmax(pos < 0, axis=-1)
