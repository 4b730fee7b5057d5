"""Figure for the active-forgetting study: ICL on seen / unseen tokens and IWL over training, one

Drawn from an experiment's results.json; the command line is scripts/figures/fig_active_forgetting.py.
"""

import matplotlib.pyplot as plt


PANELS = (("icl_seen", "ICL, seen tokens (random labels)"),
          ("icl_unseen", "structural ICL, unseen tokens"),
          ("iwl", "IWL, seen tokens (query not in context)"))


def _chance_lines(ax, results, with_context):
  ax.axhline(results["chance_uniform"], color="gray", lw=0.8, ls=":", label="chance 1/L")
  if with_context:
    ax.axhline(results["chance_context"], color="gray", lw=0.8, ls="--",
               label="any label in context B/N")


def plot(results, out_path):
  """Three panels of accuracy curves (resets of forgetting regimes shaded) and a bar chart."""
  runs = results["runs"]
  fig, axes = plt.subplots(1, 4, figsize=(18, 4.2))
  for ax, (key, title) in zip(axes, PANELS):
    for i, (name, run) in enumerate(runs.items()):
      c = run["curves"]
      ax.plot(c["step"], c[key], "o-", ms=3, color=f"C{i}", label=name)
      if run["forget_every"] and run["last_reset"]:
        ax.axvspan(0, run["last_reset"], color=f"C{i}", alpha=0.06)
    _chance_lines(ax, results, with_context=key != "iwl")
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("training step")
    ax.set_ylim(0, 1.02)
  axes[0].set_ylabel("accuracy")
  axes[0].legend(fontsize=7)
  ax = axes[3]
  names = list(runs)
  width = 0.8 / len(PANELS)
  for j, (key, _) in enumerate(PANELS):
    ax.bar([p + (j - 1) * width for p in range(len(names))],
           [runs[n][f"final_{key}"] for n in names], width, label=key)
  ax.axhline(results["chance_uniform"], color="gray", lw=0.8, ls=":")
  ax.set_xticks(range(len(names)), names)
  ax.set_title("final accuracy (shading: steps with resets)", fontsize=10)
  ax.set_ylim(0, 1.02)
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(out_path, dpi=120)
  plt.close(fig)
  return out_path
