"""Softmax vs linear vs lightning LMs: recall accuracy, held-out loss, throughput, loss curves.

Drawn from an experiment's results.json; the command line is scripts/figures/fig_lm_efficiency.py.
"""

import math
import os

import matplotlib.pyplot as plt
import numpy as np


def _bars(ax, names, values, title, ylabel, fmt="{:.2f}"):
  xs = np.arange(len(names))
  ax.bar(xs, values, color=[f"C{i}" for i in range(len(names))])
  for x, v in zip(xs, values):
    ax.text(x, v, fmt.format(v), ha="center", va="bottom", fontsize=7)
  ax.set_xticks(xs, names, rotation=20, fontsize=8)
  ax.set_title(title, fontsize=9)
  ax.set_ylabel(ylabel)


def plot(results: dict, out_path: str) -> str:
  runs = results["runs"]
  fig, axes = plt.subplots(1, 4, figsize=(15, 3.6))
  if "recall" in runs:
    names = list(runs["recall"])
    _bars(axes[0], names, [runs["recall"][n]["eval_accuracy"] for n in names],
          "Associative recall (held out)", "accuracy")
    axes[0].set_ylim(0, 1.05)
  if "text" in runs:
    names = list(runs["text"])
    _bars(axes[1], names, [runs["text"][n]["eval_loss"] / math.log(2) for n in names],
          "Byte-level LM (held out)", "bits per byte")
  width = 0.8 / max(len(runs), 1)
  for i, (task, by_variant) in enumerate(runs.items()):
    names = list(by_variant)
    xs = np.arange(len(names)) + (i - (len(runs) - 1) / 2) * width
    axes[2].bar(xs, [by_variant[n]["forward_tokens_per_s"] / 1e3 for n in names], width,
                label=f"{task} (T={by_variant[names[0]]['seq_len']})", color=f"C{i + 4}")
    axes[2].set_xticks(np.arange(len(names)), names, rotation=20, fontsize=8)
  axes[2].set_title("Forward throughput", fontsize=9)
  axes[2].set_ylabel("k tokens / s")
  axes[2].legend(frameon=False, fontsize=7)
  styles = {"recall": "-", "text": "--"}
  for task, by_variant in runs.items():
    for j, (name, r) in enumerate(by_variant.items()):
      steps, loss = zip(*r["loss_curve"]) if r["loss_curve"] else ((), ())
      axes[3].plot(steps, loss, styles.get(task, ":"), color=f"C{j}", label=f"{name} / {task}")
  axes[3].set_xlabel("step")
  axes[3].set_ylabel("train loss (nats)")
  axes[3].set_title("Training", fontsize=9)
  axes[3].legend(frameon=False, fontsize=7)
  fig.suptitle(f"Same data and budget: {results['train_steps']} steps x batch "
               f"{results['batch_size']}", fontsize=10)
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
  fig.savefig(out_path, dpi=150)
  plt.close(fig)
  return out_path
