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

