"""Long-context LM: held-out loss by position and the passkey / needle retrieval heatmaps.

  python scripts/figures/fig_lm_long.py --workdir=runs/lm_long_smoke
writes <workdir>/lm_long.png from <workdir>/results.json (experiments/lm_long.py).
"""

from jaxllm import figures
from jaxllm.eval.long_context import draw

if __name__ == "__main__":
  figures.cli(draw, "lm_long.png", __doc__)
