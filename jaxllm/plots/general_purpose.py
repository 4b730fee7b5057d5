"""Figure for the general-purpose ICL study: memorisation vs learning-to-learn against the number

Drawn from an experiment's results.json; the command line is scripts/figures/fig_general_purpose.py.
"""

import matplotlib.pyplot as plt


SPLITS = (("train_tasks", "training tasks"), ("unseen_tasks", "unseen tasks (test images)"))


def plot(results, out_path):
  """Left: late-position accuracy on training and unseen tasks vs the number of training tasks.
  Right: accuracy by position (solid unseen tasks, dashed training tasks), one colour per pool."""
  runs = sorted(results["runs"].values(), key=lambda r: r["num_tasks"])
  chance = results["chance"]
  fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
  ax = axes[0]
  n = [r["num_tasks"] for r in runs]
  for (split, label), color in zip(SPLITS, ("C0", "C3")):
    ax.plot(n, [r[split]["late"] for r in runs], "o-", color=color, label=f"{label}, last quarter")
    ax.plot(n, [r[split]["overall"] for r in runs], "s--", color=color, alpha=0.6,
            label=f"{label}, all positions")
  ax.axhline(chance, color="gray", lw=0.8, ls=":", label="chance")
  ax.set_xscale("log", base=2)
  ax.set_xlabel("number of training tasks")
  ax.set_ylabel("accuracy")
  ax.set_ylim(0, 1.02)
  ax.legend(fontsize=8)
  ax = axes[1]
  for i, r in enumerate(runs):
    pos = range(1, len(r["unseen_tasks"]["by_position"]) + 1)
    ax.plot(pos, r["unseen_tasks"]["by_position"], "-", color=f"C{i % 10}",
            label=f"{r['num_tasks']} tasks")
    ax.plot(pos, r["train_tasks"]["by_position"], "--", color=f"C{i % 10}", alpha=0.6)
  ax.axhline(chance, color="gray", lw=0.8, ls=":")
  ax.set_xlabel("position in sequence (examples seen + 1)")
  ax.set_ylabel("accuracy (solid: unseen tasks, dashed: training tasks)")
  ax.set_ylim(0, 1.02)
  ax.legend(fontsize=8)
  fig.suptitle(f"General-purpose ICL on digits (projection dim {results['proj_dim']}, "
               f"{results['num_eval_sequences']} sequences per split)", fontsize=10)
  fig.tight_layout()
  fig.savefig(out_path, dpi=120)
  plt.close(fig)
  return out_path
