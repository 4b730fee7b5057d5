"""CPU attention speed: every attention method and impl against the machine's matmul rate.

For each length T every row times one jitted forward (best of ``--repeats`` after a warm-up, and
of as many calls as fill half a second; the rows of a length are timed ``--rounds`` times in turn
and keep their best, so a burst of load on a shared machine does not land on one row only) and
reports seconds, the rate in GFLOP/s of the FLOPs the method's mask keeps (4 x D x H per visible
query-key pair: q k^T and p v; a causal dense row keeps T (T + 1) / 2 pairs, about the issue's
2 T^2 D H) and the time relative to ``dense``/``auto``. The matmul rate of a 2048^3 float32
product is measured in the same run (again at every length; the best rate of the run counts), so
rows read as a fraction of what the machine can do. Paths that form the [T, S] logits (the
reference, ``jax.nn.dot_product_attention``) are skipped above ``--reference_max_len`` (8 GiB of
float32 logits at 32k with 2 heads).

Rows: ``dense`` through ``auto``, the reference (``xla``), the ``blocked`` path and the gather
path over the causal table (at the sizes ``CPU_PATHS`` gives them for T, or at its nearest row of
their kind); ``jax.nn.dot_product_attention``; the window methods; a block-sparse
table at the sparse methods' block size (128) keeping a quarter of the causal blocks (its row
gives the time against that density times the dense time); the linear family at the chunk size ``auto`` picks; every other registered
method with its defaults, ``auto`` and ``xla``, up to ``--other_max_len``. ``pallas`` rows are
left out: on CPU they run the Triton interpreter, a correctness tool, not a CPU path. A row is skipped (and says so) when the
time of its previous length, scaled by the pair count, predicts more than ``--row_budget_s``.
Then decode steps: one query against caches of ``--decode_lengths`` keys, what ``auto`` runs for
T = 1 next to the other exact paths, alternating.

``--crossover`` instead times the exact dense candidates (reference, blocked at the
``BLOCKED_CANDIDATES`` sizes, the gather path at blocks 64-256) alternately, causal and windowed:
the measurement behind ``jaxllm.attention.methods.sparse.CPU_PATHS``. ``--linear_chunks`` times the linear family's
chunked form at chunks 16 / 32 / 64, behind ``jaxllm.attention.methods.linear.CPU_CHUNKS``.

  python scripts/benchmarks/bench_cpu_attention.py                      # T = 1k, 4k, 16k, 32k
  python scripts/benchmarks/bench_cpu_attention.py --lengths 1024 4096 --out runs/cpu_attn.json
  python scripts/benchmarks/bench_cpu_attention.py --crossover --lengths 1024 2048 4096 8192
"""

import argparse
import json
import os
import sys
import time

from jaxllm import host

host.reexec_with_huge_pages()  # before jax loads (jaxllm.host)

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax.numpy as jnp
import numpy as np

from jaxllm.attention import METHODS, attention
from jaxllm.attention.methods import dense as dense_lib
from jaxllm.attention.methods import linear as linear_lib
from jaxllm.attention.methods import sparse as sparse_lib
from jaxllm.attention.sparse import patterns
from pallas_kernels.block_sparse import masks

# (block_q, key_chunk) of the blocked path timed by --crossover.
BLOCKED_CANDIDATES = ((128, 2048), (256, 1024), (256, 2048), (256, 4096), (512, 2048))
SPARSE_DENSITY = 0.25  # share of the causal blocks the block-sparse row keeps
# Methods timed through their own rows above, and those needing inputs beyond q, k, v.
OWN_ROWS = ("dense", "sliding_window", "sink_window", "streaming", "block_sparse", "linear",
            "lightning", "retention", "momentum")


MIN_SECONDS = 0.5  # each timing runs at least this long: millisecond rows take the best of many


def best_time(fn, *args, repeats: int, min_seconds: float = MIN_SECONDS) -> float:
  """The best of at least ``repeats`` calls after a warm-up, calling again until ``min_seconds``
  have passed (so a 1 ms row is the best of hundreds, a 10 s row of ``repeats``)."""
  jax.block_until_ready(fn(*args))
  times = []
  start = time.perf_counter()
  while len(times) < repeats or time.perf_counter() - start < min_seconds:
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
  return min(times)


def alternate(fns, args, *, rounds: int, repeats: int, errors=None) -> dict:
  """Best time of every function of ``fns`` over ``rounds`` rounds that call them in turn, so a
  change of load hits every candidate alike. With ``errors`` (a dict), a function that raises is
  recorded there by name and dropped instead of stopping the run."""
  secs = {name: float("inf") for name in fns}
  for _ in range(rounds):
    for name, fn in fns.items():
      if errors is not None and name in errors:
        continue
      try:
        secs[name] = min(secs[name], best_time(fn, *args, repeats=repeats))
      except Exception as e:  # pylint: disable=broad-except
        if errors is None:
          raise
        errors[name] = f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"
  return {name: x for name, x in secs.items() if errors is None or name not in errors}


def matmul_gflops(repeats: int) -> float:
  a = jax.random.normal(jax.random.key(0), (2048, 2048), jnp.float32)
  f = jax.jit(lambda x: x @ x)
  return 2 * 2048 ** 3 / best_time(f, a, repeats=repeats) / 1e9


def band_pairs(t: int, band: int, sinks: int = 0) -> int:
  b = min(band, t)
  extra = sum(max(0, min(sinks, i - band + 1)) for i in range(band, t)) if sinks else 0
  return b * (b + 1) // 2 + (t - b) * b + extra


def sparse_table(t: int, block: int):
  """A quarter of the causal blocks, the diagonal always kept; returns (table, visible pairs)."""
  nq = masks.num_blocks(t, block)
  rng = np.random.default_rng(0)
  keep = np.tril(rng.random((nq, nq)) < SPARSE_DENSITY) | np.eye(nq, dtype=bool)
  table = masks.from_block_mask(jnp.asarray(keep[None, None]), block_q=block, block_k=block)
  pos = np.arange(t)
  ok = keep[pos[:, None] // block, pos[None, :] // block] & (pos[None, :] <= pos[:, None])
  return table, int(ok.sum())


def sizes_for(t: int, kind: str):
  """The sizes ``CPU_PATHS`` gives path ``kind`` at ``t`` (those of its nearest row of that kind
  where the table runs the other path there)."""
  rows = [(top, sizes) for top, path, sizes in sparse_lib.CPU_PATHS if path == kind]
  return next((sizes for top, sizes in rows if top is None or t <= top), rows[-1][1])


def _call(method, impl, opts):
  return jax.jit(lambda q, k, v: attention(q, k, v, method=method, impl=impl, causal=True,
                                           **opts))


def rows_for(t: int, args):
  """(label, impl, jitted fn, visible pairs or None, is a reference path)."""
  causal = t * (t + 1) // 2
  w, sinks = args.window, 4
  gather_block = sizes_for(t, "gather")
  blocked_sizes = sizes_for(t, "blocked")
  gather = jax.jit(lambda q, k, v: sparse_lib.banded(
      q, k, v, impl="xla", causal=True, block_q=gather_block, block_k=gather_block))
  gather_w = jax.jit(lambda q, k, v: sparse_lib.banded(
      q, k, v, impl="xla", causal=True, window=w, block_q=gather_block, block_k=gather_block))
  table, sparse_pairs = sparse_table(t, sparse_lib.BLOCK_Q)  # the block size the methods use
  rows = [
      ("dense", "auto", _call("dense", "auto", {}), causal, False),
      ("dense", "xla", _call("dense", "xla", {}), causal, True),
      (f"dense blocked ({blocked_sizes[0]}x{blocked_sizes[1]})", "-", jax.jit(
          lambda q, k, v: dense_lib.blocked(q, k, v, block_q=blocked_sizes[0],
                                            key_chunk=blocked_sizes[1])), causal, False),
      (f"dense gather (block {gather_block})", "-", gather, causal, False),
      ("jax.nn.dot_product_attention", "xla", jax.jit(  # its XLA form forms [T, S] logits too
          lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=True)), causal, True),
      (f"block_sparse d={SPARSE_DENSITY}", "auto",
       _call("block_sparse", "auto", {"table": table}), sparse_pairs, False),
      (f"block_sparse d={SPARSE_DENSITY}", "xla",
       _call("block_sparse", "xla", {"table": table}), sparse_pairs, False),
  ]
  for impl in ("auto", "xla"):
    rows.append(("sliding_window", impl, _call("sliding_window", impl, {"window": w}),
                 band_pairs(t, w), False))
  rows.append(("sink_window", "auto", _call("sink_window", "auto", {"window": w, "sinks": sinks}),
               band_pairs(t, w, sinks), False))
  rows += [
      ("dense window", "auto", _call("dense", "auto", {"window": w}), band_pairs(t, w), False),
      ("dense window", "xla", _call("dense", "xla", {"window": w}), band_pairs(t, w), True),
      (f"dense window blocked ({blocked_sizes[0]}x{blocked_sizes[1]})", "-", jax.jit(
          lambda q, k, v: dense_lib.blocked(q, k, v, window=w, block_q=blocked_sizes[0],
                                            key_chunk=blocked_sizes[1])), band_pairs(t, w), False),
      (f"dense window gather (block {gather_block})", "-", gather_w, band_pairs(t, w), False),
  ]
  for name in ("linear", "lightning", "retention"):
    label = f"{name} (chunk {linear_lib.chunk_size_for(t, name)})"
    for impl in ("auto", "xla"):
      rows.append((label, impl, _call(name, impl, {}), None, False))
  rows.append(("momentum", "auto", _call("momentum", "auto", {"eta": 0.9}), None, False))
  for name, m in METHODS.items():
    if name in OWN_ROWS or t > args.other_max_len:
      continue
    for impl in ("auto", "xla"):
      if impl in m.impls:
        rows.append((name, impl, _call(name, impl, {}), None, False))
  return rows


def _qkv(t, b, h, hk, d):
  keys = jax.random.split(jax.random.key(t), 3)
  return (jax.random.normal(keys[0], (b, t, h, d), jnp.float32),
          jax.random.normal(keys[1], (b, t, hk, d), jnp.float32),
          jax.random.normal(keys[2], (b, t, hk, d), jnp.float32))


def crossover(args):
  """Times the exact dense candidates alternately; prints each as a ratio to the fastest."""
  b, h, hk, d = args.batch, args.heads, args.kv_heads, args.head_dim
  out = []
  for window in (None, args.window):
    for t in args.lengths:
      q, k, v = _qkv(t, b, h, hk, d)
      fns = {}
      one_block = sizes_for(1, "blocked")  # the table's row for short T
      for bq, kc in sorted(set(BLOCKED_CANDIDATES) | {one_block}):
        if (bq, kc) == one_block or (bq < t and kc <= max(t, 1024)):
          fns[f"blocked {bq}x{kc}"] = jax.jit(
              lambda q, k, v, w=window, bq=bq, kc=kc: dense_lib.blocked(
                  q, k, v, window=w, block_q=bq, key_chunk=kc))
      if t <= args.reference_max_len:
        fns["reference"] = jax.jit(lambda q, k, v, w=window: dense_lib.reference(q, k, v,
                                                                                 window=w))
      for blk in (64, 128, 256):  # 512 lost by 2.4-47x at every length measured
        if blk <= max(t, 64):
          fns[f"gather {blk}"] = jax.jit(lambda q, k, v, w=window, blk=blk: sparse_lib.banded(
              q, k, v, impl="xla", causal=True, window=w, block_q=blk, block_k=blk))
      fns["auto"] = jax.jit(lambda q, k, v, w=window: dense_lib.dense(q, k, v, window=w))
      secs = alternate(fns, (q, k, v), rounds=args.rounds, repeats=args.repeats)
      best = min(s for name, s in secs.items() if name != "auto")
      out.append(dict(T=t, window=window, seconds=secs))
      print(f"T={t:6d} window={window}: " + "  ".join(
          f"{name} {s * 1e3:.2f} ms (x{s / best:.2f})" for name, s in secs.items()), flush=True)
  return out


def linear_chunks(args):
  """Times the chunked form at chunks 16 / 32 / 64 alternately per linear method and length."""
  b, h, hk, d = args.batch, args.heads, args.kv_heads, args.head_dim
  out = []
  for t in args.lengths:
    q, k, v = _qkv(t, b, h, hk, d)
    for name, opts in (("linear", {}), ("lightning", {}), ("retention", {}),
                       ("momentum", {"eta": 0.9})):
      fns = {c: _call(name, "xla", dict(opts, chunk_size=c)) for c in (16, 32, 64) if c <= t}
      secs = alternate(fns, (q, k, v), rounds=args.rounds, repeats=args.repeats)
      best = min(secs.values())
      out.append(dict(T=t, method=name, seconds={str(c): x for c, x in secs.items()},
                      chosen=linear_lib.chunk_size_for(t, name)))
      print(f"T={t:6d} {name:10s} " + "  ".join(
          f"chunk {c} {x * 1e3:.2f} ms (x{x / best:.2f})" for c, x in secs.items())
            + f"  chosen {linear_lib.chunk_size_for(t, name)}", flush=True)
  return out


def decode(args):
  """One query (the newest position) against caches of S keys: the exact paths alternately.

  ``auto`` is what ``dense`` runs for T = 1 (the reference, one [1, S] softmax per head); the
  others are the blocked path (one query block) and ``jax.nn.dot_product_attention`` (not causal:
  the single query sits after every cached key). Reports seconds, the cache read rate (K and V
  once, GB/s) and time / auto.
  """
  b, h, hk, d = args.batch, args.heads, args.kv_heads, args.head_dim
  fns = {
      "dense auto": _call("dense", "auto", {}),
      "dense blocked": jax.jit(dense_lib.blocked),
      "jax.nn.dot_product_attention": jax.jit(
          lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=False)),
  }
  out = []
  for s in args.decode_lengths:
    q = _qkv(1, b, h, hk, d)[0]
    _, k, v = _qkv(s, b, h, hk, d)
    secs = alternate(fns, (q, k, v), rounds=max(2, args.rounds), repeats=args.repeats * 5)
    kv_bytes = 2 * b * s * hk * d * 4
    out.append(dict(S=s, seconds=secs, cache_gb_per_s={n: kv_bytes / x / 1e9
                                                       for n, x in secs.items()}))
    print(f"decode S={s:6d}: " + "  ".join(
        f"{name} {x * 1e6:.0f} us ({kv_bytes / x / 1e9:.1f} GB/s, x{x / secs['dense auto']:.2f})"
        for name, x in secs.items()), flush=True)
  return out


def _fail(message):
  print(message, file=sys.stderr)
  sys.exit(2)


def _fmt(x, spec):
  return "" if x is None else format(x, spec)


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096, 16384, 32768])
  p.add_argument("--batch", type=int, default=1)
  p.add_argument("--heads", type=int, default=2)
  p.add_argument("--kv_heads", type=int, default=1)
  p.add_argument("--head_dim", type=int, default=64)
  p.add_argument("--window", type=int, default=1024)
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--long_repeats", type=int, default=1, help="repeats from T = 16k on")
  p.add_argument("--rounds", type=int, default=2,
                 help="times every row of a length is timed, the rows alternating; best kept")
  p.add_argument("--reference_max_len", type=int, default=8192)
  p.add_argument("--row_budget_s", type=float, default=20.0)
  p.add_argument("--other_max_len", type=int, default=4096,
                 help="longest T for the methods without their own rows")
  p.add_argument("--decode_lengths", type=int, nargs="*", default=[1024, 4096, 16384, 32768],
                 help="cache lengths S of the decode-step rows (none: skip them)")
  p.add_argument("--crossover", action="store_true")
  p.add_argument("--linear_chunks", action="store_true")
  p.add_argument("--out", default=os.path.join("runs", "bench_cpu_attention.json"))
  args = p.parse_args()
  for field in ("batch", "heads", "kv_heads", "head_dim", "window", "repeats", "long_repeats",
                "rounds"):
    if getattr(args, field) < 1:
      _fail(f"error: --{field} must be >= 1, got {getattr(args, field)}")
  for field in ("lengths", "decode_lengths"):
    if any(x < 1 for x in getattr(args, field)):
      _fail(f"error: --{field} must all be >= 1, got {getattr(args, field)}")
  if args.heads % args.kv_heads:
    _fail(f"error: --heads={args.heads} must be a multiple of --kv_heads={args.kv_heads}")

  peak = matmul_gflops(args.repeats)
  load = os.getloadavg()[0]
  print(f"backend {jax.default_backend()}, {os.cpu_count()} CPU threads, load average "
        f"{load:.1f}; matmul 2048^3 float32: {peak:.1f} GFLOP/s", flush=True)
  meta = dict(matmul_gflops=peak, backend=jax.default_backend(), cpu_threads=os.cpu_count(),
              load_average=load, config=vars(args))
  if args.crossover:
    meta["crossover"] = crossover(args)
  elif args.linear_chunks:
    meta["linear_chunks"] = linear_chunks(args)
  else:
    meta["rows"], meta["matmul_gflops"] = measure(args, peak)
    if args.decode_lengths:
      meta["decode"] = decode(args)
  write(args.out, meta)
  print(f"wrote {args.out}")


def write(path, meta):
  """Replaces ``path`` whole (a temporary file renamed), so no half-written JSON is left."""
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(meta, f, indent=1)
  os.replace(tmp, path)


def measure(args, peak):
  b, h, hk, d = args.batch, args.heads, args.kv_heads, args.head_dim
  results, last = [], {}  # last: (label, impl) -> (T, seconds) of its previous length
  for t in sorted(args.lengths):
    # Re-measured at every length: on a loaded machine the two-thread matmul suffers more than
    # the attention rows, so the run keeps the best rate it saw.
    peak = max(peak, matmul_gflops(args.repeats))
    q, k, v = _qkv(t, b, h, hk, d)
    repeats = args.repeats if t < 16384 else args.long_repeats
    timed = []  # (row, fn, pairs): every row is timed once per round, rounds alternating
    for label, impl, fn, pairs, is_ref in rows_for(t, args):
      row = dict(T=t, method=label, impl=impl)
      prev = last.get((label.split(" (")[0], impl))
      predicted = None if prev is None else prev[1] * (t / prev[0]) ** 2
      if is_ref and t > args.reference_max_len:
        row["skipped"] = f"[T, S] logits above T={args.reference_max_len}"
      elif predicted is not None and predicted * (repeats + 1) * args.rounds > args.row_budget_s:
        row["skipped"] = f"predicted {predicted:.0f} s a call from T={prev[0]}"
      results.append(row)
      if "skipped" in row:
        print(f"T={t:6d} {label:34s} {impl:5s} skipped: {row['skipped']}", flush=True)
      else:
        timed.append((row, fn, pairs))
    fns = {i: fn for i, (_, fn, _) in enumerate(timed)}
    errors = {}
    secs = alternate(fns, (q, k, v), rounds=args.rounds, repeats=repeats, errors=errors)
    for i, (row, _, _) in enumerate(timed):
      if i in errors:
        row["error"] = errors[i]
        print(f"T={t:6d} {row['method']:34s} {row['impl']:5s} error: {row['error']}", flush=True)
      else:
        row["seconds"] = secs[i]
    base = next((r["seconds"] for r, _, _ in timed
                 if r["method"] == "dense" and r["impl"] == "auto" and "seconds" in r), None)
    for row, _, pairs in timed:
      if "seconds" not in row:
        continue
      label, impl, secs = row["method"], row["impl"], row["seconds"]
      last[(label.split(" (")[0], impl)] = (t, secs)
      if pairs is not None:
        row["gflops"] = 4 * d * h * b * pairs / secs / 1e9
        row["share_of_matmul"] = row["gflops"] / peak
        row["density_vs_causal"] = pairs / (t * (t + 1) // 2)
      if base is None:
        continue
      row["time_vs_dense_auto"] = secs / base
      if label.startswith("block_sparse"):
        row["time_vs_density_x_dense"] = secs / (row["density_vs_causal"] * base)
      print(f"T={t:6d} {label:34s} {impl:5s} {secs:9.4f}s "
            f"{_fmt(row.get('gflops'), '8.1f'):>8s} GFLOP/s "
            f"({_fmt(row.get('share_of_matmul'), '.0%')} of matmul) "
            f"x{row['time_vs_dense_auto']:.2f} of dense/auto", flush=True)
    write(args.out, dict(partial=True, matmul_gflops=peak, rows=results))  # kept if cut short

  for r in results:  # shares against the best matmul rate of the whole run
    if "gflops" in r:
      r["share_of_matmul"] = r["gflops"] / peak
  print(f"\nmatmul 2048^3 float32, best of the run: {peak:.1f} GFLOP/s\n")
  print("| T | method | impl | seconds | GFLOP/s | share of matmul | time / dense auto |")
  print("|---|---|---|---|---|---|---|")
  for r in results:
    if "seconds" not in r:
      print(f"| {r['T']} | {r['method']} | {r['impl']} | {r.get('skipped') or r['error']} "
            "| | | |")
      continue
    g = r.get("gflops")
    extra = ("" if "time_vs_density_x_dense" not in r
             else f" ({r['time_vs_density_x_dense']:.2f} x d x dense)")
    print(f"| {r['T']} | {r['method']} | {r['impl']} | {r['seconds']:.4f} | {_fmt(g, '.1f')} | "
          f"{_fmt(r.get('share_of_matmul'), '.0%')} | {r.get('time_vs_dense_auto', float('nan')):.2f}{extra} |")
  return results, peak


if __name__ == "__main__":
  main()
