"""Error vs context length for the Bayesian prism: one panel per (training prior, test family).

Drawn from an experiment's results.json; the command line is scripts/figures/fig_bayesian_prism.py.
"""

import os

import matplotlib.pyplot as plt
import numpy as np

STYLE = {
    "transformer": dict(color="C3", lw=2.2, label="Transformer"),
    "posterior_mean": dict(color="k", ls="--", label="Posterior mean (training prior)"),
    "ridge": dict(color="C2", ls=":", label="Ridge, lambda = sigma^2"),
    "least_squares": dict(color="C0", ls="-.", label="Least squares"),
    "nuclear_norm": dict(color="k", ls="--", label="Nuclear-norm minimisation"),
}


def plot(results: dict, out_path: str) -> str:
  panels = [(prior, fam, ev) for prior, run in results["runs"].items()
            for fam, ev in run["eval"].items()]
  fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
  for ax, (prior, fam, ev) in zip(axes[0], panels):
    for name, err in ev["errors"].items():
      ax.plot(np.arange(len(err)), err, **STYLE.get(name, dict(lw=1, label=name.replace("_", " "))))
    feature_family = fam in ("fourier", "monomial")
    if not feature_family:
      ax.axvline(ev.get("n_dims", results["n_dims"]), color="grey", lw=0.8, ls=":")
    ax.set_ylim(0, 1.25)
    ax.set_xlabel("in-context examples k")
    ax.set_ylabel("squared error / E y^2" if feature_family else "squared error / d")
    ax.set_title(f"trained on {prior}, tested on {fam}", fontsize=9)
  for ax in axes[0]:
    ax.legend(frameon=False, fontsize=6)
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
  fig.savefig(out_path, dpi=150)
  plt.close(fig)
  return out_path
