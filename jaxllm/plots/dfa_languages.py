"""Next-symbol validity on unseen random DFAs: each attention method beside in-context n-grams.

Drawn from an experiment's results.json; the command line is scripts/figures/fig_dfa_languages.py.
"""

import os

import matplotlib.pyplot as plt


def _bars(ax, values: dict, names, methods, ylabel):
  colors = ["C3" if n in methods else "C7" for n in names]
  bars = ax.bar(range(len(names)), [values[n] for n in names], color=colors)
  ax.bar_label(bars, fmt="%.2f", fontsize=7)
  ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
  ax.set_ylabel(ylabel)


def _curves(ax, results: dict, methods):
  """Training loss per method over the steps, beside the test log-loss of the smoothed in-context
  n-grams and of the true next-symbol distribution (the floor)."""
  for i, m in enumerate(methods):
    curve = results["train"][m]["loss_curve"]
    ax.plot([r[0] for r in curve], [r[1] for r in curve], color=f"C{3 + i}", label=m, lw=1)
  refs = results.get("log_loss", {})
  labels = {"ngram1": "in-context unigram", "ngram2": "in-context bigram",
            "true": "true distribution"}
  for name, style in (("ngram1", ":"), ("ngram2", "--"), ("true", "-")):
    if name in refs:
      ax.axhline(refs[name], color="k", ls=style, lw=0.8,
                 label=f"{labels[name]} ({refs[name]:.2f}, test)")
  ax.set_xlabel("training step")
  ax.set_ylabel("next-token log-loss (nats)")
  ax.legend(fontsize=7, loc="lower left")


def plot(results: dict, out_path: str) -> str:
  """Validity (left) and L1 distance to the true next-symbol distribution (middle) per model and
  per in-context n-gram order (models in red, baselines in grey), and the training loss curves
  (right) when the results hold them."""
  methods = list(results["methods"])
  validity = results["validity"]
  names = methods + [n for n in validity if n not in methods]
  has_curves = all("loss_curve" in results.get("train", {}).get(m, {}) for m in methods)
  panels = (2 if "l1_to_true" in results else 1) + int(has_curves)
  fig, axes = plt.subplots(1, panels, figsize=(panels * (1.0 + 0.8 * len(names)), 3.6),
                           squeeze=False)
  _bars(axes[0, 0], validity, names, methods, "valid next symbols (fraction)")
  axes[0, 0].set_ylim(0, 1.05)
  axes[0, 0].set_title(f"In-context DFA languages ({results['num_prompts']} unseen DFAs)",
                       fontsize=9)
  if has_curves:
    _curves(axes[0, -1], results, methods)
  if "l1_to_true" in results:
    l1 = results["l1_to_true"]
    _bars(axes[0, 1], l1, methods + [n for n in l1 if n not in methods], methods,
          "L1 to the true next-symbol distribution")
    axes[0, 1].set_ylim(0, 2.0)
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
  fig.savefig(out_path, dpi=150)
  plt.close(fig)
  return out_path
