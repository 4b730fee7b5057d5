"""The deployment cost model (``jaxllm.inference.cost_model``) against jaxllm measured on this CPU.

  python scripts/benchmarks/bench_cost_model.py [--contexts 512,2048] [--decode-contexts 512,8192]
      [--layers 4] [--width 256] [--out runs/bench_cost_model.json] [--notes FILE]

The CPU is described to the cost model as ``custom`` hardware from two measurements made first in
the same run: ``peak_flops`` = the float32 rate of a jitted square matmul (``--matmul`` wide), and
``hbm_bandwidth`` = the read rate of a jitted sum over a ``--stream-mib`` MiB array. A
random-weight Llama-style decoder (float32, so 4 bytes per element) is then timed:

* prefill: ``decode.prefill`` of one prompt at each of ``--contexts`` (the fastest of
  ``--repeats``, compile excluded);
* decode: ``decode.decode_step`` per token with a full cache holding each of
  ``--decode-contexts`` tokens (the fastest mean over ``--steps`` steps).

For each pair of lengths the table shows the predicted ratio (long over short: prefill FLOPs,
decode bytes read) next to the measured one, and the predicted and measured seconds. Ratios from
one run are the comparison that survives a loaded machine; absolute seconds do not.
"""

import argparse
import os
import platform
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxllm.inference import cost_model as cm
from jaxllm.inference import decode
from jaxllm.inference.policies import Policy
from jaxllm.models.transformer import build
from jaxllm.results import write_json, write_text


def _best(fn, repeats):
  jax.block_until_ready(fn())  # compile
  best = float("inf")
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    best = min(best, time.perf_counter() - t0)
  return best


def measure_cpu(matmul: int, stream_mib: int, repeats: int) -> dict:
  """Float32 matmul FLOP/s and streaming read bytes/s of this machine, measured."""
  a = jax.random.normal(jax.random.key(0), (matmul, matmul), jnp.float32)
  mm = jax.jit(lambda x: x @ x)
  flops = 2 * matmul ** 3 / _best(lambda: mm(a), repeats)
  x = jnp.ones((stream_mib * 2 ** 20 // 4,), jnp.float32)
  total = jax.jit(jnp.sum)
  bandwidth = x.nbytes / _best(lambda: total(x), repeats)
  return dict(matmul_flops=flops, read_bandwidth=bandwidth)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--contexts", default="512,2048", help="prefill lengths (comma-separated)")
  p.add_argument("--decode-contexts", default="512,8192", help="cached tokens while decoding")
  p.add_argument("--layers", type=int, default=4)
  p.add_argument("--width", type=int, default=256)
  p.add_argument("--heads", type=int, default=8)
  p.add_argument("--kv-heads", type=int, default=2)
  p.add_argument("--vocab", type=int, default=4096)
  p.add_argument("--matmul", type=int, default=1024)
  p.add_argument("--stream-mib", type=int, default=256)
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--steps", type=int, default=16)
  p.add_argument("--out", default="runs/bench_cost_model.json")
  p.add_argument("--notes", default=None, help="also write the markdown table here")
  args = p.parse_args(argv)
  try:
    contexts = [int(c) for c in args.contexts.split(",")]
    decode_contexts = [int(c) for c in args.decode_contexts.split(",")]
  except ValueError:
    print("error: --contexts and --decode-contexts must be comma-separated ints", file=sys.stderr)
    return 2
  if len(contexts) < 2 or len(decode_contexts) < 2 or min(contexts + decode_contexts) < 2:
    print("error: --contexts and --decode-contexts need at least two lengths >= 2",
          file=sys.stderr)
    return 2

  cpu = measure_cpu(args.matmul, args.stream_mib, args.repeats)
  hw = cm.Hardware("custom", peak_flops=cpu["matmul_flops"], hbm_bytes=64 * cm.GiB,
                   hbm_bandwidth=cpu["read_bandwidth"], pcie_bandwidth=cpu["read_bandwidth"])
  mcfg = dict(style="llama", vocab_size=args.vocab, d_model=args.width, num_layers=args.layers,
              num_heads=args.heads, num_kv_heads=args.kv_heads,
              max_len=max(contexts + decode_contexts) + 1)
  model = build(mcfg, rngs=nnx.Rngs(0))
  spec = cm.spec_from_model_config(model.cfg, bytes_per_element=4)
  graphdef, state = nnx.split(model)

  rows = []
  for c in contexts:
    prompt = jax.random.randint(jax.random.key(c), (1, c), 0, args.vocab)
    first = jax.jit(lambda s, t: decode.prefill(nnx.merge(graphdef, s), t, Policy(), 1))
    measured = _best(lambda: first(state, prompt), args.repeats)
    rows.append(dict(phase="prefill", context=c, measured_seconds=measured,
                     predicted_seconds=cm.estimate(spec, hw, c)["prefill_seconds"]))
  for c in decode_contexts:
    prompt = jax.random.randint(jax.random.key(c), (1, c), 0, args.vocab)
    first = jax.jit(lambda s, t: decode.prefill(nnx.merge(graphdef, s), t, Policy(),
                                                args.steps + 1))
    step = jax.jit(lambda s, cache, t: decode.decode_step(nnx.merge(graphdef, s), cache, t)[:2])
    _, cache = jax.block_until_ready(first(state, prompt))
    tok = jnp.zeros((1,), jnp.int32)
    jax.block_until_ready(step(state, cache, tok))  # compile

    def run_steps(cache=cache):
      for _ in range(args.steps):
        logits, cache = step(state, cache, tok)
      return logits

    measured = _best(run_steps, args.repeats) / args.steps
    rows.append(dict(phase="decode", context=c, measured_seconds=measured,
                     predicted_seconds=cm.estimate(spec, hw, c)["decode_seconds_per_step"]))

  ratios = []
  for phase in ("prefill", "decode"):
    r = [x for x in rows if x["phase"] == phase]
    for short, long in zip(r[:-1], r[1:]):
      ratios.append(dict(phase=phase, short=short["context"], long=long["context"],
                         predicted_ratio=long["predicted_seconds"] / short["predicted_seconds"],
                         measured_ratio=long["measured_seconds"] / short["measured_seconds"]))
  lines = [
      f"CPU constants (measured in this run): matmul {cpu['matmul_flops'] / 1e9:.1f} GFLOP/s "
      f"float32 ({args.matmul}^3), read bandwidth {cpu['read_bandwidth'] / 1e9:.2f} GB/s "
      f"({args.stream_mib} MiB sum). Model: {args.layers} layers, width {args.width}, "
      f"{args.heads} query / {args.kv_heads} kv heads, vocab {args.vocab}, "
      f"{spec.params / 1e6:.2f} M params, float32.", "",
      "| phase | contexts | predicted ratio | measured ratio | predicted s (short, long) | "
      "measured s (short, long) |", "| --- | --- | --- | --- | --- | --- |"]
  for q in ratios:
    s, l = (next(x for x in rows if x["phase"] == q["phase"] and x["context"] == c)
            for c in (q["short"], q["long"]))
    lines.append(f"| {q['phase']} | {q['short']} -> {q['long']} | {q['predicted_ratio']:.2f} | "
                 f"{q['measured_ratio']:.2f} | {s['predicted_seconds']:.3g}, "
                 f"{l['predicted_seconds']:.3g} | {s['measured_seconds']:.3g}, "
                 f"{l['measured_seconds']:.3g} |")
  table = "\n".join(lines)
  print(table)
  write_json(args.out, dict(cpu=cpu, hardware=hw.__dict__, model=spec.__dict__, rows=rows,
                            ratios=ratios, machine=platform.processor() or platform.machine(),
                            cores=os.cpu_count()))
  if args.notes:
    write_text(args.notes, table + "\n")
  return 0


if __name__ == "__main__":
  sys.exit(main())
