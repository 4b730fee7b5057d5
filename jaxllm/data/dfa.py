"""Random regular languages for in-context language learning (Akyurek et al. 2024).

A DFA is a transition table ``trans [num_states, vocab]`` with -1 for a missing edge, start state 0
and every state accepting, so a string is in the language iff its walk never takes a missing edge.
Prompts concatenate strings of one DFA separated by ``SEP = vocab``; ``PAD = vocab + 1`` fills
batches to a fixed length.
"""

from collections import deque

import numpy as np


def trim(trans: np.ndarray) -> np.ndarray:
  """Drops states unreachable from state 0 and renumbers the rest in BFS order from 0."""
  order, seen, queue = [], {0}, deque([0])
  while queue:
    s = queue.popleft()
    order.append(s)
    for t in trans[s]:
      if t >= 0 and t not in seen:
        seen.add(int(t))
        queue.append(int(t))
  new_id = {old: new for new, old in enumerate(order)}
  out = np.full((len(order), trans.shape[1]), -1, np.int64)
  for old, new in new_id.items():
    for a, t in enumerate(trans[old]):
      if t >= 0:
        out[new, a] = new_id[int(t)]
  return out


def minimise(trans: np.ndarray) -> np.ndarray:
  """Merges states that accept the same continuations (Moore refinement with an implicit dead
  state, which is the only non-accepting one), then trims."""
  n = trans.shape[0]
  block = np.zeros(n, np.int64)
  while True:
    # A state's signature: its own block and the block each symbol leads to (-1: dead).
    sigs = [(int(block[s]),) + tuple(int(block[t]) if t >= 0 else -1 for t in trans[s])
            for s in range(n)]
    ids = {sig: i for i, sig in enumerate(dict.fromkeys(sigs))}
    new_block = np.array([ids[sig] for sig in sigs])
    if len(ids) == len(set(block.tolist())):
      break
    block = new_block
  merged = np.full((len(ids), trans.shape[1]), -1, np.int64)
  for s in range(n):
    merged[new_block[s]] = np.where(trans[s] >= 0, new_block[np.maximum(trans[s], 0)], -1)
  start = new_block[0]
  perm = np.r_[start, np.delete(np.arange(len(ids)), start)]  # put the start state first
  inv = np.argsort(perm)
  return trim(np.where(merged[perm] >= 0, inv[np.maximum(merged[perm], 0)], -1))


def random_dfa(rng: np.random.Generator, vocab_size: int = 20, min_states: int = 4,
               max_states: int = 12, min_edges: int = 1, max_edges: int = 3) -> np.ndarray:
  """A minimised, trimmed DFA with min_states..max_states states, each with min_edges..max_edges
  outgoing edges on distinct symbols and no self-loops; redrawn until minimisation leaves a
  loop-free automaton whose size is in range."""
  if not 2 <= min_states <= max_states:
    raise ValueError(f"need 2 <= min_states <= max_states, got {min_states}, {max_states}")
  if not 1 <= min_edges <= max_edges <= vocab_size:
    raise ValueError(f"need 1 <= min_edges <= max_edges <= vocab_size={vocab_size}, got "
                     f"{min_edges}, {max_edges}")
  while True:
    n = int(rng.integers(min_states, max_states + 1))
    trans = np.full((n, vocab_size), -1, np.int64)
    for s in range(n):
      k = int(rng.integers(min_edges, max_edges + 1))
      symbols = rng.choice(vocab_size, size=k, replace=False)
      trans[s, symbols] = rng.choice(np.delete(np.arange(n), s), size=k)
    out = minimise(trim(trans))
    no_loops = not np.any(out == np.arange(out.shape[0])[:, None])  # merging can create loops
    if min_states <= out.shape[0] <= max_states and no_loops:
      return out


def sample_string(rng: np.random.Generator, trans: np.ndarray, length: int) -> list[int]:
  """A uniformly random walk of ``length`` symbols from the start state."""
  s, out = 0, []
  for _ in range(length):
    symbols = np.flatnonzero(trans[s] >= 0)
    a = int(symbols[rng.integers(len(symbols))])
    out.append(a)
    s = int(trans[s, a])
  return out


def accepts(trans: np.ndarray, string) -> bool:
  s = 0
  for a in string:
    s = int(trans[s, a])
    if s < 0:
      return False
  return True


def sample_prompt(rng: np.random.Generator, trans: np.ndarray, num_strings: int, min_len: int,
                  max_len: int) -> list[int]:
  """``num_strings`` strings of uniform length in [min_len, max_len], each followed by SEP."""
  sep = trans.shape[1]
  out = []
  for _ in range(num_strings):
    out += sample_string(rng, trans, int(rng.integers(min_len, max_len + 1))) + [sep]
  return out


def sample_packed_prompt(rng: np.random.Generator, trans: np.ndarray, num_tokens: int,
                         min_len: int, max_len: int) -> list[int]:
  """Exactly ``num_tokens`` tokens: strings of uniform length in [min_len, max_len], each followed
  by SEP, drawn until the budget is filled; the last string is cut at the budget (its prefix is
  still in the language), so a batch of these needs no padding."""
  if num_tokens < 1:
    raise ValueError(f"num_tokens must be >= 1, got {num_tokens}")
  sep = trans.shape[1]
  out = []
  while len(out) < num_tokens:
    out += sample_string(rng, trans, int(rng.integers(min_len, max_len + 1))) + [sep]
  return out[:num_tokens]


def valid_next(trans: np.ndarray, tokens) -> np.ndarray:
  """valid [T, vocab]: after tokens[:t+1], which symbols continue the current string inside the
  language; all False once the prefix has left the language, and at PAD."""
  vocab = trans.shape[1]
  out = np.zeros((len(tokens), vocab), bool)
  s = 0
  for t, a in enumerate(tokens):
    a = int(a)
    if a == vocab:
      s = 0
    elif a > vocab or s < 0:
      s = -1
    else:
      s = int(trans[s, a])
    if s >= 0:
      out[t] = trans[s] >= 0
  return out


def next_symbol_probs(trans: np.ndarray, tokens, min_len: int, max_len: int) -> np.ndarray:
  """probs [T, vocab + 1]: the generator's distribution of tokens[t + 1] given tokens[:t+1], over
  the symbols and SEP, given that the prompt goes on (the next token is not PAD).

  ``sample_prompt`` draws a string's length uniformly from [min_len, max_len] and then walks
  uniformly over the allowed edges, so after l symbols of the current string SEP comes with the
  hazard P(L = l | L >= l) = 1 / (max_len - l + 1) (zero below min_len) and the remaining mass is
  split evenly over the symbols the current state allows. Rows are zero once the prefix has left
  the language or reached PAD.
  """
  if not 1 <= min_len <= max_len:
    raise ValueError(f"need 1 <= min_len <= max_len, got {min_len}, {max_len}")
  vocab = trans.shape[1]
  out = np.zeros((len(tokens), vocab + 1))
  s, length = 0, 0
  for t, a in enumerate(tokens):
    a = int(a)
    if a == vocab:
      s, length = 0, 0
    elif a > vocab or s < 0:
      s = -1
    else:
      s, length = int(trans[s, a]), length + 1
    if s < 0:
      continue
    stop = 0.0 if length < min_len else 1.0 / (max_len - length + 1) if length <= max_len else 1.0
    allowed = trans[s] >= 0
    out[t, :vocab] = allowed * (1.0 - stop) / allowed.sum()
    out[t, vocab] = stop
  return out
