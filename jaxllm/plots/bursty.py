"""Figure for the bursty-classification study: ICL / IWL accuracy over training, and the sweep.

Drawn from an experiment's results.json; the command line is scripts/figures/fig_bursty.py.
"""

import matplotlib.pyplot as plt


def plot(results, out_path):
  """Left: accuracy curves per run (solid ICL, dashed IWL). Right: final ICL/IWL per run."""
  runs = results["runs"]
  fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
  ax = axes[0]
  for i, (name, run) in enumerate(runs.items()):
    c = run["curves"]
    ax.plot(c["step"], c["icl"], "-", color=f"C{i % 10}", label=f"{name} ICL")
    ax.plot(c["step"], c["iwl"], "--", color=f"C{i % 10}", label=f"{name} IWL")
  first = next(iter(runs.values()))
  ax.axhline(first["chance_context"], color="gray", lw=0.8, ls=":")
  ax.axhline(first["chance_uniform"], color="gray", lw=0.8, ls=":")
  ax.set_xlabel("training step")
  ax.set_ylabel("accuracy")
  ax.set_ylim(0, 1.02)
  ax.legend(fontsize=7, ncol=2)
  ax = axes[1]
  names = list(runs)
  pos = range(len(names))
  ax.bar([p - 0.2 for p in pos], [runs[n]["final_icl"] for n in names], 0.4, label="ICL")
  ax.bar([p + 0.2 for p in pos], [runs[n]["final_iwl"] for n in names], 0.4, label="IWL")
  ax.set_xticks(list(pos), names, rotation=45, ha="right", fontsize=7)
  ax.set_ylabel("final accuracy")
  ax.set_ylim(0, 1.02)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(out_path, dpi=120)
  plt.close(fig)
  return out_path
