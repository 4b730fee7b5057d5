"""Next-symbol validity on unseen random DFAs: each attention method beside in-context n-grams.

  python scripts/figures/fig_dfa_languages.py --workdir=runs/dfa_languages
writes <workdir>/dfa_languages.png from <workdir>/results.json.
"""

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from jaxllm import figures  # noqa: E402


def plot(results: dict, out_path: str) -> str:
  validity = results["validity"]
  names = list(results["methods"]) + [n for n in validity if n not in results["methods"]]
  colors = ["C3" if n in results["methods"] else "C7" for n in names]
  fig, ax = plt.subplots(figsize=(1.0 + 0.8 * len(names), 3.6))
  bars = ax.bar(range(len(names)), [validity[n] for n in names], color=colors)
  ax.bar_label(bars, fmt="%.2f", fontsize=7)
  ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
  ax.set_ylim(0, 1.05)
  ax.set_ylabel("valid next symbols (fraction)")
  ax.set_title(f"In-context DFA languages ({results['num_prompts']} unseen DFAs)", fontsize=9)
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
  fig.savefig(out_path, dpi=150)
  plt.close(fig)
  return out_path


if __name__ == "__main__":
  figures.cli(plot, "dfa_languages.png", __doc__)
