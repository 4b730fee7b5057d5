"""In-context n-gram predictor against hand-worked prompts."""

import numpy as np
import pytest

from jaxllm.icl import ngram


def test_bigram_counts_by_hand():
  # tokens: 0 1 0 2 0 ; after "0" at t=2 the bigram table has seen 0->1 once.
  c = ngram.next_token_counts([0, 1, 0, 2, 0], order=2, num_tokens=3)
  np.testing.assert_array_equal(c[0], [1, 0, 0])  # unseen context: unigram of the prefix
  np.testing.assert_array_equal(c[1], [1, 1, 0])  # "1" unseen as context -> unigram {0, 1}
  np.testing.assert_array_equal(c[2], [0, 1, 0])
  np.testing.assert_array_equal(c[4], [0, 1, 1])  # 0->1 and 0->2 once each


def test_trigram_backs_off_and_uses_only_the_past():
  toks = [3, 1, 2, 3, 1, 0, 3, 1]
  pred = ngram.predict(toks, order=3, num_tokens=4)
  # at t=4 the context (3, 1) was followed by 2 earlier
  assert pred[4] == 2
  # at t=7 (3, 1) was followed by 2 and 0 once each: tie -> smallest id
  assert pred[7] == 0
  # at t=3 context (2, 3) unseen, bigram "3" -> 1
  assert pred[3] == 1
  # no position may use its own future: the prediction at t=1 ignores tokens[2:]
  assert ngram.predict(toks[:2], 3, 4)[1] == pred[1]


def test_allowed_restricts_the_argmax():
  toks = [5, 0, 5, 0, 5]
  assert ngram.predict(toks, 2, 6)[4] == 0
  assert ngram.predict(toks, 2, 6, allowed=range(5))[0] == -1
  with pytest.raises(ValueError, match="order"):
    ngram.predict(toks, 0, 6)


def test_repeating_sequence_is_predicted_exactly_after_one_period():
  period = [4, 2, 7, 1, 2, 9]
  toks = period * 4
  pred = ngram.predict(toks, 3, 10)
  np.testing.assert_array_equal(pred[len(period):-1], toks[len(period) + 1:])
