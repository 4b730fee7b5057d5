"""One unattended accelerator check: install, the `gpu` tests, and every kernel benchmark.

    bash scripts/device_check.sh                       # on the GPU machine, 9-minute budget
    bash scripts/device_check.sh --budget_s=300 --wheels=wheels/
    bash scripts/device_check.sh --dry-run             # every step on CPU, tiny shapes, interpret

Steps, in order (each a subprocess with what is left of the budget as its timeout, so a slow or
hanging step is stopped and recorded, and the next one still runs):

1. ``install``: ``pip install --no-deps`` of the carried wheels (``--wheels``: tokamax,
   ml_collections, ... whatever the machine's own Python lacks) and of jaxllm itself; then the
   device and the versions the run used;
2. ``gpu_tests``: ``pytest -m gpu`` (the compiled twins of the kernel tests);
3. ``dense_and_block_sparse``: dense forward / forward+backward TFLOP/s (bf16, causal, head dim
   128, T 8k and 32k) for jaxllm's Pallas kernel, tokamax's implementations and cuDNN, and the
   block-sparse speedup over its own dense path at densities 5 / 10 / 25 % and T 16k / 64k;
4. ``sparse_prefill``: the sparse prefill methods end to end at 32k, selection included;
5. ``sparse_decode``: the sparse-decode kernel at 32k-128k cached tokens;
6. ``linear``: the linear chunk kernels against dense at 8k-64k;
7. ``train_step``: the GPT-2-small train step's tokens/s;
then one JSON (``<out>/device_check.json``, rewritten after every step so a cut-off run keeps what
it measured) and a dated table with the device name appended to the notes file
(``scripts/benchmarks/notes/gpu.md``; with ``--dry-run``, ``<out>/gpu.md``).
"""

import argparse
import datetime
import glob
import json
import os
import shlex
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join("scripts", "benchmarks")
VERSIONS = """
import importlib.metadata, json, jax
d = jax.devices()[0]
versions = {}
for p in ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "tokamax", "ml_collections",
          "torch", "transformers"):
  try:
    versions[p] = importlib.metadata.version(p)
  except importlib.metadata.PackageNotFoundError:
    versions[p] = None
print(json.dumps(dict(device=getattr(d, "device_kind", str(d)), backend=jax.default_backend(),
                      count=jax.device_count(), versions=versions)))
"""


PREFILL_METHODS = ("sink_window,block_sparse,cca,hyper,moba,minference,flexprefill,xattention,"
                   "hip,squeezed")


def steps(out: str, dry: bool, python: str):
  """(name, argv, json file the step writes or None, share of the budget it may take)."""
  j = lambda name: os.path.join(out, f"{name}.json")
  py = [python]
  if dry:
    return [
        ("gpu_tests", py + ["-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider",
                            "tests/kernels"], None, 0.2),
        ("dense_and_block_sparse", py + [os.path.join(BENCH, "bench_block_sparse_gpu.py"),
                                         "--smoke", "--out", j("dense_and_block_sparse")],
         j("dense_and_block_sparse"), 0.2),
        ("sparse_prefill", py + [os.path.join(BENCH, "bench_sparse_prefill.py"), "--lengths",
                                 "512", "--methods", PREFILL_METHODS, "--kv_heads", "2",
                                 "--head_dim", "32", "--out", j("sparse_prefill")],
         j("sparse_prefill"), 0.15),
        ("sparse_decode", py + [os.path.join(BENCH, "bench_sparse_decode.py"), "--interpret",
                                "--lengths", "512", "--batch", "1", "--heads", "4",
                                "--kv_heads", "2", "--dim", "32", "--budget", "2",
                                "--num_splits", "2", "--dtype", "float32", "--repeats", "1",
                                "--out", j("sparse_decode")], j("sparse_decode"), 0.15),
        ("linear", py + [os.path.join(BENCH, "bench_linear.py"), "--lengths", "256",
                         "--repeats", "1", "--decode-repeats", "2", "--out", j("linear")],
         j("linear"), 0.1),
        ("train_step", py + [os.path.join(BENCH, "bench_lm_train_step.py"), "--layers", "1",
                             "--d_model", "64", "--heads", "2", "--vocab", "256", "--seq_len",
                             "32", "--batch", "1", "--warmup", "1", "--steps", "1",
                             "--no_peer", "--out", j("train_step")], j("train_step"), 0.1),
    ]
  return [
      ("gpu_tests", py + ["-m", "pytest", "-q", "-x", "-m", "gpu", "-p", "no:cacheprovider",
                          "tests"], None, 0.2),
      ("dense_and_block_sparse", py + [os.path.join(BENCH, "bench_block_sparse_gpu.py"),
                                       "--dense_lengths", "8192", "32768", "--sparse_lengths",
                                       "16384", "65536", "--densities", "0.05", "0.1", "0.25",
                                       "--repeats", "5", "--out", j("dense_and_block_sparse")],
       j("dense_and_block_sparse"), 0.3),
      ("sparse_prefill", py + [os.path.join(BENCH, "bench_sparse_prefill.py"), "--lengths",
                               "32768", "--methods", PREFILL_METHODS, "--out",
                               j("sparse_prefill")], j("sparse_prefill"), 0.1),
      ("sparse_decode", py + [os.path.join(BENCH, "bench_sparse_decode.py"), "--lengths",
                              "32768,131072", "--out", j("sparse_decode")], j("sparse_decode"),
       0.1),
      ("linear", py + [os.path.join(BENCH, "bench_linear.py"), "--lengths",
                       "8192,32768,65536", "--out", j("linear")], j("linear"), 0.1),
      ("train_step", py + [os.path.join(BENCH, "bench_lm_train_step.py"), "--no_peer",
                           "--out", j("train_step")], j("train_step"), 0.15),
  ]


def _write_json(path, obj):
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=1, default=str)
  os.replace(tmp, path)


def _run(argv, timeout, env):
  """Runs argv; returns (status, seconds, last output lines). status is 'timeout' past timeout."""
  t0 = time.perf_counter()
  try:
    proc = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=max(timeout, 1))
    status, text = proc.returncode, proc.stdout + proc.stderr
  except subprocess.TimeoutExpired as e:
    status = "timeout"
    text = "".join(x.decode() if isinstance(x, bytes) else (x or "") for x in (e.stdout, e.stderr))
  return status, time.perf_counter() - t0, text.strip().splitlines()[-15:]


def install(args, env) -> dict:
  """Carried wheels and jaxllm itself, without dependencies (the machine has no network)."""
  cmds = []
  wheels = sorted(glob.glob(os.path.join(args.wheels, "*.whl"))) if args.wheels else []
  if wheels:
    cmds.append([args.python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", *wheels])
  cmds.append([args.python, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
               "-e", "."])
  if args.dry_run:
    return dict(status="dry-run", commands=[shlex.join(c) for c in cmds])
  for c in cmds:
    status, _, tail = _run(c, 300, env)
    if status != 0:
      return dict(status=status, command=shlex.join(c), tail=tail)
  return dict(status=0, commands=[shlex.join(c) for c in cmds])


def notes_table(result: dict) -> str:
  """The dated markdown block appended to the notes file."""
  env = result.get("environment", {})
  lines = [f"\n## {result['date']} — {env.get('device', '?')} ({env.get('backend', '?')}, "
           f"jax {env.get('versions', {}).get('jax', '?')})\n",
           "| step | status | seconds | key numbers |", "|---|---|---|---|"]
  for s in result["steps"]:
    lines.append(f"| {s['name']} | {s['status']} | {s.get('seconds', 0):.0f} | "
                 f"{s.get('summary', '')} |")
  return "\n".join(lines) + "\n"


def _summary(data) -> str:
  """A few headline numbers from a benchmark's JSON (its rows' speedups and TFLOP/s)."""
  if not isinstance(data, dict):
    return ""
  rows = data.get("rows") or []
  keys = ("fwd_tflops", "fwd_speedup", "speedup", "tokens_per_second", "ratio")
  out = []
  for r in rows[:8] if isinstance(rows, list) else []:
    if not isinstance(r, dict):
      continue
    found = [(k, r[k]) for k in keys if isinstance(r.get(k), (int, float))]
    if found:
      label = "/".join(str(r[k]) for k in ("impl", "kind", "seq_len", "density") if k in r)
      out.append(f"{label}: " + ", ".join(f"{k} {v:.3g}" for k, v in found))
  if "jaxllm" in data and isinstance(data["jaxllm"], dict):
    out.append(f"tokens/s {data['jaxllm'].get('tokens_per_second', 0):.1f}")
  return "; ".join(out)[:600]


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--budget_s", type=float, default=540.0, help="total seconds (default 9 min)")
  p.add_argument("--dry-run", dest="dry_run", action="store_true",
                 help="every step on CPU at tiny shapes with the kernels interpreted")
  p.add_argument("--wheels", default=None, help="folder of carried .whl files to install")
  p.add_argument("--python", default=sys.executable)
  p.add_argument("--out", default=None, help="results folder (default runs/device_check)")
  p.add_argument("--notes", default=None, help="markdown file the dated table is appended to")
  args = p.parse_args(argv)
  if args.budget_s <= 0:
    print(f"error: --budget_s must be positive, got {args.budget_s}", file=sys.stderr)
    return 2
  out = os.path.abspath(args.out or os.path.join(ROOT, "runs", "device_check"))
  os.makedirs(out, exist_ok=True)
  notes = args.notes or (os.path.join(out, "gpu.md") if args.dry_run
                         else os.path.join(ROOT, BENCH, "notes", "gpu.md"))
  env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  if args.dry_run:
    env["JAX_PLATFORMS"] = "cpu"
  deadline = time.monotonic() + args.budget_s
  result = dict(date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                dry_run=args.dry_run, budget_s=args.budget_s, steps=[])
  path = os.path.join(out, "device_check.json")
  result["install"] = install(args, env)
  status, _, tail = _run([args.python, "-c", VERSIONS], 120, env)
  try:
    result["environment"] = json.loads(tail[-1]) if status == 0 else dict(error=tail)
  except (ValueError, IndexError):
    result["environment"] = dict(error=tail)
  print(f"device: {result['environment']}", flush=True)
  _write_json(path, result)
  plan = steps(out, args.dry_run, args.python)
  for i, (name, cmd, json_path, share) in enumerate(plan):
    left = deadline - time.monotonic()
    if left < 5:
      result["steps"].append(dict(name=name, status="skipped: budget spent"))
      continue
    # A step may use its share, or everything left if the later steps' shares still fit.
    later = sum(s for *_, s in plan[i + 1:]) * args.budget_s
    timeout = max(share * args.budget_s, left - later)
    timeout = min(timeout, left)
    print(f"[{name}] timeout {timeout:.0f}s: {shlex.join(cmd)}", flush=True)
    status, secs, tail = _run(cmd, timeout, env)
    entry = dict(name=name, status=status, seconds=secs, command=shlex.join(cmd), tail=tail)
    if name == "gpu_tests" and status == 5:
      entry["status"] = "no tests selected"
    if json_path and os.path.exists(json_path):
      with open(json_path) as f:
        entry["result"] = json.load(f)
      entry["summary"] = _summary(entry["result"])
    result["steps"].append(entry)
    _write_json(path, result)
    print(f"[{name}] {entry['status']} in {secs:.0f}s", flush=True)
  with open(notes, "a") as f:
    f.write(notes_table(result))
  print(f"wrote {path} and appended to {notes}")
  ok = all(s["status"] in (0, "no tests selected") for s in result["steps"])
  return 0 if ok else 1


if __name__ == "__main__":
  sys.exit(main())
