"""In-context n-gram predictor: the baseline for in-context language learning.

At each position it looks up the last n-1 tokens among earlier positions of the same prompt and
predicts the most frequent follower, backing off to shorter contexts (down to the unigram) when the
context has not been seen. Ties go to the smallest token id.
"""

from collections import Counter, defaultdict

import numpy as np


def next_token_counts(tokens, order: int, num_tokens: int) -> np.ndarray:
  """counts [T, num_tokens]: the follower counts used to predict tokens[t + 1] from tokens[:t+1],
  taken from the longest context (<= order - 1 tokens) seen before position t."""
  if order < 1:
    raise ValueError(f"n-gram order must be >= 1, got {order}")
  tokens = [int(a) for a in tokens]
  tables = [defaultdict(Counter) for _ in range(order)]  # tables[m]: context of length m
  out = np.zeros((len(tokens), num_tokens), np.int64)
  for t in range(len(tokens)):
    # Record the transitions that end at t, so counts at t use only tokens[:t+1].
    for m in range(min(order, t + 1)):
      tables[m][tuple(tokens[t - m:t])][tokens[t]] += 1
    for m in range(min(order - 1, t + 1), -1, -1):
      followers = tables[m].get(tuple(tokens[t + 1 - m:t + 1]))
      if followers:
        for a, c in followers.items():
          out[t, a] = c
        break
  return out


def predict(tokens, order: int, num_tokens: int, allowed=None) -> np.ndarray:
  """Argmax next token [T] of the in-context n-gram, restricted to ``allowed`` token ids if given
  (-1 where no allowed token has been seen yet)."""
  counts = next_token_counts(tokens, order, num_tokens)
  if allowed is not None:
    mask = np.zeros(num_tokens, bool)
    mask[list(allowed)] = True
    counts = np.where(mask, counts, 0)
  return np.where(counts.max(axis=1) > 0, counts.argmax(axis=1), -1)


def next_token_probs(tokens, order: int, num_tokens: int) -> np.ndarray:
  """probs [T, num_tokens]: the in-context n-gram's normalised follower counts (with back-off to
  the unigram of tokens[:t+1], so no row is empty)."""
  counts = next_token_counts(tokens, order, num_tokens).astype(np.float64)
  total = counts.sum(axis=1, keepdims=True)
  return np.where(total > 0, counts / np.maximum(total, 1.0), 1.0 / num_tokens)
