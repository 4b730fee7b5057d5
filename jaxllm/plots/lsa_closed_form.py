"""Figure for the ZFB closed-form study: learned matrix vs Gamma^-1, error vs prompt length.

Drawn from an experiment's results.json; the command line is scripts/figures/fig_lsa_closed_form.py.
"""

import matplotlib.pyplot as plt
import numpy as np


def plot(results, out_path):
  """Draws three panels (learned matrix, Gamma^-1, normalised error vs M) and saves a PNG."""
  learned = np.asarray(results["learned_matrix"])
  gamma_inv = np.asarray(results["gamma_inv"])
  fig, axes = plt.subplots(1, 3, figsize=(14, 4))
  vmax = np.abs(gamma_inv).max()
  for ax, mat, title in ((axes[0], learned, "learned u W^KQ_11^T"),
                         (axes[1], gamma_inv, "Gamma^-1 (closed form)")):
    im = ax.imshow(mat, cmap="RdBu_r", vmin=-vmax, vmax=vmax)
    ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.046)
  ax = axes[2]
  for i, (name, rows) in enumerate(results["curves"].items()):
    color = f"C{i}"
    ax.plot(rows["num_examples"], rows["normalized_error"], "o", color=color, label=name)
    ax.plot(rows["num_examples"], rows["normalized_formula"], "-", color=color)
  ax.set_xscale("log")
  ax.set_yscale("log")
  ax.set_xlabel("prompt length M")
  ax.set_ylabel("error / E[y^2]  (dots: trained, lines: formula)")
  ax.set_title(f"max entry error {results['max_entry_error_relative']:.3f}")
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(out_path, dpi=120)
  plt.close(fig)
  return out_path
