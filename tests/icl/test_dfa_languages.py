"""In-context DFA languages: validity scoring, batches and the in-context n-gram claim."""

import numpy as np
import pytest

from configs.icl import dfa_languages as cfg_mod
from experiments.icl import dfa_languages as study
from jaxllm.data import dfa
from jaxllm.icl import ngram


def _chain():
  # 0 -a-> 1 -b-> 2 -c-> 0 : the language of prefixes of (abc)*; vocab 4 (symbol 3 unused).
  trans = np.full((3, 4), -1)
  trans[0, 0], trans[1, 1], trans[2, 2] = 1, 2, 0
  return trans


def test_scoring_by_hand():
  trans, sep, pad = _chain(), 4, 5
  toks = np.array([0, 1, sep, 0, 1, 2, sep, pad])
  mask = study.scored_positions(toks, 4, skip_strings=1)
  # Scored: positions after the first separator whose next token is a symbol or a separator.
  np.testing.assert_array_equal(mask, [0, 0, 1, 1, 1, 1, 0])
  valid = dfa.valid_next(trans, toks[:-1])
  perfect = np.array([1, 2, 0, 1, 2, 0, 0])
  assert study.validity(perfect, valid, mask) == 1.0
  half = np.array([1, 2, 0, 3, 2, 3, 0])
  assert study.validity(half, valid, mask) == 0.5
  assert study.validity(np.full(7, -1), valid, mask) == 0.0


def test_batches_are_deterministic_padded_prompts():
  config = cfg_mod.get_config("smoke")
  config.task.num_train_dfas = 20
  task = study.DFATask(config, "dense")
  a, b = task.batch(3)["tokens"], task.batch(3)["tokens"]
  np.testing.assert_array_equal(a, b)
  assert a.shape == (32, task.seq_len) and a.max() <= task.pad
  n_strings = (a == task.vocab).sum(1)
  assert n_strings.min() >= config.task.min_strings and n_strings.max() <= config.task.max_strings


def test_in_context_ngrams_explain_most_of_the_validity():
  # The paper's mechanism: in-context bigram/trigram statistics already pick valid symbols on
  # unseen DFAs far above chance, and far above a unigram that ignores the current state.
  config = cfg_mod.get_config("smoke")
  c = config.task
  dfas = study.make_dfas(c, [5, 5], 60)
  tokens = study.prompts(np.random.default_rng(6), c, dfas, study.DFATask(config, "dense").seq_len)
  scores = {}
  for order in (1, 3):
    hits = total = 0
    for trans, toks in zip(dfas, tokens):
      mask = study.scored_positions(toks, c.vocab_size, 1)
      pred = ngram.predict(toks[:-1], order, c.vocab_size + 2, allowed=range(c.vocab_size))
      hits += study.validity(pred, dfa.valid_next(trans, toks[:-1]), mask) * mask.sum()
      total += mask.sum()
    scores[order] = hits / total
  assert scores[3] > 0.6 and scores[1] < 0.4


def test_prompt_longer_than_the_model_is_rejected():
  config = cfg_mod.get_config("smoke")
  config.task.num_train_dfas = 2
  config.model.max_len = 10
  with pytest.raises(ValueError, match="max_len"):
    study.DFATask(config, "dense")



def test_true_next_symbol_distribution_by_hand():
  trans, sep = _chain(), 4
  probs = dfa.next_symbol_probs(trans, [0, 1, sep, 0, 1, 2], min_len=1, max_len=3)
  # After 'a' (1 symbol, state 1): stop with hazard 1/3, else 'b'. After 'ab': 1/2 each.
  np.testing.assert_allclose(probs[0], [0, 2 / 3, 0, 0, 1 / 3])
  np.testing.assert_allclose(probs[1], [0, 0, 1 / 2, 0, 1 / 2])
  np.testing.assert_allclose(probs[2], [1, 0, 0, 0, 0])  # a new string starts at state 0
  np.testing.assert_allclose(probs[5], [0, 0, 0, 0, 1])  # 3 symbols = max_len: must stop
  assert not dfa.next_symbol_probs(trans, [1, 0], 1, 3).any()  # 'b' first leaves the language


def test_true_distribution_matches_the_generator_in_frequency():
  rng = np.random.default_rng(3)
  trans = dfa.random_dfa(rng, vocab_size=6)
  expected, observed = np.zeros(7), np.zeros(7)
  for _ in range(400):
    toks = dfa.sample_prompt(rng, trans, 5, 2, 6)
    probs = dfa.next_symbol_probs(trans, toks[:-1], 2, 6)
    expected += probs.sum(0)
    observed += np.bincount(toks[1:], minlength=7)
  # Counts of every symbol and of SEP within 4 binomial standard deviations of their expectation.
  assert np.all(np.abs(observed - expected) <= 4 * np.sqrt(expected) + 1), (observed, expected)


def test_ngram_distribution_and_l1_distance_by_hand():
  probs = ngram.next_token_probs([0, 1, 0, 2, 0], order=2, num_tokens=3)
  np.testing.assert_allclose(probs[0], [1, 0, 0])  # no bigram yet: the unigram of [0]
  np.testing.assert_allclose(probs[4], [0, 0.5, 0.5])  # 0 was followed by 1 once and by 2 once
  p, q = np.array([[1.0, 0, 0], [0.5, 0.5, 0]]), np.array([[0, 1.0, 0], [0.5, 0, 0.5]])
  assert study.l1_distance(p, q, np.array([True, True])) == pytest.approx(1.5)
  assert study.l1_distance(p, q, np.array([False, True])) == pytest.approx(1.0)
  np.testing.assert_allclose(study.symbol_probs([[2.0, 2.0, 0.0, 4.0]], 2), [[0.5, 0.5, 0.0]])
