"""DuoAttention run: a base LM that retrieves passkeys, its learned gates, and the deployed cache
against full attention, StreamingLLM and H2O at equal memory.

1. Base model: ``base.load_dir`` (a Hugging Face directory, read by ``jaxllm.interop.load_hf``), or
   one trained here on passkey haystacks (``jaxllm.inference.duo.passkey_sample``) and saved under
   ``workdir/base`` as a Hugging Face directory, then read back through ``load_hf`` so the gates
   are always learned on an imported model.
2. Gates (``duo.train_gates``) on fresh haystacks, base frozen; saved as ``workdir/pattern.json``.
3. Evaluation on held-out haystacks (``eval.num_passkeys`` passkeys, one asked for), every policy
   through ``jaxllm.inference.decode``: passkey accuracy (every answer digit the argmax,
   teacher-forced through the cache), the cache's KV bytes (and ``jaxllm.inference.cost_model``'s
   prediction), and greedy decode tokens/s. Policies: full; Duo at ``deploy.fraction`` streaming
   heads from the learned gates, and from random head choices (``deploy.random_seeds``); Duo with
   every head streaming; StreamingLLM and H2O with the budget that gives Duo's KV bytes.

``results.json`` holds the gates, the training curves, one row per policy and a markdown table;
``check`` says whether Duo at the target fraction is within 5 points of full.
"""

import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxllm import optim
from jaxllm.data.pipeline import TextData, held_out_tokens, text_config
from jaxllm.inference import cost_model as cm
from jaxllm.inference import decode, duo
from jaxllm.inference.policies import Policy
from jaxllm.interop import load_hf, save_hf
from jaxllm.models.transformer import build, count_params
from jaxllm.results import write_results


def _haystacks(config, tokens: int):
  """(train, held-out) real-text token streams of ``tokens`` tokens each."""
  data = TextData(config.text, batch_size=1, seed=int(config.seed))
  train_cfg = text_config(**{**config.text.to_dict(), "eval_split": "train"})
  train = held_out_tokens(TextData(train_cfg, batch_size=1, seed=int(config.seed)), tokens)
  return data.tokenizer, train, held_out_tokens(data, tokens)


def _sampler(cfg, tokenizer, haystack, seed: int):
  """batches(step) -> (tokens, answer) of ``cfg.batch_size`` passkey haystacks."""
  def batches(step):
    rng = np.random.default_rng([seed, step])
    return duo.passkey_batch(rng, tokenizer, haystack, int(cfg.batch_size),
                             length=int(cfg.seq_len), num_passkeys=int(cfg.num_passkeys),
                             passkey_length=int(cfg.passkey_length))
  return batches


def train_base(config, tokenizer, haystack, log=print):
  """A base LM trained on passkey haystacks: mean next-token loss plus the answer tokens' mean."""
  b = config.base
  model = build(dict(config.model.to_dict(), vocab_size=tokenizer.vocab_size,
                     max_len=max(int(b.seq_len), int(config.eval.seq_len))),
                rngs=nnx.Rngs(int(config.seed)))
  steps = int(b.steps)
  schedule = optim.make_schedule("cosine", peak=float(b.learning_rate), total_steps=steps,
                                 warmup_steps=int(b.warmup_steps))
  tx = optim.make("adamw", schedule, grad_clip=1.0)
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state, tokens, answer):
    def loss_fn(p):
      logits = nnx.merge(graphdef, p, rest)(tokens[:, :-1])
      ce = optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:])
      a = answer[:, 1:].astype(jnp.float32)
      return jnp.mean(ce) + jnp.sum(ce * a) / jnp.maximum(jnp.sum(a), 1.0)
    loss, g = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(g, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  batches = _sampler(b, tokenizer, haystack, int(config.seed) + 1)
  curve = []
  for s in range(steps):
    tokens, answer = batches(s)
    params, opt_state, loss = step(params, opt_state, jnp.asarray(tokens), jnp.asarray(answer))
    if s % max(steps // 10, 1) == 0 or s == steps - 1:
      curve.append((s, float(loss)))
      log(f"base step {s}: loss {float(loss):.4f}")
  return nnx.merge(graphdef, params, rest), curve


def passkey_accuracy(model, policy, tokens, answer, batch: int) -> float:
  """Share of samples whose every answer token is the argmax, teacher-forced through the cache
  of ``policy`` (the answer is the last tokens of every row)."""
  n = int(answer[0].sum())
  if not (answer[:, -n:].all() and (answer.sum(1) == n).all()):
    raise ValueError("evaluation samples must end with their one answer")
  a0 = tokens.shape[1] - n
  hits = []
  for i in range(0, len(tokens), batch):
    rows = jnp.asarray(tokens[i:i + batch])
    logits = decode.teacher_forced(model, rows[:, :a0], rows[:, a0:], policy)
    hits.append(np.asarray(jnp.all(jnp.argmax(logits, -1) == rows[:, a0:], axis=-1)))
  return float(np.concatenate(hits).mean())


def kv_bytes(model, policy, prompt_len: int, new: int, batch: int = 1) -> int:
  """Bytes of keys and values the cache allocates for ``prompt_len`` + ``new`` tokens."""
  prompt = jnp.zeros((batch, prompt_len), jnp.int32)
  shapes = jax.eval_shape(lambda: decode.prefill(model, prompt, policy, new)[1])
  return duo.cache_bytes(shapes)


def decode_rate(model, policy, prompt, new: int) -> float:
  """Greedy generation tokens/s (all rows together), after a compiling call."""
  decode.generate(model, prompt, new, policy)["tokens"].block_until_ready()
  t0 = time.perf_counter()
  decode.generate(model, prompt, new, policy)["tokens"].block_until_ready()
  return prompt.shape[0] * new / (time.perf_counter() - t0)


def _table(rows) -> str:
  lines = ["| policy | streaming heads | KV bytes | cost model | passkey acc. | decode tok/s |",
           "|---|---|---|---|---|---|"]
  for r in rows:
    lines.append(f"| {r['policy']} | {r.get('streaming_fraction', '')} | {r['kv_bytes']} | "
                 f"{r.get('kv_bytes_cost_model', '')} | {r['accuracy']:.3f} | "
                 f"{r['decode_tokens_per_s']:.1f} |")
  return "\n".join(lines)


def run(config, workdir: str) -> dict:
  import os
  g, d, e = config.gates, config.deploy, config.eval
  longest = max(int(config.base.seq_len), int(g.seq_len), int(e.seq_len))
  tokenizer, train_hay, eval_hay = _haystacks(config, 40 * longest)
  t0 = time.perf_counter()
  base_curve = []
  if config.base.load_dir:
    base_dir = config.base.load_dir
  else:
    model, base_curve = train_base(config, tokenizer, train_hay)
    base_dir = os.path.join(workdir, "base")
    save_hf(model, base_dir)
  model = load_hf(base_dir)
  base_seconds = time.perf_counter() - t0

  t0 = time.perf_counter()
  alpha, gate_curve = duo.train_gates(
      model, _sampler(g, tokenizer, train_hay, int(config.seed) + 2), steps=int(g.steps),
      learning_rate=float(g.learning_rate), sinks=int(g.sinks), recent=int(g.recent),
      reg=float(g.reg), log_every=int(g.log_every))
  gate_seconds = time.perf_counter() - t0
  pattern_path = duo.save_pattern(
      os.path.join(workdir, "pattern.json"), alpha, sinks=int(g.sinks), recent=int(g.recent),
      meta=dict(model=base_dir, steps=int(g.steps), learning_rate=float(g.learning_rate),
                reg=float(g.reg)))
  pattern = duo.load_pattern(pattern_path)

  rng = np.random.default_rng([int(config.seed), 3])
  tokens, answer = duo.passkey_batch(rng, tokenizer, eval_hay, int(e.num_samples),
                                     length=int(e.seq_len), num_passkeys=int(e.num_passkeys),
                                     passkey_length=int(e.passkey_length), num_queries=1)
  n_answer = int(answer[0].sum())
  prompt_len = tokens.shape[1] - n_answer
  cfg = model.cfg
  spec = cm.spec_from_model_config(cfg, bytes_per_element=jnp.dtype(cfg.compute_dtype).itemsize)
  context = prompt_len + n_answer
  sink, recent, fraction = int(d.sinks), int(d.recent), float(d.fraction)
  duo_cm = cm.Policy("duo", fraction=fraction, sink=sink, recent=recent)
  budget = round(duo_cm.cached_token_heads(spec, context) / (cfg.num_layers * cfg.kv_heads))
  policies = [("full", Policy("full"), None),
              (f"duo@{fraction:g} (learned gates)",
               duo.DuoPolicy.from_pattern(pattern, fraction, sinks=sink, recent=recent), duo_cm)]
  for seed in d.random_seeds:
    policies.append((f"duo@{fraction:g} (random heads, seed {seed})", duo.DuoPolicy.from_mask(
        duo.random_retrieval(cfg.num_layers, cfg.kv_heads, fraction, int(seed)), sinks=sink,
        recent=recent), duo_cm))
  policies += [
      ("duo@1 (every head streaming)",
       duo.DuoPolicy.from_pattern(pattern, 1.0, sinks=sink, recent=recent),
       cm.Policy("duo", fraction=1.0, sink=sink, recent=recent)),
      (f"streaming@{budget}", Policy("streaming", budget=budget, sinks=sink), None),
      (f"h2o@{budget}", Policy("h2o", budget=budget), None)]
  prompt = jnp.asarray(tokens[:int(e.decode_batch), :prompt_len])
  rows = []
  for name, policy, cm_policy in policies:
    row = dict(policy=name,
               accuracy=passkey_accuracy(model, policy, tokens, answer, int(e.batch_size)),
               kv_bytes=kv_bytes(model, policy, prompt_len, n_answer),
               decode_tokens_per_s=decode_rate(model, policy, prompt, int(e.decode_tokens)))
    if isinstance(policy, duo.DuoPolicy):
      row["streaming_fraction"] = policy.streaming_fraction
      row["kv_bytes_cost_model"] = cm.kv_bytes(spec, context, 1, cm_policy)
    elif policy.name == "full":
      row["kv_bytes_cost_model"] = cm.kv_bytes(spec, context, 1, cm.Policy("full"))
    print(f"{name}: {row}")
    rows.append(row)
  full_acc, duo_acc = rows[0]["accuracy"], rows[1]["accuracy"]
  random_acc = [r["accuracy"] for r in rows[2:2 + len(d.random_seeds)]]
  results = {
      "experiment": "duo_attention", "base_dir": base_dir, "params": count_params(model),
      "base_curve": base_curve, "base_seconds": base_seconds,
      "gate_curve": gate_curve, "gate_seconds": gate_seconds, "alpha": alpha,
      "pattern_file": pattern_path, "eval_context": context, "eval_samples": int(e.num_samples),
      "equal_memory_budget": budget, "rows": rows,
      "check": dict(full=full_acc, duo=duo_acc, random_mean=float(np.mean(random_acc))
                    if random_acc else None,
                    duo_within_5_points_of_full=bool(full_acc - duo_acc <= 0.05)),
  }
  results["table"] = _table(rows)
  print(results["table"])
  write_results(workdir, results)
  return results
