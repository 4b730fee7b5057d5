"""GPU benchmark: the Pallas block-sparse kernel as dense flash vs tokamax and cuDNN, and its
speedup against density.

Dense rows time forward and forward+backward of causal attention and report TFLOP/s (causal
forward = 2 * B * H * T^2 * D FLOPs, backward counted as 2.5x forward, the FlashAttention
convention). Sparse rows run the same kernel on tables that keep, per query block, the diagonal
block plus random blocks up to ``density`` of the causal blocks, and report the speedup over the
kernel's own full causal table (their TFLOP/s count whole listed tiles). Every implementation
that fails (e.g. cuDNN on an unsupported GPU) is recorded with its error instead of stopping the
run.

  python scripts/benchmarks/bench_block_sparse_gpu.py --out runs/bench_block_sparse_gpu.json
  python scripts/benchmarks/bench_block_sparse_gpu.py --smoke   # tiny shapes, interpret, any host
"""

import argparse
import json
import os
import statistics
import time

import jax
import jax.numpy as jnp

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


def _fwd_and_train(attn):
  """Jitted forward and forward+backward (grads of q, k, v) of ``attn(q, k, v)``."""
  fwd = jax.jit(attn)
  loss = lambda q, k, v: jnp.sum(attn(q, k, v).astype(jnp.float32))
  train = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))
  return fwd, train


def _measure(name, attn, q, k, v, fwd_flops, repeats, extra):
  row = dict(impl=name, **extra)
  try:
    fwd, train = _fwd_and_train(attn)
    row["fwd_s"] = _time(fwd, q, k, v, repeats=repeats)
    row["fwd_bwd_s"] = _time(train, q, k, v, repeats=repeats)
    row["fwd_tflops"] = fwd_flops / row["fwd_s"] / 1e12
    row["fwd_bwd_tflops"] = 3.5 * fwd_flops / row["fwd_bwd_s"] / 1e12
  except Exception as e:  # pylint: disable=broad-except
    row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
  return row


def _inputs(t, args, dtype):
  kq, kk, kv = jax.random.split(jax.random.key(t), 3)
  q = jax.random.normal(kq, (args.batch, t, args.heads, args.head_dim), dtype)
  k = jax.random.normal(kk, (args.batch, t, args.kv_heads, args.head_dim), dtype)
  v = jax.random.normal(kv, (args.batch, t, args.kv_heads, args.head_dim), dtype)
  return q, k, v


def _sparse_table(t, density, args):
  nq = masks.num_blocks(t, args.block_q)
  nk = masks.num_blocks(t, args.block_k)
  k = max(1, min(nk, round(density * (nk + 1) / 2)))
  scores = jax.random.uniform(jax.random.key(0), (1, args.heads, nq, nk))
  diag = (jnp.arange(nq)[:, None] * args.block_q + args.block_q - 1) // args.block_k
  scores = jnp.where(jnp.arange(nk)[None, :] == diag, jnp.inf, scores)  # keep the diagonal
  return patterns.topk_table(scores, k, seq_q=t, seq_k=t, block_q=args.block_q,
                          block_k=args.block_k)


def _block_flops(table, args):
  """Forward FLOPs of the listed blocks (whole tiles, so the diagonal counts in full)."""
  per_block = 4.0 * args.head_dim * table.block_q * table.block_k
  return per_block * args.batch * float(jnp.sum(table.kv_cnt))


def _kernel(table, interpret):
  return lambda q, k, v: api.block_sparse_attention(q, k, v, table, impl="pallas",
                                                    interpret=True if interpret else None)


def dense_rows(args, dtype):
  import tokamax  # pylint: disable=g-import-not-at-top
  rows = []
  for t in args.dense_lengths:
    q, k, v = _inputs(t, args, dtype)
    flops = 2.0 * args.batch * args.heads * t * t * args.head_dim  # causal: half of 4 B H T^2 D
    table = patterns.causal_table(t, t, block_q=args.block_q, block_k=args.block_k)
    impls = {
        "pallas_block_sparse": _kernel(table, args.smoke),
        "tokamax": lambda q, k, v: tokamax.dot_product_attention(q, k, v, is_causal=True),
        "cudnn": lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=True,
                                                              implementation="cudnn"),
    }
    for name, attn in impls.items():
      row = _measure(name, attn, q, k, v, flops, args.repeats, dict(kind="dense", seq_len=t))
      rows.append(row)
      print(json.dumps(row), flush=True)
  return rows


def sparse_rows(args, dtype):
  rows = []
  for t in args.sparse_lengths:
    q, k, v = _inputs(t, args, dtype)
    full = patterns.causal_table(t, t, block_q=args.block_q, block_k=args.block_k,
                              heads=args.heads)
    full_blocks = float(jnp.sum(full.kv_cnt))
    base = _measure("pallas_block_sparse", _kernel(full, args.smoke), q, k, v,
                    _block_flops(full, args), args.repeats,
                    dict(kind="sparse", seq_len=t, density=1.0, block_ratio=1.0))
    rows.append(base)
    print(json.dumps(base), flush=True)
    for density in args.densities:
      table = _sparse_table(t, density, args)
      ratio = float(jnp.sum(table.kv_cnt)) / full_blocks
      row = _measure("pallas_block_sparse", _kernel(table, args.smoke), q, k, v,
                     _block_flops(table, args), args.repeats,
                     dict(kind="sparse", seq_len=t, density=density, block_ratio=ratio))
      for key in ("fwd_s", "fwd_bwd_s"):
        if key in row and key in base:
          row[key.replace("_s", "_speedup")] = base[key] / row[key]
      rows.append(row)
      print(json.dumps(row), flush=True)
  return rows


def _table(rows):
  lines = ["| kind | T | impl | density | fwd ms | fwd+bwd ms | fwd TFLOP/s | fwd+bwd TFLOP/s "
           "| fwd speedup | fwd+bwd speedup | blocks / causal |", "|" + "---|" * 11]
  fmt = lambda r, key, scale=1.0, spec=".2f": (
      format(r[key] * scale, spec) if key in r else ("error" if "error" in r else "-"))
  for r in rows:
    lines.append(
        f"| {r['kind']} | {r['seq_len']} | {r['impl']} | {r.get('density', 1.0):.0%} | "
        f"{fmt(r, 'fwd_s', 1e3)} | {fmt(r, 'fwd_bwd_s', 1e3)} | {fmt(r, 'fwd_tflops')} | "
        f"{fmt(r, 'fwd_bwd_tflops')} | {fmt(r, 'fwd_speedup')} | {fmt(r, 'fwd_bwd_speedup')} | "
        f"{fmt(r, 'block_ratio', 1.0, '.3f')} |")
  return "\n".join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--dense_lengths", type=int, nargs="+", default=[4096, 8192, 16384])
  parser.add_argument("--sparse_lengths", type=int, nargs="+", default=[16384, 65536])
  parser.add_argument("--densities", type=float, nargs="+", default=[0.05, 0.10, 0.25, 0.5])
  parser.add_argument("--batch", type=int, default=1)
  parser.add_argument("--heads", type=int, default=16)
  parser.add_argument("--kv_heads", type=int, default=16)
  parser.add_argument("--head_dim", type=int, default=128)
  parser.add_argument("--block_q", type=int, default=128)
  parser.add_argument("--block_k", type=int, default=64)
  parser.add_argument("--dtype", choices=["bfloat16", "float16", "float32"], default="bfloat16")
  parser.add_argument("--repeats", type=int, default=10)
  parser.add_argument("--smoke", action="store_true",
                      help="tiny shapes with the kernel interpreted: checks the script anywhere")
  parser.add_argument("--out", default="runs/bench_block_sparse_gpu.json")
  args = parser.parse_args()
  if args.smoke:
    args.dense_lengths, args.sparse_lengths, args.densities = [256], [256], [0.25]
    args.heads, args.kv_heads, args.head_dim, args.repeats = 2, 1, 32, 1
    args.block_q = args.block_k = 32
    args.dtype = "float32"
  elif jax.default_backend() != "gpu":
    raise SystemExit(f"bench_block_sparse_gpu: needs a GPU (backend is "
                     f"{jax.default_backend()!r}); use --smoke to check the script elsewhere")
  dtype = jnp.dtype(args.dtype)
  rows = dense_rows(args, dtype) + sparse_rows(args, dtype)
  print(_table(rows))
  device = jax.devices()[0]
  result = dict(device=getattr(device, "device_kind", str(device)), backend=jax.default_backend(),
                config=vars(args), rows=rows)
  os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(result, f, indent=2)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
