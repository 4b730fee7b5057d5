"""CPU benchmark: the ``xla`` block-sparse path vs dense attention, wall time next to FLOPs.

Dense is the same gather path run with the full causal table (flash-style, O(T * block) memory);
at the shortest length the materialised dense reference is timed too. Sparse tables keep, per
query block, the diagonal block plus top-scoring random visible blocks, one budget for all query
blocks sized to ``density`` of the causal blocks. Ratios are measured in one run, so a shared
machine's load cancels out.

  python scripts/benchmarks/bench_block_sparse_cpu.py --out runs/bench_block_sparse_cpu.json
"""

import argparse
import json
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp

from jaxllm.attention.methods import dense
from jaxllm.attention.sparse import patterns
from pallas_kernels.block_sparse import api, masks


def _time(fn, *args, repeats):
  jax.block_until_ready(fn(*args))  # compile + warm-up
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def _sparse_table(key, t, density, block, heads):
  """About ``density`` of the causal blocks: the same top-k budget for every query block."""
  nq = nk = masks.num_blocks(t, block)
  k = max(1, round(density * (nk + 1) / 2))
  scores = jax.random.uniform(key, (1, heads, nq, nk))
  scores = jnp.where(jnp.eye(nq, nk, dtype=bool), jnp.inf, scores)  # always keep the diagonal
  return patterns.topk_table(scores, k, seq_q=t, seq_k=t, block_q=block, block_k=block)


def _flops(table, head_dim):
  """Forward FLOPs of the listed blocks (QK^T and PV, 2 each per multiply-add).

  The gather path pads every query block to the table width, so it executes
  ``nq * max_blocks`` block products: ``slot_ratio`` in the output.
  """
  return 4.0 * head_dim * table.block_q * table.block_k * float(jnp.sum(table.kv_cnt))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--lengths", type=int, nargs="+", default=[4096, 16384, 32768])
  parser.add_argument("--densities", type=float, nargs="+", default=[0.05, 0.10, 0.25])
  parser.add_argument("--heads", type=int, default=2)
  parser.add_argument("--kv_heads", type=int, default=1)
  parser.add_argument("--head_dim", type=int, default=64)
  parser.add_argument("--block", type=int, default=128)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--reference_max_len", type=int, default=4096,
                      help="also time the materialised dense reference up to this length")
  parser.add_argument("--out", default="runs/bench_block_sparse_cpu.json")
  args = parser.parse_args()

  rows = []
  for t in args.lengths:
    kq, kk, kv, kt = jax.random.split(jax.random.key(t), 4)
    q = jax.random.normal(kq, (1, t, args.heads, args.head_dim), jnp.float32)
    k = jax.random.normal(kk, (1, t, args.kv_heads, args.head_dim), jnp.float32)
    v = jax.random.normal(kv, (1, t, args.kv_heads, args.head_dim), jnp.float32)
    run = jax.jit(lambda q, k, v, table: api.block_sparse_attention(q, k, v, table, impl="xla"))
    full = patterns.causal_table(t, t, block_q=args.block, block_k=args.block, heads=args.heads)
    dense_s = _time(run, q, k, v, full, repeats=args.repeats)
    dense_flops = _flops(full, args.head_dim)
    ref_s = None
    if t <= args.reference_max_len:
      ref_s = _time(jax.jit(lambda q, k, v: dense.reference(q, k, v, causal=True)), q, k, v,
                    repeats=args.repeats)
    rows.append(dict(seq_len=t, density=1.0, seconds=dense_s, time_ratio=1.0, flop_ratio=1.0,
                     slot_ratio=1.0, reference_seconds=ref_s))
    print(f"T={t:6d} dense(causal table) {dense_s:8.3f}s"
          + ("" if ref_s is None else f"   materialised reference {ref_s:8.3f}s"), flush=True)
    for density in args.densities:
      table = _sparse_table(kt, t, density, args.block, args.heads)
      seconds = _time(run, q, k, v, table, repeats=args.repeats)
      flop_ratio = _flops(table, args.head_dim) / dense_flops
      rows.append(dict(seq_len=t, density=density, seconds=seconds,
                       time_ratio=seconds / dense_s, flop_ratio=flop_ratio,
                       slot_ratio=table.max_blocks / full.max_blocks, reference_seconds=None))
      print(f"T={t:6d} density {density:4.0%}  {seconds:8.3f}s  time ratio "
            f"{seconds / dense_s:6.3f}  FLOP ratio {flop_ratio:6.3f}", flush=True)

  print("\n| T | density | time (s) | time / dense | FLOPs / dense | slots / dense |")
  print("|---|---|---|---|---|---|")
  for r in rows:
    print(f"| {r['seq_len']} | {r['density']:.0%} | {r['seconds']:.3f} | {r['time_ratio']:.3f} "
          f"| {r['flop_ratio']:.3f} | {r['slot_ratio']:.3f} |")
  result = dict(machine=f"{os.cpu_count()}-core CPU ({platform.processor() or platform.machine()})",
                backend=jax.default_backend(), config=vars(args), rows=rows)
  os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(result, f, indent=2)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
