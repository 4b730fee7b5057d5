"""Sparse decode (selected KV blocks, split-K) vs dense decode over the whole cache.

  pip install -e .   # once, so the script can import jaxllm and pallas_kernels
  python scripts/benchmarks/bench_sparse_decode.py [--lengths 4096,16384,65536] [--budget 16]
      [--interpret] [--out runs/bench_sparse_decode.json]

One new token per sequence against a cache of S tokens. ``dense`` attends to the whole cache
(``dense.reference``, XLA); ``masked`` is the sparse-decode reference (the selection as a dense
position mask, XLA, so it costs as much as dense); ``kernel`` is the Pallas split-K kernel reading
only the ``--budget`` selected blocks (the Triton-style kernel on GPU, the Mosaic one on TPU).
Times are medians of ``--repeats`` calls after a warm-up. On CPU the kernel only runs with
``--interpret`` and its time then measures the interpreter, not the kernel: compare kernel times
only on a GPU or TPU.
"""

import argparse
import functools
import json
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxllm.attention.methods import dense
from pallas_kernels.sparse_decode import api, reference


def _time(fn, *args, repeats):
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def _case(s, args, rng):
  """Random cache, queries and a random ``budget``-block selection per (sequence, kv head)."""
  b, h, hkv, d, block_k = args.batch, args.heads, args.kv_heads, args.dim, args.block_k
  dtype = jnp.dtype(args.dtype)
  q = jnp.asarray(rng.normal(size=(b, h, d)), dtype)
  k, v = (jnp.asarray(rng.normal(size=(b, s, hkv, d)), dtype) for _ in range(2))
  nk = s // block_k
  budget = min(args.budget, nk)
  idx = np.sort(np.stack([rng.choice(nk, budget, replace=False) for _ in range(b * hkv)]), -1)
  kv_idx = jnp.asarray(idx.reshape(b, hkv, budget), jnp.int32)
  kv_cnt = jnp.full((b, hkv), budget, jnp.int32)
  lengths = jnp.full((b,), s, jnp.int32)
  return q, k, v, kv_idx, kv_cnt, lengths


def rows_for(args):
  backend = jax.default_backend()
  accelerated = backend in ("gpu", "tpu")
  run_kernel = accelerated or args.interpret
  rng = np.random.default_rng(0)
  rows = []
  for s in args.lengths:
    q, k, v, kv_idx, kv_cnt, lengths = _case(s, args, rng)
    fns = {
        "dense": jax.jit(lambda q, k, v, *_: dense.reference(q[:, None], k, v, causal=True)[:, 0]),
        "masked": jax.jit(functools.partial(reference.sparse_decode, block_k=args.block_k)),
    }
    if run_kernel:
      fns["kernel"] = jax.jit(functools.partial(
          api.sparse_decode, block_k=args.block_k, num_splits=args.num_splits, impl="pallas"))
    times = {name: _time(fn, q, k, v, kv_idx, kv_cnt, lengths, repeats=args.repeats)
             for name, fn in fns.items()}
    for name, sec in times.items():
      rows.append(dict(S=s, method=name, seconds=sec, vs_dense=sec / times["dense"],
                       interpreted=name == "kernel" and not accelerated))
      print(f"S={s:7d}  {name:7s} {sec * 1e3:10.3f} ms   x{sec / times['dense']:.3f} of dense")
  return rows


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--lengths", default="4096,16384,65536",
                      type=lambda x: [int(v) for v in x.split(",")])
  parser.add_argument("--batch", type=int, default=4)
  parser.add_argument("--heads", type=int, default=32)
  parser.add_argument("--kv_heads", type=int, default=8)
  parser.add_argument("--dim", type=int, default=128)
  parser.add_argument("--block_k", type=int, default=None,
                      help="cache block size; default 128 on TPU (lane width), 64 elsewhere")
  parser.add_argument("--budget", type=int, default=16, help="selected blocks per kv head")
  parser.add_argument("--num_splits", type=int, default=4)
  parser.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
  parser.add_argument("--repeats", type=int, default=10)
  parser.add_argument("--interpret", action="store_true",
                      help="on CPU, also run the kernel in the Pallas interpreter")
  parser.add_argument("--out", default="runs/bench_sparse_decode.json")
  args = parser.parse_args()
  if args.block_k is None:
    args.block_k = 128 if jax.default_backend() == "tpu" else 64
  rows = rows_for(args)
  os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
  meta = dict(vars(args), backend=jax.default_backend(), device=str(jax.devices()[0]),
              host=platform.node(), jax=jax.__version__)
  with open(args.out, "w") as f:
    json.dump(dict(meta=meta, rows=rows), f, indent=1)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
