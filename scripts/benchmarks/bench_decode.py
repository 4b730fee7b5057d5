"""Token generation: KV-cache decoding (full, StreamingLLM, H2O, TokenSelect) vs recomputing.

  pip install -e .   # once, so the script can import jaxllm
  python scripts/benchmarks/bench_decode.py [--prompt 512] [--new 64] [--budget 128]
      [--layers 4] [--width 256] [--out runs/bench_decode.json]

One random-weight Llama-style decoder (GQA, 4 query heads per kv head), greedy decoding of
``--new`` tokens after a ``--prompt``-token prompt, batch ``--batch``. Rows:
  * ``recompute``: no cache; every new token re-runs the whole (padded, fixed-shape) sequence.
  * ``cache_full``: ``jaxllm.inference.generate`` with the whole sequence cached.
  * ``cache_streaming`` / ``cache_h2o``: the cache cut to ``--budget`` tokens per kv head.
  * ``cache_tokenselect``: the whole cache kept, each step attending to ``--budget`` tokens
    (4 sinks, ``budget // 4`` recent, the rest by soft vote).
Reported: prefill seconds, decode tokens/s (after the first token, compile excluded), the KV-cache
bytes held during decoding, and how many generated tokens agree with the full-cache run (random
weights: agreement shows how far eviction moves the distribution, not task accuracy).

Peer rows (``--peer-python PY``, a Python with torch and transformers): the model is exported with
``jaxllm.interop.save_hf`` and imported back with ``load_hf``; then, for each batch in
``--peer-batches``, every cache policy of jaxllm and transformers' own cached greedy decoding of
the same checkpoint (``peer_decode_hf.py`` run by ``PY``, torch CPU) decode the same prompt, and
the table shows tokens/s side by side (the fastest of ``--peer-repeats`` timed runs on each side),
the ratio to transformers, the KV-cache MiB of each and the share of tokens equal to transformers'
(float32 on both sides). The peer uses as many torch threads as CPUs the process may run on, so
``taskset -c 0 python scripts/benchmarks/bench_decode.py ...`` compares one core against one core.
"""

import argparse
import json
import os
import platform
import subprocess
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxllm.inference import decode
from jaxllm.inference.policies import Policy
from jaxllm.interop import load_hf, save_hf
from jaxllm.models.transformer import build
from jaxllm.results import write_json


def _model(args):
  return build(dict(style="llama", vocab_size=args.vocab, d_model=args.width,
                    num_layers=args.layers, num_heads=args.heads,
                    num_kv_heads=args.heads // 4 or 1, max_len=args.prompt + args.new,
                    dtype=args.dtype), rngs=nnx.Rngs(0))


def _cached(model, prompt, args, policy, repeats=1):
  """Compiles, then times prefill and decoding ``repeats`` times (the fastest of each is kept)."""
  graphdef, state = nnx.split(model)
  first = jax.jit(lambda s, p: decode.prefill(nnx.merge(graphdef, s), p, policy, args.new))
  step = jax.jit(lambda s, c, t: decode.decode_step(nnx.merge(graphdef, s), c, t)[:2])
  logits, cache = jax.block_until_ready(first(state, prompt))  # compile
  tok = jnp.argmax(logits, -1).astype(jnp.int32)
  jax.block_until_ready(step(state, cache, tok))  # compile
  prefill_s = decode_s = float("inf")
  for _ in range(repeats):
    t0 = time.perf_counter()
    logits, cache = jax.block_until_ready(first(state, prompt))
    prefill_s = min(prefill_s, time.perf_counter() - t0)
    tokens = [jnp.argmax(logits, -1).astype(jnp.int32)]
    t0 = time.perf_counter()
    for _ in range(args.new - 1):
      logits, cache = step(state, cache, tokens[-1])
      tokens.append(jnp.argmax(logits, -1).astype(jnp.int32))
    jax.block_until_ready(tokens[-1])
    decode_s = min(decode_s, time.perf_counter() - t0)
  cache_bytes = sum(lc.k.nbytes + lc.v.nbytes for lc in cache.layers)
  return jnp.stack(tokens, 1), prefill_s, decode_s, cache_bytes


def _recompute(model, prompt, args):
  """No cache: the sequence padded to its final length, re-run for every new token."""
  b, t = prompt.shape
  total = t + args.new
  fwd = nnx.jit(lambda m, seq, i: jnp.argmax(
      jax.lax.dynamic_index_in_dim(m(seq), i, axis=1, keepdims=False), -1).astype(jnp.int32))
  seq = jnp.zeros((b, total), jnp.int32).at[:, :t].set(prompt)
  jax.block_until_ready(fwd(model, seq, t - 1))  # compile
  t0 = time.perf_counter()
  tok = fwd(model, seq, t - 1)
  jax.block_until_ready(tok)
  prefill_s = time.perf_counter() - t0
  tokens = [tok]
  t0 = time.perf_counter()
  for i in range(1, args.new):
    seq = seq.at[:, t + i - 1].set(tokens[-1])
    tokens.append(fwd(model, seq, t + i - 1))
  jax.block_until_ready(tokens[-1])
  return jnp.stack(tokens, 1), prefill_s, time.perf_counter() - t0, 0


def _policies(args):
  return {"full": Policy("full"), "streaming": Policy("streaming", budget=args.budget, sinks=4),
          "h2o": Policy("h2o", budget=args.budget),
          "tokenselect": Policy("tokenselect", budget=args.budget, sinks=4,
                                recent=args.budget // 4)}


def _peer_rows(model, args):
  """jaxllm (imported model, every policy) against transformers at each of ``--peer-batches``."""
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    save_hf(model, tmp)
    imported = load_hf(tmp, dtype=args.dtype)
    for batch in args.peer_batches:
      prompt = np.random.default_rng(batch).integers(0, args.vocab, (batch, args.prompt))
      prompt_file = os.path.join(tmp, "prompt.npy")
      np.save(prompt_file, prompt.astype(np.int32))
      peer = json.loads(subprocess.run(
          [args.peer_python, os.path.join(os.path.dirname(__file__), "peer_decode_hf.py"),
           "--model", tmp, "--prompt-file", prompt_file, "--new", str(args.new),
           "--repeats", str(args.peer_repeats)],
          capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1])
      ref = np.asarray(peer.pop("tokens"))
      rows.append(dict(name="transformers", batch=batch, prefill_s=peer["prefill_s"],
                       decode_tokens_per_s=peer["decode_tokens_per_s"],
                       cache_mib=peer["cache_mib"], agreement_with_peer=1.0,
                       peer={k: peer[k] for k in ("torch", "transformers", "threads",
                                                  "attention")}))
      for name, policy in _policies(args).items():
        tokens, prefill_s, decode_s, cache_bytes = _cached(
            imported, jnp.asarray(prompt, jnp.int32), args, policy, repeats=args.peer_repeats)
        rows.append(dict(name=f"jaxllm_{name}", batch=batch, prefill_s=prefill_s,
                         decode_tokens_per_s=batch * (args.new - 1) / decode_s,
                         cache_mib=cache_bytes / 2**20,
                         agreement_with_peer=float(np.mean(np.asarray(tokens) == ref))))
  print(f"\npeer: the model through save_hf / load_hf; transformers {rows[0]['peer']}")
  print(f"{'batch':>5} {'decoder':<20} {'prefill s':>10} {'decode tok/s':>13} "
        f"{'vs transformers':>16} {'cache MiB':>10} {'agree w/ peer':>14}")
  for r in rows:
    base = next(x for x in rows if x["batch"] == r["batch"] and x["name"] == "transformers")
    r["speedup_vs_peer"] = r["decode_tokens_per_s"] / base["decode_tokens_per_s"]
    print(f"{r['batch']:>5} {r['name']:<20} {r['prefill_s']:>10.3f} "
          f"{r['decode_tokens_per_s']:>13.1f} {r['speedup_vs_peer']:>15.2f}x "
          f"{r['cache_mib']:>10.3f} {r['agreement_with_peer']:>14.3f}")
  return rows


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--prompt", type=int, default=512)
  p.add_argument("--new", type=int, default=64)
  p.add_argument("--budget", type=int, default=128)
  p.add_argument("--batch", type=int, default=4)
  p.add_argument("--layers", type=int, default=4)
  p.add_argument("--width", type=int, default=256)
  p.add_argument("--heads", type=int, default=8)
  p.add_argument("--vocab", type=int, default=4096)
  p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  p.add_argument("--out", default="runs/bench_decode.json")
  p.add_argument("--peer-python", default=None,
                 help="a Python with torch and transformers: adds the transformers peer rows")
  p.add_argument("--peer-batches", default="1,8", help="comma-separated batch sizes of the peer rows")
  p.add_argument("--peer-repeats", type=int, default=3,
                 help="peer rows: timed runs per decoder, the fastest kept (a shared machine)")
  p.add_argument("--skip-policy-rows", action="store_true",
                 help="run only the peer rows (with --peer-python)")
  args = p.parse_args()
  if args.new < 2:
    p.error("--new must be at least 2 (decode speed is timed after the first token)")
  try:
    args.peer_batches = [int(b) for b in args.peer_batches.split(",")]
  except ValueError:
    p.error(f"--peer-batches must be comma-separated ints, got {args.peer_batches!r}")
  if args.skip_policy_rows and not args.peer_python:
    p.error("--skip-policy-rows leaves nothing to run without --peer-python")
  model = _model(args)
  prompt = jnp.asarray(np.random.default_rng(0).integers(0, args.vocab, (args.batch, args.prompt)),
                       jnp.int32)
  runs = {"recompute": lambda: _recompute(model, prompt, args)}
  runs.update({f"cache_{name}": lambda policy=policy: _cached(model, prompt, args, policy)
               for name, policy in _policies(args).items()})
  if args.skip_policy_rows:
    runs = {}
  rows, reference = [], None
  for name, fn in runs.items():
    tokens, prefill_s, decode_s, cache_bytes = fn()
    if name == "cache_full":
      reference = tokens
    rows.append(dict(name=name, prefill_s=prefill_s,
                     decode_tokens_per_s=args.batch * (args.new - 1) / decode_s,
                     cache_mib=cache_bytes / 2**20, tokens=np.asarray(tokens)))
  print(f"backend {jax.default_backend()} ({jax.devices()[0].device_kind}); prompt {args.prompt}, "
        f"new {args.new}, batch {args.batch}, budget {args.budget}, {args.layers} layers x "
        f"{args.width}, {args.dtype}")
  if rows:
    base = next(r for r in rows if r["name"] == "recompute")["decode_tokens_per_s"]
    print(f"{'method':<16} {'prefill s':>10} {'decode tok/s':>13} {'vs recompute':>13} "
          f"{'cache MiB':>10} {'agree w/ full':>14}")
  for r in rows:
    r["speedup_vs_recompute"] = r["decode_tokens_per_s"] / base
    r["agreement_with_full"] = float(np.mean(r.pop("tokens") == np.asarray(reference)))
    print(f"{r['name']:<16} {r['prefill_s']:>10.3f} {r['decode_tokens_per_s']:>13.1f} "
          f"{r['speedup_vs_recompute']:>12.2f}x {r['cache_mib']:>10.2f} "
          f"{r['agreement_with_full']:>14.3f}")
  peer_rows = _peer_rows(model, args) if args.peer_python else []
  out = {"backend": jax.default_backend(), "device": jax.devices()[0].device_kind,
         "machine": platform.machine(), "args": vars(args), "rows": rows,
         "peer_rows": peer_rows}
  write_json(args.out, out)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
