"""Layer probes matched to Iterative Newton and GD (Fu et al. 2023, Figs. 2-3).

Drawn from an experiment's results.json; the command line is scripts/figures/fig_higher_order.py.
"""

import os

import matplotlib.pyplot as plt
import numpy as np


def plot(results: dict, out_path: str) -> str:
  contexts = results["probes"]["context"]
  fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
  for i, (name, res) in enumerate(contexts.items()):
    layers = np.arange(len(res["best_newton_iter"]))
    axes[0].plot(layers, res["best_newton_iter"], "o-", color=f"C{i}", label=f"Newton, {name}")
    axes[1].semilogy(layers, res["best_gd_steps"], "s--", color=f"C{i}", label=f"GD, {name}")
    axes[2].semilogy(layers, res["layer_mse"], "o-", color=f"C{i}", label=f"layer probes, {name}")
    axes[2].axhline(max(res["least_squares_mse"], 1e-6), color=f"C{i}", ls=":", lw=0.8)
  axes[0].set(xlabel="layer (0 = embedding)", ylabel="best-matching Newton iteration")
  axes[1].set(xlabel="layer (0 = embedding)", ylabel="best-matching GD steps")
  axes[2].set(xlabel="layer (0 = embedding)", ylabel="probe error / d (dotted: least squares)")
  for ax in axes:
    ax.legend(frameon=False, fontsize=8)
  fig.suptitle(f"d = {results['n_dims']}, condition number {results['condition_number']:g}")
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
  fig.savefig(out_path, dpi=150)
  plt.close(fig)
  return out_path
