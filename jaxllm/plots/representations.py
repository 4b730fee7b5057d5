"""In-context learning with a representation (Guo et al. 2023, error curves and layer probes).

Drawn from an experiment's results.json; the command line is scripts/figures/fig_representations.py.
"""

import matplotlib.pyplot as plt
import numpy as np

CURVES = (("transformer", "transformer", "k", "-"),
          ("ridge_phi", "ridge on Phi(x) (Bayes)", "C1", "-"),
          ("least_squares", "least squares, raw x", "C0", "--"),
          ("least_squares_affine", "least squares, raw (x, 1)", "C2", "--"),
          ("averaging", "averaging", "C4", ":"), ("knn3", "3-NN", "C5", ":"))


def plot(results: dict, out_path: str) -> str:
  fig, axes = plt.subplots(1, 3, figsize=(14, 4))
  ax = axes[0]
  for name, label, color, style in CURVES:
    if name not in results["errors"]:
      continue
    err, se = np.asarray(results["errors"][name]), np.asarray(results["stderr"][name])
    ks = np.arange(len(err))
    ax.semilogy(ks, err, style, color=color, label=label, lw=2 if name == "transformer" else 1.2)
    ax.fill_between(ks, np.maximum(err - se, 1e-4), err + se, color=color, alpha=0.15, lw=0)
  ax.axvline(results["rep_dim"], color="grey", lw=0.6, ls=":")
  ax.set(xlabel="in-context examples k", ylabel="squared error / E y^2", ylim=(1e-3, 3))
  ax.legend(frameon=False, fontsize=8, loc="lower left")

  probe = results["probes"]
  layers = np.arange(probe["layers"])
  for ax in axes[1:]:
    ax.set_xticks(layers)
  axes[1].plot(layers, probe["phi"], "o-", color="k", label="trained")
  if "phi_untrained" in probe:
    axes[1].plot(layers, probe["phi_untrained"], "s--", color="grey", label="untrained")
  axes[1].set(xlabel="layer (0 = embedding)", ylabel="Phi(x) probe error / Var Phi(x)",
              ylim=(0, None))
  axes[1].legend(frameon=False, fontsize=8)

  for i, (name, res) in enumerate(probe["context"].items()):
    axes[2].plot(layers, res["ridge_phi"], "o-", color=f"C{i}", label=f"ridge-on-Phi pred., {name}")
    axes[2].plot(layers, res["y"], "s:", color=f"C{i}", label=f"y, {name}")
  axes[2].set(xlabel="layer (0 = embedding)", ylabel="probe error / target variance",
              ylim=(0, None))
  axes[2].legend(frameon=False, fontsize=8)
  fig.suptitle(f"y = w . Phi(x) / sqrt(D) + noise: d = {results['n_dims']}, D = "
               f"{results['rep_dim']}, Phi depth {results['phi_depth']}, noise "
               f"{results['noise_std']:g}, {results['train_steps']} steps")
  fig.tight_layout()
  fig.savefig(out_path, dpi=150)
  plt.close(fig)
  return out_path
