"""In-context language learning (Akyurek et al. 2024): train one decoder per attention method on
prompts of strings from random DFAs, then measure on unseen DFAs the fraction of greedy next-symbol
predictions that the DFA allows, beside in-context n-gram baselines of several orders.

Predictions are the argmax over the alphabet (the separator excluded: every state accepts, so the
separator is always allowed and would make the metric trivial)."""

import os

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
    self.seq_len = int(c.max_strings) * (int(c.max_len) + 1)
    self.model_cfg = dict(config.model.to_dict(), io="tokens", vocab_size=self.vocab + 2,
                          attention=method)
    if self.seq_len > self.model_cfg.get("max_len", 0):
      raise ValueError(f"model.max_len={self.model_cfg.get('max_len')} is shorter than the longest "
                       f"prompt (task.max_strings * (task.max_len + 1) = {self.seq_len})")
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


def prompts(rng, c, dfas, seq_len) -> np.ndarray:
  """Padded token prompts [B, seq_len], one per DFA."""
  out = np.full((len(dfas), seq_len), int(c.vocab_size) + 1, np.int32)
  for b, trans in enumerate(dfas):
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
  return float(ok[mask_T].mean())


def evaluate(models: dict, config) -> dict:
  """Validity per method and per n-gram order on ``eval.num_prompts`` prompts of unseen DFAs."""
  c = config.task
  vocab = int(c.vocab_size)
  seq_len = int(c.max_strings) * (int(c.max_len) + 1)
  n = int(config.eval.num_prompts)
  test_dfas = make_dfas(c, [int(config.seed), 10**9], n)  # seeds disjoint from the training pool
  tokens = prompts(np.random.default_rng([int(config.seed), 10**9, 1]), c, test_dfas, seq_len)
  valid = [dfa.valid_next(t, toks[:-1]) for t, toks in zip(test_dfas, tokens)]
  masks = [scored_positions(toks, vocab, int(config.eval.skip_strings)) for toks in tokens]
  total = sum(int(m.sum()) for m in masks)
  out = {}
  for name, model in models.items():
    fwd = nnx.jit(lambda m, x: jnp.argmax(m(x)[..., :vocab], axis=-1))
    preds = np.concatenate([np.asarray(fwd(model, jnp.asarray(tokens[i:i + 100, :-1])))
                            for i in range(0, n, 100)])
    out[name] = sum(validity(p, v, m) * m.sum() for p, v, m in zip(preds, valid, masks)) / total
  for order in config.eval.ngram_orders:
    hits = 0.0
    for toks, v, m in zip(tokens, valid, masks):
      p = ngram.predict(toks[:-1], int(order), vocab + 2, allowed=range(vocab))
      hits += validity(p, v, m) * m.sum()
    out[f"ngram{order}"] = hits / total
  # Chance: a uniformly random symbol, i.e. the mean share of allowed symbols.
  out["random"] = sum(v[m].sum() / vocab for v, m in zip(valid, masks)) / total
  return {"validity": out, "num_prompts": n, "scored_positions": total}


def run(config, workdir: str) -> dict:
  models, train_info = {}, {}
  for method in config.methods:
    result = train(config, os.path.join(workdir, method), DFATask(config, method))
    models[method] = result.model
    train_info[method] = {"train_steps": result.final_step,
                          "final_train_loss": result.last_metrics.get("loss")}
  results = {"experiment": "icl.dfa_languages", "methods": list(config.methods),
             "train": train_info, **evaluate(models, config)}
  write_results(workdir, results)
  return results
