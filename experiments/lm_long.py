"""Long-context LM run: train a Llama-style LM on real text, then evaluate its use of long context.

Training reads ``config.text`` through ``jaxllm.data.pipeline`` (packed rows; the held-out
documents never seen), with any attention method in ``config.model``. Evaluation
(``jaxllm.eval.long_context``) on the held-out documents: loss by position at lengths
``eval.length_multiples`` x the training length, and passkey / needle / multi-key retrieval on a
(length x depth) grid. Results (``results.json``): training summary and tokens/s, the position
losses, the retrieval grids and their markdown tables; ``scripts/figures/fig_lm_long.py`` draws them.
"""

import time

from flax import nnx

from jaxllm.train.lm_task import TextTask
from jaxllm.data.pipeline import held_out_tokens
from jaxllm.eval import long_context
from jaxllm.models.transformer import count_params
from jaxllm.results import write_results
from jaxllm.train.loop import train
from jaxllm.train.metrics import read_metrics


def evaluate(logits_fn, tokenizer, haystack, eval_cfg, train_len: int, seed: int) -> dict:
  lengths = [max(int(round(m * train_len)), 1) for m in eval_cfg.length_multiples]
  out = {"position_perplexity": long_context.position_perplexity(
      logits_fn, haystack, lengths, num_sequences=int(eval_cfg.ppl_sequences),
      bucket=int(eval_cfg.ppl_bucket), batch_size=int(eval_cfg.batch_size), seed=seed)}
  out["retrieval"] = {
      task: long_context.retrieval(
          logits_fn, tokenizer, haystack, task=task, lengths=lengths,
          depths=tuple(eval_cfg.depths), num_samples=int(eval_cfg.num_samples),
          num_keys=int(eval_cfg.num_keys), style=eval_cfg.style,
          batch_size=int(eval_cfg.batch_size), seed=seed)
      for task in eval_cfg.tasks}
  return out


def run(config, workdir: str) -> dict:
  unknown = sorted(set(config.eval.tasks) - set(long_context.TASKS))
  if unknown:
    raise ValueError(f"eval.tasks {unknown} unknown; allowed: {list(long_context.TASKS)}")
  task = TextTask(config, config.model.to_dict())
  longest = int(max(config.eval.length_multiples) * task.seq_len)
  # Learned position tables must cover the evaluation lengths (RoPE needs no table).
  task.model_cfg["max_len"] = max(task.seq_len, longest)
  t0 = time.perf_counter()
  result = train(config, workdir, task)
  train_seconds = time.perf_counter() - t0
  model = result.model
  forward = nnx.jit(lambda m, tokens: m(tokens))
  haystack = held_out_tokens(task.data, 8 * longest)
  t0 = time.perf_counter()
  evals = evaluate(lambda tokens: forward(model, tokens), task.data.tokenizer, haystack,
                   config.eval, task.seq_len, int(config.seed))
  results = {
      "experiment": "lm_long", "train_seq_len": task.seq_len,
      "attention": config.model.attention, "params": count_params(model),
      "train_steps": int(config.train.steps), "batch_size": task.batch_size,
      "final_train_loss": result.last_metrics.get("loss"),
      "train_tokens_per_s": result.steps_per_second * task.batch_size * task.seq_len,
      "train_seconds": train_seconds, "eval_seconds": time.perf_counter() - t0,
      "held_out_tokens": int(len(haystack)),
      "loss_curve": [(m["step"], m["loss"]) for m in read_metrics(workdir)],
      **evals,
  }
  results["tables"] = long_context.tables(results)
  write_results(workdir, results)
  return results
