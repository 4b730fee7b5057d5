"""Error vs number of in-context examples for each function class (Garg et al. 2022, Fig. 3).

Drawn from an experiment's results.json; the command line is scripts/figures/fig_function_classes.py.
"""

import os

import matplotlib.pyplot as plt
import numpy as np

STYLE = {
    "transformer": dict(color="C3", lw=2.2, label="Transformer"),
    "least_squares": dict(color="C0", ls="--", label="Least squares"),
    "averaging": dict(color="C1", ls="--", label="Averaging"),
    "knn3": dict(color="C4", ls="-.", label="3-Nearest neighbours"),
    "lasso": dict(color="C2", ls=":", label="Lasso"),
    "gradient_boosting": dict(color="C5", ls=":", label="Gradient-boosted trees"),
}
TITLES = {"linear": "Linear", "sparse_linear": "Sparse linear", "relu_net": "2-layer ReLU nets",
          "decision_tree": "Decision trees"}


def plot(results: dict, out_path: str) -> str:
  fams = results["families"]
  fig, axes = plt.subplots(1, len(fams), figsize=(4.5 * len(fams), 3.8), squeeze=False)
  for ax, (family, res) in zip(axes[0], fams.items()):
    for name, style in STYLE.items():
      if name in res["errors"]:
        err = np.asarray(res["errors"][name])
        ax.plot(np.arange(len(err)), err, **style)
    ax.axvline(results["n_dims"], color="grey", lw=0.8, ls=":")
    ax.set_title(TITLES.get(family, family))
    ax.set_xlabel("in-context examples k")
    ax.set_ylim(0, 1.5)
    ax.legend(frameon=False, fontsize=8)  # each family has its own baselines
  axes[0, 0].set_ylabel("squared error / E y^2")
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
  fig.savefig(out_path, dpi=150)
  plt.close(fig)
  return out_path
