"""Figure for the attention-SVM study: cos(W_t, W_mm) and ||W_t|| / ||W_mm|| over GD iterations.

Drawn from an experiment's results.json; the command line is scripts/figures/fig_attention_svm.py.
"""

import matplotlib.pyplot as plt


def plot(results, out_path):
  """One thin line per random problem; the left panel is the paper's correlation plot."""
  fig, axes = plt.subplots(1, 2, figsize=(11, 4))
  for trial in results["trials"]:
    axes[0].plot(trial["iteration"], trial["cos_to_w_mm"], color="C0", alpha=0.5, lw=1)
    axes[1].plot(trial["iteration"], trial["norm_ratio"], color="C1", alpha=0.5, lw=1)
  axes[0].set_ylim(min(0.5, min(t["cos_to_w_mm"][0] for t in results["trials"])), 1.01)
  axes[0].set_xlabel("iteration")
  axes[0].set_ylabel("cos(W_t, W_mm)")
  axes[0].set_title(f"final cos: mean {results['final_cos_mean']:.4f}, "
                    f"min {results['final_cos_min']:.4f}")
  axes[1].set_xlabel("iteration")
  axes[1].set_ylabel("||W_t|| / ||W_mm||")
  fig.tight_layout()
  fig.savefig(out_path, dpi=120)
  plt.close(fig)
  return out_path
