"""Optimizer step time and state memory on a Llama-style decoder's parameters.

  python scripts/benchmarks/bench_optim.py [--d_model 256 --num_layers 4 --vocab 256]
      [--batch 16 --seq_len 64] [--out runs/bench_optim.json]

For every optimizer: seconds per compiled train step (forward + backward + update + apply on one
fixed batch; best of 3 rounds of ``--repeats`` consecutive steps, so Hessian refreshes every k steps
are amortised) and the ratio to AdamW measured in the same process, plus closed-form and measured
optimizer-state bytes. Prints a table and writes JSON.
"""

import argparse
import os

import jax
import numpy as np
from flax import nnx

from configs import optim_bench as bench_config
from experiments.optim_bench import ByteLMTask, step_seconds
from jaxllm import optim
from jaxllm.results import write_json

# Published settings that change the cost (ranks, intervals); learning rates do not matter here.
HPARAMS = {
    "galore": dict(rank=64, update_proj_gap=200), "fira": dict(rank=64, update_proj_gap=200),
    "cosmos": dict(rank=64), "frugal": dict(variant="block"),
    "spam_sparse": dict(density=0.25),
}


def main():
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--d_model", type=int, default=256)
  parser.add_argument("--num_layers", type=int, default=4)
  parser.add_argument("--num_heads", type=int, default=4)
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--seq_len", type=int, default=64)
  parser.add_argument("--repeats", type=int, default=20)
  parser.add_argument("--names", default=",".join(optim.NAMES + ("spam_sparse",)))
  parser.add_argument("--out", default="runs/bench_optim.json")
  args = parser.parse_args()

  cfg = bench_config.get_config("smoke")
  cfg.text.update(seq_len=args.seq_len)
  cfg.model.update(d_model=args.d_model, num_layers=args.num_layers, num_heads=args.num_heads)
  cfg.train.batch_size = args.batch
  task = ByteLMTask(cfg, cfg.model.to_dict())
  params = nnx.state(task.init_model(nnx.Rngs(0)), nnx.Param).to_pure_dict()
  names = args.names.split(",")
  if "adamw" not in names:
    names = ["adamw"] + names
  rows = {}
  for label in names:
    name = "spam" if label == "spam_sparse" else label
    hp = HPARAMS.get(label, {})
    opt_cfg = cfg.optimizer.copy_and_resolve_references()
    opt_cfg.update(name=name, learning_rate=1e-4, hparams=hp, schedule="constant",
                   warmup_steps=0)
    secs = step_seconds(task, opt_cfg, 1000, 0, args.repeats)
    rows[label] = {
        "step_seconds": secs,
        "state_bytes": optim.state_bytes(name, params, 1e-4, **hp),
        "state_bytes_measured": optim.measured_state_bytes(
            optim.make(name, 1e-4, grad_clip=1.0, **hp), params)}
  base = rows["adamw"]["step_seconds"]
  param_bytes = sum(x.nbytes for x in jax.tree.leaves(params))
  print(f"device: {jax.devices()[0].device_kind}; params {param_bytes / 2**20:.2f} MiB; "
        f"batch {args.batch} x {args.seq_len}")
  print(f"{'optimizer':16s} {'ms/step':>9s} {'x adamw':>8s} {'state MiB':>10s} {'x params':>9s}")
  for label, r in sorted(rows.items(), key=lambda kv: kv[1]["step_seconds"]):
    r["vs_adamw"] = r["step_seconds"] / base
    print(f"{label:16s} {1e3 * r['step_seconds']:9.2f} {r['vs_adamw']:8.2f} "
          f"{r['state_bytes'] / 2**20:10.3f} {r['state_bytes'] / param_bytes:9.2f}")
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  print(write_json(args.out, {"device": jax.devices()[0].device_kind, "args": vars(args),
                              "param_bytes": param_bytes, "rows": rows,
                              "all_match": bool(np.all([r["state_bytes"] ==
                                                        r["state_bytes_measured"]
                                                        for r in rows.values()]))}))


if __name__ == "__main__":
  main()
