"""Peer side of ``bench_lm_train_step.py --peer-python``: ``transformers.GPT2LMHeadModel``
train steps on torch's CPU build, driven over stdin so both sides can alternate in one run.

  PEER_PYTHON scripts/benchmarks/peer_lm_train_step_torch.py --tokens-file TOK.npy --layers 12 ...

Builds the model (tied embeddings, no dropout, float32) and ``torch.optim.AdamW`` with the
benchmark's hyper-parameters, reads the token ids [B, T + 1] from ``--tokens-file`` and prints
one JSON line ``{"ready": ...}`` (parameter count, versions, threads). Then every input line
``N`` runs N train steps and prints ``{"seconds": [...], "cpu_seconds": [...]}``, the wall time
and the process CPU time (user + system, all threads) of each step; an empty line or end of input
stops it.
"""

import argparse
import json
import os
import resource
import sys
import time

import numpy as np
import torch
import transformers


def _cpu_seconds():
  r = resource.getrusage(resource.RUSAGE_SELF)
  return r.ru_utime + r.ru_stime


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--tokens-file", required=True)
  p.add_argument("--layers", type=int, required=True)
  p.add_argument("--d_model", type=int, required=True)
  p.add_argument("--heads", type=int, required=True)
  p.add_argument("--vocab", type=int, required=True)
  p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                 help="torch intra-op threads (default: the CPUs this process may use)")
  args = p.parse_args()
  torch.manual_seed(0)
  torch.set_num_threads(args.threads)
  tok = torch.as_tensor(np.load(args.tokens_file).astype(np.int64))
  cfg = transformers.GPT2Config(
      vocab_size=args.vocab, n_positions=tok.shape[1] - 1, n_embd=args.d_model,
      n_layer=args.layers, n_head=args.heads, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
  model = transformers.GPT2LMHeadModel(cfg)
  model.train()
  # the benchmark's AdamW (jaxllm side: optax.adamw with the same numbers)
  opt = torch.optim.AdamW(model.parameters(), lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1)

  def step():
    opt.zero_grad(set_to_none=True)
    logits = model(input_ids=tok[:, :-1]).logits
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, args.vocab), tok[:, 1:].reshape(-1))
    loss.backward()
    opt.step()

  print(json.dumps({
      "ready": True, "params": sum(p.numel() for p in model.parameters()),
      "torch": torch.__version__, "transformers": transformers.__version__,
      "threads": torch.get_num_threads(),
      "attention": model.config._attn_implementation}), flush=True)  # pylint: disable=protected-access
  for line in sys.stdin:
    if not line.strip():
      break
    seconds, cpu = [], []
    for _ in range(int(line)):
      c0, t0 = _cpu_seconds(), time.perf_counter()
      step()
      seconds.append(time.perf_counter() - t0)
      cpu.append(_cpu_seconds() - c0)
    print(json.dumps({"seconds": seconds, "cpu_seconds": cpu}), flush=True)


if __name__ == "__main__":
  main()
