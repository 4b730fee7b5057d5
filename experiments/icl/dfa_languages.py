"""In-context language learning (Akyurek et al. 2024): train one decoder per attention method on
prompts of strings from random DFAs, then measure on unseen DFAs the fraction of greedy next-symbol
predictions that the DFA allows, beside in-context n-gram baselines of several orders.

Predictions are the argmax over the alphabet (the separator excluded: every state accepts, so the
separator is always allowed and would make the metric trivial)."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxllm.data import dfa
from jaxllm.icl import ngram
from jaxllm.models.transformer import build
from jaxllm.results import write_results
from jaxllm.train.loop import train


class DFATask:
  """Each row picks one of ``num_train_dfas`` fixed DFAs; batches are pure functions of the step."""

  def __init__(self, config, method: str):
    c = config.task
    self.c, self.seed = c, int(config.seed)
    self.vocab = int(c.vocab_size)
    self.pad = self.vocab + 1
    self.batch_size = int(config.train.batch_size)
    self.seq_len = prompt_length(c)
    self.model_cfg = dict(config.model.to_dict(), io="tokens", vocab_size=self.vocab + 2,
                          attention=method)
    if self.seq_len > self.model_cfg.get("max_len", 0):
      longest = ("task.prompt_tokens" if packed_tokens(c)
                 else "task.max_strings * (task.max_len + 1)")
      raise ValueError(f"model.max_len={self.model_cfg.get('max_len')} is shorter than the longest "
                       f"prompt ({longest} = {self.seq_len})")
    self.train_dfas = make_dfas(c, [self.seed, 0], int(c.num_train_dfas))

  def init_model(self, rngs):
    return build(self.model_cfg, rngs=rngs)

  def batch(self, step: int):
    rng = np.random.default_rng([self.seed, 1, step])
    picks = rng.integers(len(self.train_dfas), size=self.batch_size)
    return {"tokens": prompts(rng, self.c, [self.train_dfas[i] for i in picks], self.seq_len)}

  def loss(self, model, batch):
    tokens = batch["tokens"]
    logits = model(tokens[:, :-1])
    target = tokens[:, 1:]
    mask = (target != self.pad).astype(jnp.float32)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, target)
    return (ce * mask).sum() / mask.sum(), {}


def make_dfas(c, seed, n):
  rng = np.random.default_rng(seed)
  return [dfa.random_dfa(rng, int(c.vocab_size), int(c.min_states), int(c.max_states),
                         int(c.min_edges), int(c.max_edges)) for _ in range(n)]


def packed_tokens(c) -> int:
  """``task.prompt_tokens``: > 0 packs strings into prompts of exactly that many tokens; 0 keeps
  min_strings..max_strings whole strings per prompt, padded."""
  packed = int(c.get("prompt_tokens", 0) or 0)
  if packed < 0:
    raise ValueError(f"task.prompt_tokens must be >= 0 (0: min_strings..max_strings strings per "
                     f"prompt, padded), got {packed}")
  return packed


def prompt_length(c) -> int:
  """Tokens per prompt row: ``task.prompt_tokens`` when prompts are packed, else the longest
  prompt of ``task.max_strings`` strings."""
  return packed_tokens(c) or int(c.max_strings) * (int(c.max_len) + 1)


def prompts(rng, c, dfas, seq_len) -> np.ndarray:
  """Token prompts [B, seq_len], one per DFA: ``task.min_strings..max_strings`` strings padded
  with PAD, or, when ``task.prompt_tokens`` is set, strings filling exactly ``seq_len`` tokens."""
  out = np.full((len(dfas), seq_len), int(c.vocab_size) + 1, np.int32)
  packed = packed_tokens(c)
  for b, trans in enumerate(dfas):
    if packed:
      toks = dfa.sample_packed_prompt(rng, trans, seq_len, int(c.min_len), int(c.max_len))
    else:
      toks = dfa.sample_prompt(rng, trans, int(rng.integers(c.min_strings, c.max_strings + 1)),
                               int(c.min_len), int(c.max_len))
    out[b, :len(toks)] = toks
  return out


def scored_positions(tokens, vocab, skip_strings):
  """Mask [T] of positions t whose next token is a symbol or the end of a string, counted only
  after the first ``skip_strings`` strings (the model has something to learn from in context)."""
  nxt = np.asarray(tokens[1:])
  seps_before = np.cumsum(np.asarray(tokens[:-1]) == vocab)
  return (nxt <= vocab) & (seps_before >= skip_strings)


def validity(pred_T, valid_TV, mask_T) -> float:
  ok = valid_TV[np.arange(len(pred_T)), np.maximum(pred_T, 0)] & (pred_T >= 0)
  return float(ok[mask_T].mean()) if mask_T.any() else 0.0


def symbol_probs(probs_TV, vocab) -> np.ndarray:
  """Rows restricted to the symbols and SEP and renormalised (uniform where they hold no mass)."""
  p = np.asarray(probs_TV, np.float64)[:, :vocab + 1]
  total = p.sum(axis=1, keepdims=True)
  return np.where(total > 0, p / np.maximum(total, 1e-300), 1.0 / (vocab + 1))


def l1_distance(p_TV, q_TV, mask_T) -> float:
  """Mean over the scored positions of sum_a |p(a) - q(a)| (0 = equal, 2 = disjoint)."""
  return float(np.abs(p_TV - q_TV).sum(axis=1)[mask_T].mean()) if mask_T.any() else 0.0


def log_loss(p_TV, next_T, mask_T) -> float:
  """Mean over the scored positions of -log p(next token); unscored positions may hold tokens
  outside p's columns (PAD)."""
  p_TV = np.asarray(p_TV)
  q = p_TV[np.arange(len(next_T)), np.minimum(np.asarray(next_T), p_TV.shape[1] - 1)]
  return float(-np.log(np.maximum(q[mask_T], 1e-30)).mean()) if mask_T.any() else 0.0


def smoothed_ngram_probs(tokens, order: int, vocab: int, alpha: float) -> np.ndarray:
  """The in-context n-gram's follower counts over the symbols and SEP plus ``alpha`` each,
  normalised: a log-loss reference (the unsmoothed n-gram gives unseen symbols probability 0)."""
  counts = ngram.next_token_counts(tokens, order, vocab + 2)[:, :vocab + 1] + alpha
  return counts / counts.sum(axis=1, keepdims=True)


def evaluate(models: dict, config) -> dict:
  """Validity, L1 distances (to the true next-symbol distribution and to the in-context n-grams)
  and next-token log-loss per method and per n-gram order on ``eval.num_prompts`` prompts of
  unseen DFAs."""
  c = config.task
  vocab = int(c.vocab_size)
  seq_len = prompt_length(c)
  n = int(config.eval.num_prompts)
  test_dfas = make_dfas(c, [int(config.seed), 10**9], n)  # seeds disjoint from the training pool
  tokens = prompts(np.random.default_rng([int(config.seed), 10**9, 1]), c, test_dfas, seq_len)
  valid = [dfa.valid_next(t, toks[:-1]) for t, toks in zip(test_dfas, tokens)]
  masks = [scored_positions(toks, vocab, int(config.eval.skip_strings)) for toks in tokens]
  weights = np.array([m.sum() for m in masks], np.float64)
  total = int(weights.sum())
  truth = [dfa.next_symbol_probs(t, toks[:-1], int(c.min_len), int(c.max_len))
           for t, toks in zip(test_dfas, tokens)]
  orders = [int(o) for o in config.eval.ngram_orders]
  grams = {o: [symbol_probs(ngram.next_token_probs(toks[:-1], o, vocab + 2), vocab)
               for toks in tokens] for o in orders}

  def mean(per_prompt):
    return float(np.dot(per_prompt, weights) / total)

  alpha = float(config.eval.get("ngram_smoothing", 0.1))
  out, l1_true, l1_ngram, nll = {}, {}, {}, {}
  for name, model in models.items():
    fwd = nnx.jit(lambda m, x: jax.nn.softmax(m(x)[..., :vocab + 1], axis=-1))
    probs = np.concatenate([np.asarray(fwd(model, jnp.asarray(tokens[i:i + 100, :-1])))
                            for i in range(0, n, 100)])
    # Greedy prediction over the symbols only: SEP is always allowed (every state accepts).
    out[name] = mean([validity(p[:, :vocab].argmax(-1), v, m)
                      for p, v, m in zip(probs, valid, masks)])
    sym = [symbol_probs(p, vocab) for p in probs]  # once per prompt, shared by the metrics
    l1_true[name] = mean([l1_distance(p, q, m) for p, q, m in zip(sym, truth, masks)])
    l1_ngram[name] = {f"ngram{o}": mean([l1_distance(p, g, m)
                                         for p, g, m in zip(sym, grams[o], masks)])
                      for o in orders}
    nll[name] = mean([log_loss(p, toks[1:], m) for p, toks, m in zip(sym, tokens, masks)])
  for o in orders:
    out[f"ngram{o}"] = mean([validity(ngram.predict(toks[:-1], o, vocab + 2,
                                                    allowed=range(vocab)), v, m)
                             for toks, v, m in zip(tokens, valid, masks)])
    l1_true[f"ngram{o}"] = mean([l1_distance(g, q, m) for g, q, m in zip(grams[o], truth, masks)])
    nll[f"ngram{o}"] = mean([log_loss(smoothed_ngram_probs(toks[:-1], o, vocab, alpha),
                                      toks[1:], m) for toks, m in zip(tokens, masks)])
  nll["true"] = mean([log_loss(q, toks[1:], m) for q, toks, m in zip(truth, tokens, masks)])
  # Chance: a uniformly random symbol, i.e. the mean share of allowed symbols.
  out["random"] = mean([v[m].sum() / vocab / max(m.sum(), 1) for v, m in zip(valid, masks)])
  l1_true["uniform"] = mean([l1_distance(np.full_like(q, 1.0 / (vocab + 1)), q, m)
                             for q, m in zip(truth, masks)])
  return {"validity": out, "l1_to_true": l1_true, "l1_to_ngram": l1_ngram, "log_loss": nll,
          "ngram_smoothing": alpha, "num_prompts": n, "scored_positions": total}


def loss_curve(method_dir: str) -> list:
  """[[step, training loss], ...] from the run's metrics.jsonl."""
  rows = []
  with open(os.path.join(method_dir, "metrics.jsonl")) as f:
    for line in f:
      row = json.loads(line)
      if "loss" in row:
        rows.append([int(row["step"]), float(row["loss"])])
  return rows


def run(config, workdir: str) -> dict:
  models, train_info = {}, {}
  for method in config.methods:
    method_dir = os.path.join(workdir, method)
    result = train(config, method_dir, DFATask(config, method))
    models[method] = result.model
    curve = loss_curve(method_dir)  # a run resumed at its last step has no new metrics
    train_info[method] = {"train_steps": result.final_step,
                          "final_train_loss": result.last_metrics.get(
                              "loss", curve[-1][1] if curve else None),
                          "loss_curve": curve}
  results = {"experiment": "icl.dfa_languages", "methods": list(config.methods),
             "train": train_info, **evaluate(models, config)}
  write_results(workdir, results)
  return results
