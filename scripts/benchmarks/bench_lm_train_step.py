"""Train-step throughput of a GPT-2-small-shaped LM: jaxllm (JAX/Flax NNX) vs PyTorch's
``transformers.GPT2LMHeadModel`` on the same machine, in one run.

  python scripts/benchmarks/bench_lm_train_step.py                       # GPT-2 small, T=256, B=4
  python scripts/benchmarks/bench_lm_train_step.py --layers=2 --steps=3  # quick look

Both sides: float32, AdamW, same shape (tied embeddings, learned positions, LayerNorm, GELU),
no dropout, loss = next-token cross-entropy. Prints a table and writes JSON (--out).
Needs the [bench] extra (torch, transformers) for the peer; without it only jaxllm is timed.
"""

import argparse
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from jaxllm.models.transformer import build, count_params  # noqa: E402
from jaxllm.results import write_json  # noqa: E402


def time_steps(step, n_warmup, n_steps):
  for _ in range(n_warmup):
    step()
  times = []
  for _ in range(n_steps):
    t0 = time.perf_counter()
    step()
    times.append(time.perf_counter() - t0)
  return float(np.median(times))


def bench_jax(args, tokens):
  cfg = dict(style="gpt2", d_model=args.d_model, num_layers=args.layers, num_heads=args.heads,
             vocab_size=args.vocab, max_len=args.seq_len, tie_embeddings=True,
             attention="dense", attention_impl="auto")
  model = build(cfg, rngs=nnx.Rngs(0))
  n_params = count_params(model)
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  params = params.to_pure_dict()
  opt = optax.adamw(3e-4, b1=0.9, b2=0.95, weight_decay=0.1)
  state = (params, opt.init(params))

  @jax.jit
  def step(state, tokens):
    params, opt_state = state

    def loss_fn(p):
      logits = nnx.merge(graphdef, nnx.State(p), rest)(tokens[:, :-1])
      return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = opt.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), loss

  tok = jnp.asarray(tokens)
  holder = {"s": state}

  def one():
    holder["s"], loss = step(holder["s"], tok)
    loss.block_until_ready()

  return time_steps(one, args.warmup, args.steps), n_params


def bench_torch(args, tokens):
  try:
    import torch
    import transformers
  except ImportError:
    return None, None, "torch/transformers not installed (pip install -e .[bench])"
  torch.manual_seed(0)
  torch.set_num_threads(os.cpu_count())
  cfg = transformers.GPT2Config(
      vocab_size=args.vocab, n_positions=args.seq_len, n_embd=args.d_model, n_layer=args.layers,
      n_head=args.heads, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
  model = transformers.GPT2LMHeadModel(cfg)
  model.train()
  n_params = sum(p.numel() for p in model.parameters())
  opt = torch.optim.AdamW(model.parameters(), lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1)
  tok = torch.as_tensor(np.asarray(tokens), dtype=torch.long)

  def one():
    opt.zero_grad(set_to_none=True)
    out = model(input_ids=tok[:, :-1], labels=None)
    loss = torch.nn.functional.cross_entropy(
        out.logits.reshape(-1, args.vocab), tok[:, 1:].reshape(-1))
    loss.backward()
    opt.step()

  return time_steps(one, args.warmup, args.steps), n_params, f"torch {torch.__version__}"


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--layers", type=int, default=12)
  p.add_argument("--d_model", type=int, default=768)
  p.add_argument("--heads", type=int, default=12)
  p.add_argument("--vocab", type=int, default=50257)
  p.add_argument("--seq_len", type=int, default=256)
  p.add_argument("--batch", type=int, default=4)
  p.add_argument("--warmup", type=int, default=2)
  p.add_argument("--steps", type=int, default=5)
  p.add_argument("--no_peer", action="store_true", help="time jaxllm only")
  p.add_argument("--out", default=os.path.join("runs", "bench", "lm_train_step.json"))
  args = p.parse_args()
  if args.d_model % args.heads:
    raise SystemExit(f"error: --d_model={args.d_model} must be divisible by --heads={args.heads}")

  tokens = np.random.default_rng(0).integers(0, args.vocab, (args.batch, args.seq_len + 1))
  n_tok = args.batch * args.seq_len
  jax_s, jax_params = bench_jax(args, tokens)
  if args.no_peer:
    torch_s, torch_params, torch_note = None, None, "--no_peer"
  else:
    torch_s, torch_params, torch_note = bench_torch(args, tokens)

  rows = [("jaxllm (JAX " + jax.__version__ + ")", jax_s, jax_params)]
  if torch_s is not None:
    rows.append((f"transformers GPT2LMHeadModel ({torch_note})", torch_s, torch_params))
  print(f"GPT-2-shaped train step: L={args.layers} d={args.d_model} H={args.heads} "
        f"V={args.vocab} T={args.seq_len} B={args.batch}, backend {jax.default_backend()}, "
        f"{os.cpu_count()} CPU threads")
  print(f"{'implementation':<55} {'params':>12} {'s/step':>9} {'tokens/s':>10}")
  for name, s, n in rows:
    print(f"{name:<55} {n:>12,d} {s:>9.3f} {n_tok / s:>10.1f}")
  result = {"shape": vars(args), "tokens_per_step": n_tok, "backend": jax.default_backend(),
            "jaxllm": {"seconds_per_step": jax_s, "tokens_per_second": n_tok / jax_s,
                       "params": jax_params}}
  if torch_s is not None:
    ratio = torch_s / jax_s
    print(f"ratio jaxllm / PyTorch tokens/s: {ratio:.2f}x")
    result["pytorch"] = {"seconds_per_step": torch_s, "tokens_per_second": n_tok / torch_s,
                         "params": torch_params, "version": torch_note}
    result["ratio_jaxllm_over_pytorch"] = ratio
  else:
    print(f"PyTorch peer skipped: {torch_note}")
  write_json(args.out, result)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
