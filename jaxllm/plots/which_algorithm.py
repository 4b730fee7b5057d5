"""Which algorithm does the trained transformer match? (Akyurek et al. 2022, Figs. 2-3).

Drawn from an experiment's results.json; the command line is scripts/figures/fig_which_algorithm.py.
"""

import os

import matplotlib.pyplot as plt
import numpy as np

FLOOR = 1e-5  # log axes: exact agreement (0) is drawn at the floor


def plot(results: dict, out_path: str) -> str:
  models = results["models"]
  if not models:
    raise ValueError("results.json holds no trained model yet")
  names = results["estimators"]
  d = results["n_dims"]
  # One colour per estimator in every panel; OLS dashed, as it lies on ridge when sigma = 0.
  styles = {n: dict(color=f"C{i}", lw=1.2, ls="--" if n == "ols" else "-")
            for i, n in enumerate(names)}
  styles["transformer"] = dict(color="k", lw=2)
  fig, axes = plt.subplots(len(models), 3, figsize=(13, 3.0 * len(models)), squeeze=False)
  for row, (model_name, res) in zip(axes, models.items()):
    for col, (key, label) in enumerate((("spd", "SPD / d"), ("ilwd", "ILWD / d"),
                                        ("errors", "error / d"))):
      ax = row[col]
      curves = {"transformer": res[key]["transformer"]} if key == "errors" else {}
      curves.update({n: res[key][n] for n in names})
      for n, curve in curves.items():
        k = np.arange(1, len(curve))
        ax.semilogy(k, np.maximum(np.asarray(curve[1:], float), FLOOR), label=n, **styles[n])
      ax.axvline(d, color="gray", ls=":", lw=0.8)
      ax.set(xlabel="in-context examples k", ylabel=label)
      ax.set_title(f"depth {res['depth']}, width {res['width']}, "
                   f"sigma^2 = {res['noise_variance']:g}: {label}", fontsize=9)
    row[0].legend(frameon=False, fontsize=7)
    row[2].legend(frameon=False, fontsize=7)
  fig.suptitle(f"d = {d}; model vs GD, ridge (lambda = sigma^2) and OLS on "
               f"{results['num_prompts']} prompts (ILWD: {results['ilwd_prompts']})")
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
  fig.savefig(out_path, dpi=120)
  plt.close(fig)
  return out_path
