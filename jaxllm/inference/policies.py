"""KV-cache eviction policies: which cached tokens a decoder keeps once its budget is full.

A policy sees, per kv head, the original position of every cache slot (-1 for an empty slot) and
the attention each slot has accumulated, and names the slots to drop so that at most ``budget``
tokens remain. Policies:

* ``full``: never evicts; the cache must hold the whole sequence.
* ``streaming`` (StreamingLLM, "attention sinks"): keeps the first ``sinks`` tokens and the most
  recent ``budget - sinks``; the oldest non-sink token goes first.
* ``h2o`` (heavy hitters, Zhang et al. 2023): keeps the ``recent`` latest tokens and, among the
  others, the ones with the largest accumulated attention (the sum, over every query that has seen
  them, of their softmax weight); the lowest-scoring non-recent token goes first. The budget is
  split equally between heavy hitters and recent tokens unless ``recent`` is given (as in the
  paper's runs, whose heavy-hitter share is 20% of the full cache).

Token positions are kept with the cached keys (rotary positions are applied before caching), so an
evicted cache still scores each key at its original position.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

POLICIES = ("full", "streaming", "h2o")


@dataclasses.dataclass(frozen=True)
class Policy:
  """An eviction policy and its budget (the most tokens kept per kv head after each step)."""
  name: str = "full"
  budget: int | None = None  # None: unbounded (only for "full")
  sinks: int = 4  # streaming: tokens kept from the start of the sequence
  recent: int | None = None  # h2o: latest tokens always kept; None -> budget // 2

  def __post_init__(self):
    if self.name not in POLICIES:
      raise ValueError(f"policy name {self.name!r} unknown; allowed: {list(POLICIES)}")
    b = self.budget
    if b is not None and (isinstance(b, bool) or not isinstance(b, int) or b < 1):
      raise ValueError(f"policy.budget must be a positive int or None, got {b!r}")
    if self.name != "full" and b is None:
      raise ValueError(f"policy {self.name!r} needs a budget (the tokens kept per kv head)")
    if self.name == "streaming" and not 0 <= self.sinks < b:
      raise ValueError(f"streaming policy: sinks must be in [0, budget={b}), got {self.sinks}")
    if self.name == "h2o" and self.recent is not None and not 1 <= self.recent <= b:
      raise ValueError(f"h2o policy: recent must be in [1, budget={b}], got {self.recent}")

  @property
  def num_recent(self) -> int:
    return self.budget // 2 if self.recent is None else self.recent

  def slots(self, total_len: int) -> int:
    """Cache slots to allocate for a sequence of ``total_len`` tokens: the budget plus one slot
    that holds the newest token while the step's query attends (it is evicted right after)."""
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
  if policy.name == "full":
    return occupied
  n_drop = jnp.maximum(jnp.sum(occupied, axis=-1, keepdims=True) - policy.budget, 0)
  if policy.name == "streaming":
    protected = pos < policy.sinks
    priority = pos.astype(jnp.float32)  # evict the oldest non-sink first
  else:
    protected = pos > now - policy.num_recent
    priority = score.astype(jnp.float32)  # evict the lowest accumulated attention first
  candidate = occupied & ~protected
  priority = jnp.where(candidate, priority, jnp.inf)
  # Rank candidates by priority (ties: lower slot index first); the n_drop lowest are evicted.
  order = jnp.argsort(priority, axis=-1, stable=True)
  rank = jnp.argsort(order, axis=-1, stable=True)
  evict = candidate & (rank < n_drop)
  return occupied & ~evict


def cut(policy: Policy, pos, score, now):
  """Applies :func:`keep_mask`: evicted slots get position -1 and score 0."""
  keep = keep_mask(policy, pos, score, now)
  return jnp.where(keep, pos, -1), jnp.where(keep, score, 0.0)


def free_slot(pos):
  """Index of the first empty slot along the last axis (the caller guarantees one exists)."""
  return jnp.argmax(pos < 0, axis=-1)


def check_free(pos) -> jax.Array:
  """True where every row has at least one empty slot."""
  return jnp.all(jnp.any(pos < 0, axis=-1))
