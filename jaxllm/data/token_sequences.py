"""Token-level bursty classification for in-context vs in-weights learning with held-out tokens.

The vocabulary holds L label tokens (ids 0 .. L-1, so a label's token id is its class index), S seen
item tokens (ids L .. L+S-1) and U unseen item tokens (ids L+S .. L+S+U-1). Every seen item has a
fixed label (a balanced random assignment), so its label can be memorised; seen items are drawn
Zipf(alpha) by rank. Unseen items never occur in a training batch, so their embeddings are never
trained. A sequence is N (item, label) pairs and a query item, 2N + 1 token ids; the target is the
label of the query.

* training: with probability p_B a sequence is bursty (N / B distinct items drawn by frequency, B
  copies each, shuffled, the query one of them); otherwise the N items and the query are i.i.d. Zipf.
  Context labels are the items' fixed labels, so the answer is both in context and in the weights,
  except in a fraction p_R of the bursty sequences, whose N / B items get distinct random labels
  (the target is the in-context one): there only copying from context answers.
* ICL test (seen or unseen items): N / B distinct items, B copies each, every item given a distinct
  random label in context (seen items lose their fixed label), so only copying from context answers.
* IWL test: i.i.d. Zipf seen items with the query's item absent from the context; the target is the
  query's fixed label, so only a memorised item -> label map answers.
"""

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class TokenTask:
  """Vocabulary layout, the fixed labels of the seen items and their sampling frequencies."""
  num_labels: int
  num_seen: int
  num_unseen: int
  item_labels_S: np.ndarray
  seen_probs_S: np.ndarray

  @property
  def vocab_size(self) -> int:
    return self.num_labels + self.num_seen + self.num_unseen

  @property
  def seen_ids(self) -> np.ndarray:
    return np.arange(self.num_labels, self.num_labels + self.num_seen)

  @property
  def unseen_ids(self) -> np.ndarray:
    return np.arange(self.num_labels + self.num_seen, self.vocab_size)


def _positive_int(name, value):
  if int(value) != value or value < 1:
    raise ValueError(f"{name} must be a positive integer, got {value}")


def make_task(seed: int, num_labels: int, num_seen: int, num_unseen: int,
              alpha: float) -> TokenTask:
  """Balanced random labels for the seen items; frequencies p(rank r) ~ r^-alpha."""
  for name, value in (("num_labels", num_labels), ("num_seen", num_seen),
                      ("num_unseen", num_unseen)):
    _positive_int(name, value)
  if num_seen < num_labels:
    raise ValueError(f"num_seen ({num_seen}) must be at least num_labels ({num_labels})")
  if alpha < 0:
    raise ValueError(f"alpha must be non-negative, got {alpha}")
  rng = np.random.default_rng([seed, 0])
  labels = rng.permutation(np.arange(num_seen) % num_labels).astype(np.int32)
  probs = np.arange(1, num_seen + 1, dtype=np.float64) ** -float(alpha)
  return TokenTask(int(num_labels), int(num_seen), int(num_unseen), labels, probs / probs.sum())


def check_shape(num_examples: int, burstiness: int, num_labels: int):
  """Validates N and B: B divides N and the N / B items of an ICL test get distinct labels."""
  _positive_int("num_examples", num_examples)
  _positive_int("burstiness", burstiness)
  if num_examples % burstiness:
    raise ValueError(f"burstiness ({burstiness}) must divide num_examples ({num_examples})")
  if num_examples // burstiness > num_labels:
    raise ValueError(f"num_examples / burstiness ({num_examples // burstiness}) distinct items "
                     f"need as many distinct labels; num_labels is {num_labels}")


def _without_replacement(rng, probs_K, rows, k):
  """[rows, k] distinct indices per row, drawn sequentially by ``probs_K`` (Gumbel top-k)."""
  keys = np.log(probs_K)[None] + rng.gumbel(size=(rows, probs_K.shape[0]))
  return np.argsort(-keys, axis=1)[:, :k]


def _random_labels(rng, num_labels, rows, k):
  """[rows, k] distinct labels per row, uniformly at random."""
  return _without_replacement(rng, np.full(num_labels, 1.0 / num_labels), rows, k)


def _bursty_slots(rng, rows, num_examples, burstiness):
  """Shuffled slot -> distinct-item index maps [rows, N] (B copies each) and a query slot [rows]."""
  num_distinct = num_examples // burstiness
  slots = np.repeat(np.arange(num_distinct), burstiness)
  slots = rng.permuted(np.broadcast_to(slots, (rows, num_examples)), axis=1)
  return slots, rng.integers(0, num_distinct, size=rows)


def _assemble(items_BN, labels_BN, query_B):
  """Interleaves items and labels and appends the query: [B, 2N + 1] int32."""
  b, n = items_BN.shape
  pairs = np.stack([items_BN, labels_BN], axis=2).reshape(b, 2 * n)
  return np.concatenate([pairs, query_B[:, None]], axis=1).astype(np.int32)


def sample_train(rng: np.random.Generator, task: TokenTask, batch_size: int, *,
                 num_examples: int, burstiness: int, p_bursty: float, p_relabel: float = 0.0):
  """Training batch: token ids [B, 2N + 1] and targets [B] (label indices), seen items only."""
  check_shape(num_examples, burstiness, task.num_labels)
  for name, value in (("p_bursty", p_bursty), ("p_relabel", p_relabel)):
    if not 0.0 <= value <= 1.0:
      raise ValueError(f"{name} must lie in [0, 1], got {value}")
  probs = task.seen_probs_S
  num_distinct = num_examples // burstiness
  distinct = _without_replacement(rng, probs, batch_size, num_distinct)
  slots, query_slot = _bursty_slots(rng, batch_size, num_examples, burstiness)
  rows = np.arange(batch_size)
  bursty_ctx, bursty_q = distinct[rows[:, None], slots], distinct[rows, query_slot]
  iid = rng.choice(task.num_seen, size=(batch_size, num_examples + 1), p=probs)
  is_bursty = rng.random(batch_size) < p_bursty
  ctx = np.where(is_bursty[:, None], bursty_ctx, iid[:, :-1])
  query = np.where(is_bursty, bursty_q, iid[:, -1])
  ctx_labels, targets = task.item_labels_S[ctx], task.item_labels_S[query]
  random_labels = _random_labels(rng, task.num_labels, batch_size, num_distinct)
  relabel = is_bursty & (rng.random(batch_size) < p_relabel)
  ctx_labels = np.where(relabel[:, None], random_labels[rows[:, None], slots], ctx_labels)
  targets = np.where(relabel, random_labels[rows, query_slot], targets)
  tokens = _assemble(ctx + task.num_labels, ctx_labels, query + task.num_labels)
  return tokens, targets.astype(np.int32)


def sample_icl(rng: np.random.Generator, task: TokenTask, batch_size: int, *,
               num_examples: int, burstiness: int, unseen: bool):
  """ICL test batch: N / B distinct items (unseen ids, or seen ones drawn by frequency), each with
  a distinct random label in context; the query is one of them."""
  check_shape(num_examples, burstiness, task.num_labels)
  num_distinct = num_examples // burstiness
  if unseen:
    if task.num_unseen < num_distinct:
      raise ValueError(f"num_unseen ({task.num_unseen}) must be at least num_examples / "
                       f"burstiness ({num_distinct})")
    pool = np.full(task.num_unseen, 1.0 / task.num_unseen)
    offset = task.num_labels + task.num_seen
  else:
    pool, offset = task.seen_probs_S, task.num_labels
  distinct = _without_replacement(rng, pool, batch_size, num_distinct) + offset
  labels = _random_labels(rng, task.num_labels, batch_size, num_distinct)
  slots, query_slot = _bursty_slots(rng, batch_size, num_examples, burstiness)
  rows = np.arange(batch_size)
  tokens = _assemble(distinct[rows[:, None], slots], labels[rows[:, None], slots],
                     distinct[rows, query_slot])
  return tokens, labels[rows, query_slot].astype(np.int32)


def sample_iwl(rng: np.random.Generator, task: TokenTask, batch_size: int, *, num_examples: int):
  """IWL test batch: i.i.d. seen items by frequency, the query's item absent from the context."""
  _positive_int("num_examples", num_examples)
  probs = task.seen_probs_S
  query = rng.choice(task.num_seen, size=batch_size, p=probs)
  ctx = np.empty((batch_size, num_examples), np.int64)
  for b in range(batch_size):
    rest = probs.copy()
    rest[query[b]] = 0.0
    ctx[b] = rng.choice(task.num_seen, size=num_examples, p=rest / rest.sum())
  labels = task.item_labels_S
  tokens = _assemble(ctx + task.num_labels, labels[ctx], query + task.num_labels)
  return tokens, labels[query]
