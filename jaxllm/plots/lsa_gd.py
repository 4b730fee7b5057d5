"""Figure for the LSA = GD study: training loss vs GD losses, prediction/sensitivity agreement.

Drawn from an experiment's results.json; the command line is scripts/figures/fig_lsa_gd.py.
"""

import matplotlib.pyplot as plt
import numpy as np


def plot(results, out_path):
  """Draws training curves against k-step GD, then per-depth agreement with GD and OLS."""
  models = results["models"]
  fig, axes = plt.subplots(1, 3, figsize=(15, 4))
  ax = axes[0]
  for i, (name, row) in enumerate(models.items()):
    ax.plot(row["train"]["step"], row["train"]["loss"], color=f"C{i}", label=f"LSA, {name} layer(s)")
  for steps, loss in zip(results["gd"]["num_steps"], results["gd"]["loss"]):
    ax.axhline(loss, ls="--", color="gray", lw=0.8)
    ax.text(0, loss, f"GD x{steps}", fontsize=7, va="bottom")
  ax.set_yscale("log")
  ax.set_xlabel("training step")
  ax.set_ylabel("0.5 * MSE")
  ax.legend(fontsize=8)

  depths = list(models)
  pos = np.arange(len(depths))
  ax = axes[1]
  ax.bar(pos - 0.2, [models[k]["pred_diff_gd"] for k in depths], 0.4, label="vs GD (same #steps)")
  ax.bar(pos + 0.2, [models[k]["pred_diff_ols"] for k in depths], 0.4, label="vs least squares")
  ax.set_xticks(pos, [f"{k} layer(s)" for k in depths])
  ax.set_yscale("log")
  ax.set_ylabel("prediction difference 0.5*mean(dy^2)")
  ax.legend(fontsize=8)

  ax = axes[2]
  ax.bar(pos - 0.2, [models[k]["sensitivity_cos_gd"] for k in depths], 0.4, label="vs GD")
  ax.bar(pos + 0.2, [models[k]["sensitivity_cos_ols"] for k in depths], 0.4, label="vs least squares")
  ax.set_xticks(pos, [f"{k} layer(s)" for k in depths])
  ax.set_ylim(0, 1.05)
  ax.set_ylabel("cosine of d y_hat / d x_q")
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(out_path, dpi=120)
  plt.close(fig)
  return out_path
