"""Sparse prefill on CPU (XLA paths): every method against dense, selection included.

  python scripts/benchmarks/bench_sparse_prefill.py --lengths=8192,16384,32768 \
      --out=runs/bench_sparse_prefill.json

On planted q/k/v (``jaxllm.eval.planted``, one pattern per KV head, B = 1) each method runs at its
published defaults (override with --options, JSON per method). Per method and length: wall-time
ratio to dense (whole method, selection included, median of --repeats after a warm-up), density
and recall (``jaxllm.eval.attention_fidelity.measure``; above --coverage_max_len only times and
errors, since density and recall hold bool [H, T, T] masks). Dense is exact causal attention by the
block-sparse gather path over the full causal table (flash-style, no T x T logits), the XLA path
the sparse methods compete with at long T. Table methods of ``jaxllm.attention.sparse`` are
measured too when named in --methods. Timings from a shared machine: read the ratios, which are
measured in the same run, not absolute seconds.
"""

import argparse
import json
import os
import sys

import jax

from jaxllm.eval import attention_fidelity as fid
from jaxllm.eval import planted
from jaxllm.results import write_json

METHODS = "sink_window,block_sparse,cca,hyper,moba"


def _args():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--lengths", default="8192,16384,32768")
  p.add_argument("--methods", default=METHODS)
  p.add_argument("--options", default="", help='JSON, e.g. {"moba": {"chunk_size": 2048}}')
  p.add_argument("--kv_heads", type=int, default=len(planted.PATTERNS))
  p.add_argument("--head_dim", type=int, default=64)
  p.add_argument("--repeats", type=int, default=1)
  p.add_argument("--query_len", type=int, default=0,
                 help="time only the last N queries (T < S, a chunk onto a cache; 0: all)")
  p.add_argument("--coverage_max_len", type=int, default=16384,
                 help="longest T with density and recall (they hold bool [H, T, T] masks)")
  p.add_argument("--out", default="runs/bench_sparse_prefill.json")
  a = p.parse_args()
  try:
    lengths = [int(x) for x in a.lengths.split(",") if x]
    options = json.loads(a.options) if a.options else {}
  except ValueError as e:
    p.exit(2, f"error: --lengths must be ints and --options JSON: {e}\n")
  methods = [m for m in a.methods.split(",") if m]
  if a.methods == METHODS:  # every table method the sparse package offers joins the default
    try:
      from jaxllm.attention import sparse  # pylint: disable=g-import-not-at-top
      methods += [m for m in sparse.METHODS if m not in methods]
    except ImportError:
      pass
  try:
    for m in methods:
      fid.adapter(m)
  except ValueError as e:
    p.exit(2, f"error: {e}\n")
  if a.query_len < 0:
    p.exit(2, "error: --query_len must be >= 0\n")
  if a.repeats < 1 or a.kv_heads < 1 or a.head_dim < 4 or a.head_dim % 4:
    p.exit(2, "error: --repeats and --kv_heads must be >= 1, --head_dim a multiple of 4\n")
  return a, lengths, methods, options


def main():
  a, lengths, methods, options = _args()
  rows = []
  print(f"{'T':>6s} {'method':14s} {'time/dense':>10s} {'density':>8s} {'recall':>7s} "
        f"{'out err':>8s} {'sel share':>9s}")
  for t in lengths:
    q, k, v, heads = planted.planted_qkv(0, length=t, kv_heads=a.kv_heads, head_dim=a.head_dim)
    q, k, v = fid.last_queries((q, k, v), a.query_len)
    dense = fid.timed(jax.jit(fid.dense_run), q, k, v, repeats=a.repeats)
    for m in methods:
      r = fid.measure(m, q, k, v, options.get(m), dense=dense, repeats=a.repeats,
                      coverage=t <= a.coverage_max_len)
      rows.append({"length": t, "queries": q.shape[1], "method": m,
                   "options": options.get(m, {}), **r})
      cov = "" if r["density"] is None else f"{r['density']:8.3f} {r['recall']:7.3f}"
      by_head = "" if r["head_recall"] is None else " ".join(
          f"{p}:{x:.2f}" for p, x in zip(heads, r["head_recall"]))
      print(f"{t:6d} {m:14s} {r['time_ratio']:10.3f} {cov or '       -       -':16s} "
            f"{r['out_rel_err']:8.3f} {r['selection_share']:9.3f}  {by_head}", flush=True)
      write_json(a.out, {"benchmark": "sparse_prefill_cpu", "kv_heads": a.kv_heads,
                         "head_dim": a.head_dim, "patterns": heads, "rows": rows})
  print(f"wrote {os.path.abspath(a.out)}", file=sys.stderr)


if __name__ == "__main__":
  main()
