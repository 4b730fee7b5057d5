"""LLM efficiency run: the recall task's answer mask, and recall read through a bounded KV cache."""

import jax.numpy as jnp
import numpy as np
from flax import nnx

from configs import lm_efficiency as cfg_module
from experiments import lm_efficiency as exp
from jaxllm.inference import decode
from jaxllm.inference.policies import Policy


def _task(**model):
  config = cfg_module.get_config("tiny")
  model_cfg = {**config.model.to_dict(), "attention": "dense", "attention_options": {}, **model}
  return config, exp.RecallTask(config, model_cfg)


def test_recall_sequences_ask_for_the_value_of_a_listed_key():
  _, task = _task()
  batch = task.sample(np.random.default_rng(0), 16)
  tokens, mask = batch["tokens"], batch["mask"]
  assert tokens.shape == (16, task.seq_len) and mask.shape == (16, task.seq_len - 1)
  ctx = tokens[:, :2 * task.pairs].reshape(16, task.pairs, 2)
  for row in range(16):
    table = dict(ctx[row].tolist())
    targets = tokens[row, 1:][mask[row]]
    prompts = tokens[row, :-1][mask[row]]
    assert [table[k] for k in prompts.tolist()] == targets.tolist()
  assert mask.sum(1).tolist() == [task.queries] * 16


def test_cache_recall_with_the_full_cache_is_the_models_own_recall():
  config, task = _task()
  model = task.init_model(nnx.Rngs(3))
  plain = exp.evaluate(model, task, 64, timing_repeats=1)["eval_accuracy"]
  out = exp.cache_recall(model, task, ({"name": "streaming", "budget": task.seq_len, "sinks": 1},
                                       {"name": "h2o", "budget": 4}), 64)
  assert set(out) == {"full", f"streaming@{task.seq_len}", "h2o@4"}
  assert abs(out["full"]["accuracy"] - plain) < 1e-9
  assert abs(out[f"streaming@{task.seq_len}"]["accuracy"] - plain) < 1e-9
  # The bounded cache's accuracy is scored on the answers (odd probe positions) of its own logits.
  hits = []
  for b in task.eval_batches(64):
    tokens = jnp.asarray(b["tokens"])
    logits = decode.teacher_forced(model, tokens[:, :2 * task.pairs], tokens[:, 2 * task.pairs:],
                                   Policy("h2o", budget=4))
    hits.append(np.asarray(jnp.argmax(logits, -1) == tokens[:, 2 * task.pairs:])[:, 1::2])
  assert abs(out["h2o@4"]["accuracy"] - np.mean(hits)) < 1e-9
