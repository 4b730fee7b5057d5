"""Error vs number of in-context examples for the in-context linear regression study.

Drawn from an experiment's results.json; the command line is scripts/figures/fig_linear_regression.py.
"""

import os

import matplotlib.pyplot as plt
import numpy as np

STYLE = {
    "transformer": dict(color="C3", lw=2.2, label="Transformer"),
    "least_squares": dict(color="C0", ls="--", label="Least squares"),
    "ridge": dict(color="C2", ls=":", label="Ridge"),
    "knn3": dict(color="C4", ls="-.", label="3-Nearest neighbours"),
    "averaging": dict(color="C1", ls="--", label="Averaging"),
}


def plot(results: dict, out_path: str) -> str:
  d = results["n_dims"]
  fig, ax = plt.subplots(figsize=(5.5, 4))
  for name, err in results["errors"].items():
    err = np.asarray(err)
    k = np.arange(len(err))
    ax.plot(k, err, **STYLE.get(name, dict(label=name)))
    if "stderr" in results:
      se = np.asarray(results["stderr"][name])
      ax.fill_between(k, err - se, err + se, alpha=0.15, color=STYLE.get(name, {}).get("color"))
  ax.axvline(d, color="grey", lw=0.8, ls=":")
  ax.set_xlabel("in-context examples k")
  ax.set_ylabel("squared error / d")
  ax.set_title(f"In-context linear regression, d = {d}")
  ax.set_ylim(0, 1.25)
  ax.legend(frameon=False, fontsize=8)
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
  fig.savefig(out_path, dpi=150)
  plt.close(fig)
  return out_path
