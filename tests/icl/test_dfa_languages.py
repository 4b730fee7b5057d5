"""In-context DFA languages: validity scoring, batches and the in-context n-gram claim."""

import json
import os

import numpy as np
import pytest

from configs.icl import dfa_languages as cfg_mod
from experiments.icl import dfa_languages as study
from jaxllm.data import dfa
from jaxllm.icl import ngram
from tests.icl import figure_scripts


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
  config.task.update(num_train_dfas=20, prompt_tokens=0, min_strings=6, max_strings=8)
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


def test_packed_prompts_fill_the_budget_with_strings_of_the_language():
  config = cfg_mod.get_config("smoke")
  config.task.update(num_train_dfas=5, prompt_tokens=40)
  config.model.max_len = 40
  task = study.DFATask(config, "dense")
  tokens = task.batch(0)["tokens"]
  assert tokens.shape == (32, 40) and not (tokens == task.pad).any()
  sep = config.task.vocab_size
  for row in tokens:
    strings = np.split(row, np.flatnonzero(row == sep) + 1)
    complete, last = strings[:-1], strings[-1]
    lengths = [len(s) - 1 for s in complete]  # without the SEP
    assert min(lengths) >= config.task.min_len and max(lengths) <= config.task.max_len
    assert len(last) <= config.task.max_len  # the cut string: a prefix of at most max_len symbols
  # Every token, the cut string included, stays inside the row's language.
  rng = np.random.default_rng(7)
  trans = task.train_dfas[0]
  toks = np.array(dfa.sample_packed_prompt(rng, trans, 57, 1, 10))
  assert len(toks) == 57
  valid = dfa.valid_next(trans, toks[:-1])
  nxt = toks[1:]
  assert all(valid[t, a] for t, a in enumerate(nxt) if a < sep)
  with pytest.raises(ValueError, match="num_tokens"):
    dfa.sample_packed_prompt(rng, trans, 0, 1, 10)


def test_packed_prompt_longer_than_the_model_is_rejected():
  config = cfg_mod.get_config("smoke")
  config.task.update(num_train_dfas=2, prompt_tokens=200)
  with pytest.raises(ValueError, match="task.prompt_tokens"):
    study.DFATask(config, "dense")


def test_log_loss_and_smoothed_ngram_by_hand():
  p = np.array([[0.5, 0.25, 0.25], [0.1, 0.1, 0.8]])
  assert study.log_loss(p, [0, 2], np.array([True, True])) == pytest.approx(
      -(np.log(0.5) + np.log(0.8)) / 2)
  assert study.log_loss(p, [0, 2], np.array([False, True])) == pytest.approx(-np.log(0.8))
  assert study.log_loss(p, [5, 2], np.array([False, True])) == pytest.approx(-np.log(0.8))  # PAD
  # vocab 2 (+ SEP = 2, PAD = 3): after [0, 1, 0] the bigram context 0 was followed by 1 once.
  probs = study.smoothed_ngram_probs([0, 1, 0], order=2, vocab=2, alpha=0.5)
  np.testing.assert_allclose(probs[2], [0.5 / 2.5, 1.5 / 2.5, 0.5 / 2.5])
  # At t = 0 no bigram context exists yet: the unigram of [0].
  np.testing.assert_allclose(probs[0], [1.5 / 2.5, 0.5 / 2.5, 0.5 / 2.5])


def test_tiny_run_writes_results_and_figure(tmp_path):
  config = cfg_mod.get_config("smoke")
  config.task.update(num_train_dfas=10, prompt_tokens=48)
  config.model.update(d_model=16, max_len=48)
  config.train.update(steps=6, log_every=2, checkpoint_every=0)
  config.optimizer.warmup_steps = 2
  config.eval.num_prompts = 6
  results = study.run(config, str(tmp_path))
  assert set(results["methods"]) == {"dense", "linear"}
  for m in ("dense", "linear"):
    assert [r[0] for r in results["train"][m]["loss_curve"]] == [2, 4, 6]
    # An untrained model is near uniform over the 22 tokens: log-loss near log 21 (symbols + SEP).
    assert abs(results["log_loss"][m] - np.log(21)) < 0.5
  # The true distribution is the floor; the in-context bigram sits between it and uniform.
  assert results["log_loss"]["true"] < results["log_loss"]["ngram2"] < np.log(21)
  with open(tmp_path / "results.json") as f:
    assert json.load(f)["scored_positions"] == results["scored_positions"]
  figure = figure_scripts.load("fig_dfa_languages")
  assert os.path.getsize(figure.plot(results, str(tmp_path / "dfa.png"))) > 10_000


@pytest.mark.slow
def test_softmax_attention_forms_ngram_heads_and_linear_attention_does_not(tmp_path):
  """The smoke config (about 20 min on 2 CPU cores). Measured (seed 0, 200 unseen DFAs): validity
  dense 0.833, linear 0.551, in-context bigram 0.823, unigram 0.352; test log-loss dense 1.64,
  linear 2.16, smoothed bigram 1.83; dense's loss drops from the unigram plateau (2.2) near step
  4000."""
  results = study.run(cfg_mod.get_config("smoke"), str(tmp_path))
  v, nll, near = results["validity"], results["log_loss"], results["l1_to_ngram"]
  assert v["dense"] > v["ngram2"] - 0.05 and v["dense"] > v["linear"] + 0.15
  assert v["linear"] < v["ngram2"] - 0.15
  assert nll["dense"] < nll["ngram2"] < nll["linear"]
  # Softmax attention predicts like the in-context bigram; linear attention like the unigram.
  assert near["dense"]["ngram2"] < near["dense"]["ngram1"] - 0.3
  assert near["linear"]["ngram1"] < near["linear"]["ngram2"] - 0.3
  # The abrupt transition: dense's training loss falls well below its plateau, linear's does not.
  curves = {m: np.array(results["train"][m]["loss_curve"]) for m in ("dense", "linear")}

  def mean_loss(m, lo, hi):
    c = curves[m]
    return c[(c[:, 0] > lo) & (c[:, 0] <= hi), 1].mean()

  assert mean_loss("dense", 5000, 6000) < mean_loss("dense", 2000, 3000) - 0.3
  assert mean_loss("linear", 5000, 6000) > mean_loss("linear", 2000, 3000) - 0.2


def test_negative_prompt_tokens_is_rejected():
  config = cfg_mod.get_config("smoke")
  config.task.update(num_train_dfas=2, prompt_tokens=-1)
  with pytest.raises(ValueError, match="task.prompt_tokens must be >= 0"):
    study.DFATask(config, "dense")
