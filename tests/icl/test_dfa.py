"""Random DFA generator and validity checker."""

import itertools

import numpy as np
import pytest

from jaxllm.data import dfa


def _language(trans, max_len):
  """All accepted strings up to max_len, for comparing automata by their languages."""
  vocab = trans.shape[1]
  return {s for n in range(max_len + 1) for s in itertools.product(range(vocab), repeat=n)
          if dfa.accepts(trans, s)}


def test_random_dfas_meet_the_spec():
  rng = np.random.default_rng(0)
  for _ in range(50):
    trans = dfa.random_dfa(rng)
    n, vocab = trans.shape
    assert vocab == 20 and 4 <= n <= 12
    edges = (trans >= 0).sum(1)
    assert edges.min() >= 1 and edges.max() <= 3
    assert not np.any(trans == np.arange(n)[:, None])  # no self-loops
    assert dfa.trim(trans).shape == trans.shape  # every state reachable
    assert dfa.minimise(trans).shape == trans.shape  # already minimal


def test_minimise_merges_equivalent_states_and_keeps_the_language():
  # States 1 and 2 both accept exactly "b"*; state 3 is unreachable.
  a, b = 0, 1
  trans = np.full((5, 3), -1)
  trans[0, a], trans[0, b] = 1, 2
  trans[1, b] = 4
  trans[2, b] = 4
  trans[4, b] = 1
  trans[3, a] = 0
  m = dfa.minimise(trans)
  assert m.shape[0] == 2
  assert _language(m, 5) == _language(trans, 5)


def test_minimise_preserves_random_languages():
  rng = np.random.default_rng(1)
  for _ in range(5):
    n = 6
    trans = np.full((n, 3), -1)
    for s in range(n):
      for a in rng.choice(3, size=int(rng.integers(1, 3)), replace=False):
        trans[s, a] = rng.integers(n)
    m = dfa.minimise(trans)
    assert m.shape[0] <= n
    assert _language(m, 6) == _language(trans, 6)


def test_sampled_prompts_are_valid_and_checker_flags_invalid_tokens():
  rng = np.random.default_rng(2)
  trans = dfa.random_dfa(rng)
  vocab = trans.shape[1]
  toks = dfa.sample_prompt(rng, trans, 12, 1, 20)
  assert toks.count(vocab) == 12 and toks[-1] == vocab
  valid = dfa.valid_next(trans, toks)
  for t in range(len(toks) - 1):
    if toks[t + 1] < vocab:
      assert valid[t, toks[t + 1]]
  # Right after a separator the valid set is the start state's edges.
  sep_t = toks.index(vocab)
  np.testing.assert_array_equal(valid[sep_t], trans[0] >= 0)
  # A symbol with no edge makes the rest of that string invalid until the next separator.
  bad = int(np.flatnonzero(trans[0] < 0)[0])
  v2 = dfa.valid_next(trans, [bad, 0, vocab])
  assert not v2[0].any() and not v2[1].any()
  np.testing.assert_array_equal(v2[2], trans[0] >= 0)


def test_bad_arguments_raise():
  rng = np.random.default_rng(3)
  with pytest.raises(ValueError, match="min_states"):
    dfa.random_dfa(rng, min_states=5, max_states=4)
  with pytest.raises(ValueError, match="max_edges"):
    dfa.random_dfa(rng, vocab_size=2, max_edges=3)
