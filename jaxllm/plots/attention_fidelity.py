"""Recall vs density per method, one panel per input, from attention_fidelity's results.json."""

import matplotlib.pyplot as plt



def plot(results: dict, out_path: str) -> str:
  """Writes the figure to ``out_path``: markers per method, one point per length."""
  rows = results["rows"]
  inputs = list(dict.fromkeys(r["input"] for r in rows))
  methods = list(dict.fromkeys(r["method"] for r in rows))
  fig, axes = plt.subplots(1, len(inputs), figsize=(4.6 * len(inputs), 3.8), squeeze=False)
  for ax, name in zip(axes[0], inputs):
    for i, m in enumerate(methods):
      pts = sorted((r["density"], r["recall"], r["length"]) for r in rows
                   if r["input"] == name and r["method"] == m)
      if not pts:
        continue
      xs, ys, ls = zip(*pts)
      ax.plot(xs, ys, marker="os^vDP*Xh"[i % 9], ls="", color=f"C{i}", label=m)
      for x, y, length in pts:
        ax.annotate(f"{length // 1024}k" if length >= 1024 else str(length), (x, y),
                    fontsize=6, xytext=(3, 2), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("density (computed causal pairs / all)")
    ax.set_ylabel("recall (dense softmax mass kept)")
    ax.set_title(f"{name} inputs", fontsize=9)
    ax.grid(alpha=0.3)
  axes[0][0].legend(fontsize=7, loc="lower right")
  fig.tight_layout()
  fig.savefig(out_path, dpi=130)
  plt.close(fig)
  return out_path
