"""CPU attention speed: every attention method and impl against the machine's matmul rate.

For each length T every row times one jitted forward (best of ``--repeats`` after a warm-up) and
reports seconds, the rate in GFLOP/s of the FLOPs the method's mask keeps (4 x D x H per visible
query-key pair: q k^T and p v; a causal dense row keeps T (T + 1) / 2 pairs, about the issue's
2 T^2 D H), the dense-equivalent rate (2 T^2 D H / seconds) and the time relative to
``dense``/``auto``. The matmul rate of a 2048^3 float32 product is measured in the same run, so
rows read as a fraction of what the machine can do. The reference paths are skipped above
``--reference_max_len`` (their [T, S] logits do not fit in memory at 32k).

  python scripts/benchmarks/bench_cpu_attention.py                      # T = 1k, 4k, 16k, 32k
  python scripts/benchmarks/bench_cpu_attention.py --lengths 1024 4096 --out runs/cpu_attn.json
"""

import argparse
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxllm.attention import METHODS, attention


def best_time(fn, *args, repeats: int) -> float:
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
  return min(times)


def matmul_gflops(repeats: int) -> float:
  a = jax.random.normal(jax.random.key(0), (2048, 2048), jnp.float32)
  f = jax.jit(lambda x: x @ x)
  return 2 * 2048 ** 3 / best_time(f, a, repeats=repeats) / 1e9


def band_pairs(t: int, band: int) -> int:
  b = min(band, t)
  return b * (b + 1) // 2 + (t - b) * b


def rows_for(t: int, args):
  """(label, method, impl, options, visible pairs or None, is a reference path)."""
  causal = t * (t + 1) // 2
  w = args.window
  rows = [
      ("dense", "dense", "auto", {}, causal, False),
      ("dense", "dense", "xla", {}, causal, True),
      ("jax.nn.dot_product_attention", None, "xla", {}, causal, False),
      ("sliding_window", "sliding_window", "auto", {"window": w}, band_pairs(t, w), False),
      ("dense window", "dense", "auto", {"window": w}, band_pairs(t, w), False),
      ("dense window", "dense", "xla", {"window": w}, band_pairs(t, w), True),
  ]
  for name in ("linear", "lightning", "retention"):
    if name in METHODS:
      rows.append((name, name, "auto", {}, None, False))
  return rows


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096, 16384, 32768])
  p.add_argument("--batch", type=int, default=1)
  p.add_argument("--heads", type=int, default=2)
  p.add_argument("--kv_heads", type=int, default=1)
  p.add_argument("--head_dim", type=int, default=64)
  p.add_argument("--window", type=int, default=1024)
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--reference_max_len", type=int, default=8192)
  p.add_argument("--out", default=os.path.join("runs", "bench_cpu_attention.json"))
  args = p.parse_args()
  for field in ("batch", "heads", "kv_heads", "head_dim", "window", "repeats"):
    if getattr(args, field) < 1:
      raise SystemExit(f"error: --{field} must be >= 1, got {getattr(args, field)}")
  if args.heads % args.kv_heads:
    raise SystemExit(f"error: --heads={args.heads} must be a multiple of --kv_heads")

  peak = matmul_gflops(args.repeats)
  print(f"backend {jax.default_backend()}, {os.cpu_count()} CPU threads; "
        f"matmul 2048^3 float32: {peak:.1f} GFLOP/s")
  b, h, hk, d = args.batch, args.heads, args.kv_heads, args.head_dim
  results = []
  for t in args.lengths:
    keys = jax.random.split(jax.random.key(t), 3)
    q = jax.random.normal(keys[0], (b, t, h, d), jnp.float32)
    k = jax.random.normal(keys[1], (b, t, hk, d), jnp.float32)
    v = jax.random.normal(keys[2], (b, t, hk, d), jnp.float32)
    base = None
    for label, method, impl, opts, pairs, is_ref in rows_for(t, args):
      row = dict(T=t, method=label, impl=impl, options=opts)
      if is_ref and t > args.reference_max_len:
        row["skipped"] = f"reference above T={args.reference_max_len}"
        results.append(row)
        continue
      if method is None:
        fn = jax.jit(lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=True))
      else:
        fn = jax.jit(lambda q, k, v, m=method, i=impl, o=opts: attention(
            q, k, v, method=m, impl=i, causal=True, **o))
      secs = best_time(fn, q, k, v, repeats=args.repeats)
      row["seconds"] = secs
      row["dense_equivalent_gflops"] = 2 * t * t * d * h * b / secs / 1e9
      if pairs is not None:
        row["gflops"] = 4 * d * h * b * pairs / secs / 1e9
        row["share_of_matmul"] = row["gflops"] / peak
      if method == "dense" and impl == "auto" and not opts:
        base = secs
      row["time_vs_dense_auto"] = secs / base if base else None
      results.append(row)
      print(f"T={t:6d} {label:30s} {impl:5s} {secs:9.4f}s "
            f"{row.get('gflops', float('nan')):8.1f} GFLOP/s "
            f"({row.get('share_of_matmul', float('nan')):.0%} of matmul) "
            f"x{row['time_vs_dense_auto']:.2f} of dense/auto", flush=True)

  print("\n| T | method | impl | seconds | GFLOP/s | share of matmul | time / dense auto |")
  print("|---|---|---|---|---|---|---|")
  for r in results:
    if "skipped" in r:
      print(f"| {r['T']} | {r['method']} | {r['impl']} | skipped | | | |")
      continue
    g = r.get("gflops")
    print(f"| {r['T']} | {r['method']} | {r['impl']} | {r['seconds']:.4f} | "
          f"{'' if g is None else f'{g:.1f}'} | "
          f"{'' if g is None else f'{r['share_of_matmul']:.0%}'} | "
          f"{r['time_vs_dense_auto']:.2f} |")
  os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
  tmp = args.out + ".tmp"
  with open(tmp, "w") as f:
    json.dump(dict(matmul_gflops=peak, backend=jax.default_backend(), cpu_threads=os.cpu_count(),
                   config=vars(args), rows=results), f, indent=1)
  os.replace(tmp, args.out)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
