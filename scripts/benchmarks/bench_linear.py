"""Chunked linear / lightning attention vs dense softmax: time and memory over T; decode step time.

  python scripts/benchmarks/bench_linear.py [--lengths 1024,4096,16384,32768] [--out runs/...]

Prefill: one forward call per (method, T), B=1, H heads of dim D, timed as the median of
``--repeats`` runs of the compiled function (dense at T >= 16k: a single run); memory is XLA's compiled footprint
(arguments + outputs + temporaries) from ``memory_analysis``. Decode: one new token against a
context of T tokens: dense attends over a T-long KV cache, the linear methods update their
[B, H, D, D] state (``jaxllm.attention.linear.step``), whose cost does not depend on T; decode
reports the minimum (and median) of ``--decode-repeats`` steps.
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

from jaxllm.attention import attention
from jaxllm.attention import linear

PREFILL = {
    "dense": dict(method="dense"),
    "linear": dict(method="linear", form="chunked", chunk_size=64),
    "lightning": dict(method="lightning", form="chunked", chunk_size=64, num_layers=2),
}


def _times(fn, *args, repeats):
  """Seconds of each of ``repeats`` calls of an already compiled ``fn``."""
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
  return times


def _time(fn, *args, repeats):
  return statistics.median(_times(fn, *args, repeats=repeats))


def _decode_row(method, t, fn, *args, repeats):
  # Microsecond steps on a shared machine: the minimum is the stable figure, the median is noisy.
  times = _times(fn, *args, repeats=repeats)
  return dict(kind="decode", method=method, T=t, seconds=min(times),
              median_seconds=statistics.median(times))


def _compile(fn, *args):
  """(compiled fn, MiB of arguments + outputs + temporaries as XLA plans them)."""
  compiled = jax.jit(fn).lower(*args).compile()
  mem = compiled.memory_analysis()
  mib = float("nan") if mem is None else (
      mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes) / 2**20
  return compiled, mib


def prefill_rows(lengths, heads, dim, repeats):
  rows = []
  rng = np.random.default_rng(0)
  for t in lengths:
    q, k, v = (jnp.asarray(rng.normal(size=(1, t, heads, dim)), jnp.float32) for _ in range(3))
    for name, kw in PREFILL.items():
      fn, mib = _compile(functools.partial(attention, impl="xla", **kw), q, k, v)
      # Dense at long T runs once: one call is minutes on a small CPU.
      n = 1 if name == "dense" and t >= 16384 else repeats
      rows.append(dict(kind="prefill", method=name, T=t, seconds=_time(fn, q, k, v, repeats=n),
                       mib=mib))
      print(f"prefill {name:9s} T={t:6d}  {rows[-1]['seconds'] * 1e3:10.2f} ms  "
            f"{rows[-1]['mib']:10.1f} MiB", flush=True)
  return rows


def decode_rows(lengths, heads, dim, repeats):
  rows = []
  rng = np.random.default_rng(1)
  q1, k1, v1 = (jnp.asarray(rng.normal(size=(1, heads, dim)), jnp.float32) for _ in range(3))
  dense = functools.partial(attention, method="dense", impl="xla")
  for t in lengths:
    k, v = (jnp.asarray(rng.normal(size=(1, t, heads, dim)), jnp.float32) for _ in range(2))
    fn, _ = _compile(dense, q1[:, None], k, v)
    rows.append(_decode_row("dense", t, fn, q1[:, None], k, v, repeats=repeats))
    for method, opts in (("linear", {}), ("lightning", {"num_layers": 2})):
      _, state = linear.prefill(method, k, k, v, impl="xla", **opts)
      fn, _ = _compile(linear.step, state, q1, k1, v1)
      rows.append(_decode_row(method, t, fn, state, q1, k1, v1, repeats=repeats))
    for r in rows[-3:]:
      print(f"decode  {r['method']:9s} T={t:6d}  min {r['seconds'] * 1e6:10.1f} us  median "
            f"{r['median_seconds'] * 1e6:10.1f} us", flush=True)
  return rows


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--lengths", default="1024,4096,16384,32768")
  parser.add_argument("--heads", type=int, default=1)
  parser.add_argument("--dim", type=int, default=64)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--decode-repeats", type=int, default=200)
  parser.add_argument("--skip-prefill", action="store_true", help="decode table only")
  parser.add_argument("--out", default="runs/bench_linear.json")
  args = parser.parse_args()
  lengths = [int(x) for x in args.lengths.split(",")]
  rows = [] if args.skip_prefill else prefill_rows(lengths, args.heads, args.dim, args.repeats)
  rows += decode_rows(lengths, args.heads, args.dim, args.decode_repeats)
  by = {(r["kind"], r["method"], r["T"]): r["seconds"] for r in rows}
  print("\nT        dense/lightning  dense/linear   (prefill time ratios)")
  for t in [] if args.skip_prefill else lengths:
    print(f"{t:6d}   {by[('prefill', 'dense', t)] / by[('prefill', 'lightning', t)]:14.1f}"
          f"   {by[('prefill', 'dense', t)] / by[('prefill', 'linear', t)]:11.1f}")
  os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(dict(machine=f"{platform.machine()} {os.cpu_count()}-core {jax.default_backend()}",
                   heads=args.heads, dim=args.dim, batch=1, rows=rows), f, indent=1)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
