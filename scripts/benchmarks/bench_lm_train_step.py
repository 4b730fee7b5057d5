"""Train-step throughput of a GPT-2-small-shaped LM: jaxllm (JAX/Flax NNX) vs PyTorch's
``transformers.GPT2LMHeadModel`` on the same machine, both sides alternating in one run.

  python scripts/benchmarks/bench_lm_train_step.py --peer-python /path/to/torch/bin/python
  python scripts/benchmarks/bench_lm_train_step.py --layers=2 --steps=3 --no_peer  # quick look

Both sides: float32, AdamW (lr 3e-4, betas 0.9 / 0.95, weight decay 0.1), the same shape (tied
embeddings, learned positions, LayerNorm, GELU), no dropout, loss = next-token cross-entropy over
the same random tokens. jaxllm runs the training loop's own step (``jaxllm.train.loop``, state
donated) on the LM task's loss (``jaxllm.train.lm_task.masked_lm_loss``). The peer runs in
``--peer-python`` (``peer_lm_train_step_torch.py``: a Python with torch and transformers, e.g. a
venv with ``pip install torch==2.13.0 transformers``); without it the peer runs in this
interpreter if torch is importable. After ``--warmup`` untimed steps on each side, ``--rounds``
rounds each time ``--steps`` steps of jaxllm and then ``--steps`` of the peer, so a load that
drifts on a shared machine hits both; the medians of all timed steps are compared. Each side also
reports its process CPU time per step (user + system, all threads) and CPU / wall, the cores it
kept busy: on a loaded machine wall times mostly measure the load, CPU time the work. Prints a
table and writes JSON (--out).
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

from jaxllm import host

host.reexec_with_huge_pages()  # before jax loads; the peer process inherits it too

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax.numpy as jnp
import numpy as np
from flax import nnx

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from jaxllm import optim  # noqa: E402
from jaxllm.cli import fail  # noqa: E402
from jaxllm.models.transformer import build, count_params  # noqa: E402
from jaxllm.results import write_json  # noqa: E402
from jaxllm.train import loop  # noqa: E402
from jaxllm.train.lm_task import masked_lm_loss  # noqa: E402

PEER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "peer_lm_train_step_torch.py")


class _Task:
  """The benchmark's LM task for the loop's step: every target scored."""

  def loss(self, model, batch):
    return masked_lm_loss(model, batch)


def _cpu_seconds():
  r = resource.getrusage(resource.RUSAGE_SELF)
  return r.ru_utime + r.ru_stime


class JaxSide:
  """jaxllm's train step; ``run(n)`` returns the wall and CPU seconds of n steps."""

  def __init__(self, args, tokens):
    cfg = dict(style="gpt2", d_model=args.d_model, num_layers=args.layers, num_heads=args.heads,
               vocab_size=args.vocab, max_len=args.seq_len, tie_embeddings=True,
               attention="dense", attention_impl="auto")
    model = build(cfg, rngs=nnx.Rngs(0))
    self.params = count_params(model)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    params = params.to_pure_dict()
    opt = optim.make("adamw", 3e-4, b1=0.9, b2=0.95, weight_decay=0.1)

    def merge(p):
      return nnx.merge(graphdef, nnx.State(p), rest)

    self.state = loop.initial_state(params, opt, 0)
    self.batch = {"tokens": jnp.asarray(tokens, jnp.int32),
                  "mask": jnp.ones((tokens.shape[0], tokens.shape[1] - 1), jnp.float32)}
    # as loop.train jits it (the state donated, so the update writes in place), compiled here so
    # that no timed or warm-up step includes the compilation
    self.step = jax.jit(loop.make_train_step(_Task(), opt, merge), donate_argnums=0).lower(
        self.state, self.batch).compile()
    self.note = f"JAX {jax.__version__}"

  def run(self, n):
    seconds, cpu = [], []
    for _ in range(n):
      c0, t0 = _cpu_seconds(), time.perf_counter()
      self.state, metrics = self.step(self.state, self.batch)
      jax.block_until_ready((self.state, metrics))
      seconds.append(time.perf_counter() - t0)
      cpu.append(_cpu_seconds() - c0)
    return seconds, cpu


class PeerSide:
  """The torch peer in its own interpreter (``peer_lm_train_step_torch.py``), driven over stdin."""

  def __init__(self, args, tokens, python):
    self._tmp = tempfile.TemporaryDirectory()
    path = os.path.join(self._tmp.name, "tokens.npy")
    np.save(path, tokens)
    cmd = [python, PEER, "--tokens-file", path, "--layers", str(args.layers),
           "--d_model", str(args.d_model), "--heads", str(args.heads), "--vocab", str(args.vocab)]
    self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    ready = self._read()
    self.params = ready["params"]
    self.note = (f"torch {ready['torch']}, transformers {ready['transformers']}, "
                 f"{ready['threads']} threads")

  def _read(self):
    line = self.proc.stdout.readline()
    if not line:
      fail(f"the peer ({PEER}) exited with status {self.proc.wait()}")
    return json.loads(line)

  def run(self, n):
    self.proc.stdin.write(f"{n}\n")
    self.proc.stdin.flush()
    out = self._read()
    return out["seconds"], out["cpu_seconds"]

  def close(self):
    self.proc.stdin.close()
    self.proc.wait()
    self._tmp.cleanup()


def _peer(args, tokens):
  if args.peer_python:
    return PeerSide(args, tokens, args.peer_python), None
  try:
    import torch  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
    import transformers  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    return None, "torch/transformers not importable here; pass --peer-python"
  return PeerSide(args, tokens, sys.executable), None


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--layers", type=int, default=12)
  p.add_argument("--d_model", type=int, default=768)
  p.add_argument("--heads", type=int, default=12)
  p.add_argument("--vocab", type=int, default=50257)
  p.add_argument("--seq_len", type=int, default=256)
  p.add_argument("--batch", type=int, default=4)
  p.add_argument("--warmup", type=int, default=2, help="untimed steps per side")
  p.add_argument("--steps", type=int, default=2, help="timed steps per side and round")
  p.add_argument("--rounds", type=int, default=3, help="alternations of the two sides")
  p.add_argument("--peer-python", default=None,
                 help="a Python with torch and transformers that runs the peer")
  p.add_argument("--no_peer", action="store_true", help="time jaxllm only")
  p.add_argument("--out", default=os.path.join("runs", "bench", "lm_train_step.json"))
  args = p.parse_args()
  for name in ("layers", "d_model", "heads", "vocab", "seq_len", "batch", "steps", "rounds"):
    if getattr(args, name) < 1:
      fail(f"--{name}={getattr(args, name)} must be >= 1")
  if args.warmup < 0:
    fail(f"--warmup={args.warmup} must be >= 0")
  if args.d_model % args.heads:
    fail(f"--d_model={args.d_model} must be divisible by --heads={args.heads}")

  tokens = np.random.default_rng(0).integers(0, args.vocab, (args.batch, args.seq_len + 1))
  n_tok = args.batch * args.seq_len
  sides = {"jaxllm": JaxSide(args, tokens)}
  peer_note = "--no_peer"
  if not args.no_peer:
    peer, peer_note = _peer(args, tokens)
    if peer is not None:
      sides["pytorch"] = peer
  times = {name: ([], []) for name in sides}
  try:
    for side in sides.values():
      side.run(args.warmup)
    for _ in range(args.rounds):
      for name, side in sides.items():
        wall, cpu = side.run(args.steps)
        times[name][0].extend(wall)
        times[name][1].extend(cpu)
  finally:
    if "pytorch" in sides:
      sides["pytorch"].close()

  print(f"GPT-2-shaped train step: L={args.layers} d={args.d_model} H={args.heads} "
        f"V={args.vocab} T={args.seq_len} B={args.batch}, backend {jax.default_backend()}, "
        f"{os.cpu_count()} CPUs; median of {args.rounds} x {args.steps} alternating steps")
  print(f"{'implementation':<62} {'params':>12} {'s/step':>9} {'tokens/s':>10} "
        f"{'CPU s/step':>11} {'CPU/wall':>9}")
  result = {"shape": vars(args), "tokens_per_step": n_tok, "backend": jax.default_backend()}
  for name, side in sides.items():
    wall, cpu = times[name]
    s, c = float(np.median(wall)), float(np.median(cpu))
    busy = float(np.median(np.asarray(cpu) / np.asarray(wall)))
    print(f"{name + ' (' + side.note + ')':<62} {side.params:>12,d} {s:>9.3f} {n_tok / s:>10.1f} "
          f"{c:>11.3f} {busy:>9.2f}")
    result[name] = {"seconds_per_step": s, "tokens_per_second": n_tok / s, "params": side.params,
                    "cpu_seconds_per_step": c, "cpu_over_wall": busy, "step_seconds": wall,
                    "step_cpu_seconds": cpu, "version": side.note}
  if "pytorch" in sides:
    ratio = result["pytorch"]["seconds_per_step"] / result["jaxllm"]["seconds_per_step"]
    cpu_ratio = (result["pytorch"]["cpu_seconds_per_step"] /
                 result["jaxllm"]["cpu_seconds_per_step"])
    print(f"ratio jaxllm / PyTorch tokens/s: {ratio:.2f}x (CPU time per step: {cpu_ratio:.2f}x)")
    result["ratio_jaxllm_over_pytorch"] = ratio
    result["cpu_ratio_jaxllm_over_pytorch"] = cpu_ratio
  else:
    print(f"PyTorch peer skipped: {peer_note}")
  write_json(args.out, result)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
