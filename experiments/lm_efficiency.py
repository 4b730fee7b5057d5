"""LLM efficiency run: softmax vs linear vs lightning attention LMs on the same data and budget.

Two tasks, each trained from scratch for every model variant with identical steps, batch, data
stream and optimizer:

* ``recall``: multi-query associative recall. A sequence lists ``num_pairs`` random key-value
  pairs, then ``num_queries`` of the keys again, each followed by its value; the loss and the
  recall accuracy are taken on those answers only (the pairs themselves are unpredictable).
* ``text``: language modelling on a TFDS text corpus read through ``jaxllm.data.pipeline``
  (``config.text``; by default Python's standard library sources as bytes, packed), scored on its
  held-out ``validation`` documents.

Reported per (task, variant): final train loss, held-out loss, recall accuracy, training tokens/s
(whole run, compile included) and forward tokens/s (compiled, timed after training), plus the
training loss curve. For the softmax model on ``recall``, ``cache_recall`` also reads the probe
through a KV cache under each policy of ``eval.cache_policies`` (StreamingLLM, H2O; see
``jaxllm.inference``): the recall accuracy a bounded cache keeps.
``scripts/figures/fig_lm_efficiency.py`` draws them.
"""

import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxllm.inference import decode
from jaxllm.inference.policies import Policy
from jaxllm.models.transformer import build, count_params
from jaxllm.results import write_results
from jaxllm.train.lm_task import TextTask, masked_lm_loss
from jaxllm.train.loop import train
from jaxllm.train.metrics import read_metrics

_EVAL_STREAM = 10**9  # seeds evaluation draws apart from every training step's


class RecallTask:
  """Multi-query associative recall; keys are tokens [0, K), values [K, K + V)."""

  def __init__(self, config, model_cfg: dict):
    c = config.recall
    self.pairs, self.queries = int(c.num_pairs), int(c.num_queries)
    self.keys, self.values = int(c.num_keys), int(c.num_values)
    if self.pairs > self.keys or self.queries > self.pairs:
      raise ValueError(f"recall: need num_queries <= num_pairs <= num_keys, got "
                       f"{self.queries}, {self.pairs}, {self.keys}")
    self.seq_len = 2 * (self.pairs + self.queries)
    self.batch_size, self.seed = int(config.train.batch_size), int(config.seed)
    self.model_cfg = dict(model_cfg, vocab_size=self.keys + self.values, max_len=self.seq_len)

  def init_model(self, rngs):
    return build(self.model_cfg, rngs=rngs)

  def sample(self, rng, n):
    keys = np.argsort(rng.random((n, self.keys)), axis=1)[:, :self.pairs]
    vals = self.keys + rng.integers(0, self.values, size=(n, self.pairs))
    which = np.argsort(rng.random((n, self.pairs)), axis=1)[:, :self.queries]
    rows = np.arange(n)[:, None]
    context = np.stack([keys, vals], axis=-1).reshape(n, -1)
    probe = np.stack([keys[rows, which], vals[rows, which]], axis=-1).reshape(n, -1)
    tokens = np.concatenate([context, probe], axis=1).astype(np.int32)
    # Targets are tokens[1:]; an answer sits at odd positions of the probe.
    mask = np.zeros((n, self.seq_len - 1), bool)
    mask[:, 2 * self.pairs::2] = True
    return {"tokens": tokens, "mask": mask}

  def batch(self, step: int):
    return self.sample(np.random.default_rng([self.seed, step]), self.batch_size)

  def loss(self, model, batch):
    return masked_lm_loss(model, batch)

  def eval_batches(self, num):
    rng = np.random.default_rng([self.seed, _EVAL_STREAM])
    return [self.sample(rng, self.batch_size) for _ in range(max(num // self.batch_size, 1))]


TASKS = {"recall": RecallTask, "text": TextTask}


def evaluate(model, task, num_sequences: int, timing_repeats: int) -> dict:
  """Held-out loss and accuracy, and compiled forward throughput in tokens/s."""
  loss_fn = nnx.jit(task.loss)
  forward = nnx.jit(lambda m, tok: m(tok))
  batches = task.eval_batches(num_sequences)
  losses, accs = zip(*[(float(l), float(m["accuracy"])) for l, m in
                       (loss_fn(model, b) for b in batches)])
  tokens = jnp.asarray(batches[0]["tokens"][:, :-1])
  jax.block_until_ready(forward(model, tokens))
  t0 = time.perf_counter()
  for _ in range(timing_repeats):
    jax.block_until_ready(forward(model, tokens))
  seconds = (time.perf_counter() - t0) / timing_repeats
  return {"eval_loss": float(np.mean(losses)), "eval_accuracy": float(np.mean(accs)),
          "forward_tokens_per_s": tokens.size / seconds}


def cache_recall(model, task, policies_cfg, num_sequences: int) -> dict:
  """Recall accuracy when the probe is read through a KV cache under each eviction policy.

  The key-value pairs are the prompt (prefilled); the probe is fed one token at a time with the
  given tokens, so each answer is predicted from whatever the policy kept. ``full`` keeps every
  token and reproduces the model's own recall accuracy.
  """
  if not isinstance(task, RecallTask):
    raise ValueError("cache_recall needs the recall task")
  batches = task.eval_batches(num_sequences)
  out = {}
  for spec in ({"name": "full"}, *policies_cfg):
    spec = dict(spec)
    policy = Policy(**spec)
    correct = total = 0
    for b in batches:
      tokens = jnp.asarray(b["tokens"])
      prompt, probe = tokens[:, :2 * task.pairs], tokens[:, 2 * task.pairs:]
      logits = decode.teacher_forced(model, prompt, probe, policy)
      hits = np.asarray(jnp.argmax(logits[:, 1::2], -1) == probe[:, 1::2])
      correct, total = correct + int(hits.sum()), total + hits.size
    label = spec["name"] if spec["name"] == "full" else f"{spec['name']}@{spec['budget']}"
    out[label] = {**spec, "accuracy": correct / total}
  return out


def run(config, workdir: str) -> dict:
  unknown = sorted(set(config.tasks) - set(TASKS))
  if unknown:
    raise ValueError(f"tasks {unknown} unknown; allowed: {sorted(TASKS)}")
  base = config.model.to_dict()
  results = {"experiment": "lm_efficiency", "train_steps": int(config.train.steps),
             "batch_size": int(config.train.batch_size), "runs": {}}
  for task_name in config.tasks:
    for variant, overrides in config.variants.items():
      model_cfg = {**base, **overrides.to_dict()}
      task = TASKS[task_name](config, model_cfg)
      run_dir = os.path.join(workdir, task_name, variant)
      result = train(config, run_dir, task)
      tokens_per_step = task.batch_size * (task.seq_len - 1 if task_name == "recall"
                                           else task.seq_len)
      curve = [(m["step"], m["loss"]) for m in read_metrics(run_dir)]
      results["runs"].setdefault(task_name, {})[variant] = {
          "attention": model_cfg.get("attention"), "block": model_cfg.get("block", "standard"),
          "params": count_params(result.model), "seq_len": task.seq_len,
          "final_train_loss": result.last_metrics.get("loss"),
          "train_tokens_per_s": result.steps_per_second * tokens_per_step,
          "loss_curve": curve,
          **evaluate(result.model, task, int(config.eval.num_sequences),
                     int(config.eval.timing_repeats)),
      }
      cache_policies = tuple(config.eval.get("cache_policies", ()) or ())
      if task_name == "recall" and model_cfg.get("attention") == "dense" and cache_policies:
        results["runs"][task_name][variant]["cache_recall"] = cache_recall(
            result.model, task, cache_policies, int(config.eval.num_sequences))
  write_results(workdir, results)
  return results
