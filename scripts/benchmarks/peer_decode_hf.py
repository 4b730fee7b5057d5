"""Peer side of ``bench_decode.py --peer-python``: transformers' cached greedy decoding (torch CPU).

  PEER_PYTHON scripts/benchmarks/peer_decode_hf.py --model HF_DIR --prompt-file P.npy --new N

Loads the Hugging Face checkpoint with ``AutoModelForCausalLM`` (float32, transformers' default
attention implementation), reads the prompt
token ids [B, T] from ``--prompt-file``, then times, as ``bench_decode`` does for jaxllm, one
prefill forward and ``N - 1`` single-token forwards through transformers' ``DynamicCache`` (after
an untimed warm-up run; the fastest of ``--repeats`` timed runs). Prints one JSON object: tokens, prefill seconds, decode tokens/s, the
KV-cache MiB held at the end, and the library versions.
"""

import argparse
import json
import os
import time

import numpy as np
import torch
import transformers


def _run(model, prompt, new):
  cache = transformers.DynamicCache(config=model.config)
  t0 = time.perf_counter()
  out = model(prompt, cache=cache, use_cache=True)
  tok = out.logits[:, -1].argmax(-1)
  prefill_s = time.perf_counter() - t0
  tokens = [tok]
  t0 = time.perf_counter()
  for _ in range(new - 1):
    out = model(tokens[-1][:, None], cache=cache, use_cache=True)
    tokens.append(out.logits[:, -1].argmax(-1))
  decode_s = time.perf_counter() - t0
  cache_bytes = sum(layer.keys.nbytes + layer.values.nbytes for layer in cache.layers)
  return torch.stack(tokens, 1), prefill_s, decode_s, cache_bytes


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--model", required=True)
  p.add_argument("--prompt-file", required=True)
  p.add_argument("--new", type=int, required=True)
  p.add_argument("--repeats", type=int, default=1, help="timed runs, the fastest kept")
  p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                 help="torch intra-op threads (default: the CPUs this process may use, so that "
                 "torch does not oversubscribe a pinned or shared machine)")
  args = p.parse_args()
  torch.set_num_threads(args.threads)
  model = transformers.AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
  prompt = torch.as_tensor(np.load(args.prompt_file).astype(np.int64))
  with torch.inference_mode():
    _run(model, prompt, args.new)  # warm-up
    runs = [_run(model, prompt, args.new) for _ in range(args.repeats)]
  tokens, _, _, cache_bytes = runs[0]
  prefill_s = min(r[1] for r in runs)
  decode_s = min(r[2] for r in runs)
  print(json.dumps({
      "tokens": tokens.tolist(), "prefill_s": prefill_s,
      "decode_tokens_per_s": prompt.shape[0] * (args.new - 1) / decode_s,
      "cache_mib": cache_bytes / 2**20, "torch": torch.__version__,
      "transformers": transformers.__version__, "threads": torch.get_num_threads(),
      "attention": model.config._attn_implementation}))  # pylint: disable=protected-access


if __name__ == "__main__":
  main()
