"""Optimizer benchmark: loss curves, held-out loss, step time vs AdamW and optimizer-state memory.

Drawn from an experiment's results.json; the command line is scripts/figures/fig_optim_bench.py.
"""

import matplotlib.pyplot as plt
import numpy as np


def _bars(ax, names, values, title, ylabel, fmt):
  xs = np.arange(len(names))
  shown = [0.0 if v is None else v for v in values]
  ax.bar(xs, shown, color=[f"C{i % 10}" for i in range(len(names))])
  for x, v in zip(xs, values):
    ax.text(x, 0.0 if v is None else v, "diverged" if v is None else fmt.format(v), ha="center",
            va="bottom", fontsize=6, rotation=90)
  ax.set_xticks(xs, names, rotation=70, fontsize=7)
  ax.set_title(title, fontsize=9)
  ax.set_ylabel(ylabel)


def table(results: dict) -> str:
  rows = [f"{'optimizer':16s} {'lr':>9s} {'train':>7s} {'eval':>7s} {'step x':>7s} "
          f"{'state MiB':>9s}"]
  order = sorted(results["runs"].items(),
                 key=lambda kv: np.inf if kv[1]["eval_loss"] is None else kv[1]["eval_loss"])
  for name, r in order:
    fmt = lambda v: "   nan" if v is None else f"{v:7.4f}"
    ratio = r.get("step_time_vs_reference")
    rows.append(f"{name:16s} {r['learning_rate']:9.2e} {fmt(r['final_train_loss'])} "
                f"{fmt(r['eval_loss'])} {'' if ratio is None else f'{ratio:7.2f}'} "
                f"{r['state_bytes'] / 2**20:9.3f}")
  return "\n".join(rows)


def plot(results: dict, out_path: str) -> str:
  runs = results["runs"]
  names = list(runs)
  fig, axes = plt.subplots(1, 4, figsize=(17, 4))
  for i, n in enumerate(names):
    curve = np.asarray(runs[n]["loss_curve"], float).reshape(-1, 2)
    if len(curve):
      axes[0].plot(curve[:, 0], curve[:, 1], label=n, color=f"C{i % 10}",
                   ls="-" if i < 10 else "--", lw=1)
  axes[0].set_xlabel("step")
  axes[0].set_ylabel("train loss (nats/byte)")
  axes[0].set_title("Loss vs step", fontsize=9)
  axes[0].legend(fontsize=6, ncol=2)
  _bars(axes[1], names, [runs[n]["eval_loss"] for n in names], "Held-out loss", "nats/byte",
        "{:.3f}")
  _bars(axes[2], names, [runs[n]["step_time_vs_reference"] for n in names],
        f"Step time / {results['reference']}", "ratio", "{:.2f}")
  axes[2].axhline(1.3, color="k", lw=0.8, ls=":")
  _bars(axes[3], names, [runs[n]["state_bytes"] / 2**20 for n in names],
        "Optimizer state", "MiB", "{:.2f}")
  p = results["plan"]
  fig.suptitle(f"N = {p['non_embedding_params']:,} non-embedding params, D = {p['tokens']:,.0f} "
               f"tokens, Step-Law AdamW lr {p['step_law_lr']:.2e}, batch {p['batch_size']}",
               fontsize=9)
  fig.tight_layout()
  fig.savefig(out_path, dpi=150)
  plt.close(fig)
  return out_path
