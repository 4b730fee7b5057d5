"""Softmax vs linear vs lightning LMs: recall accuracy, held-out loss, throughput, loss curves.

  python scripts/figures/fig_lm_efficiency.py --workdir=runs/lm_efficiency_smoke
"""

from jaxllm import figures
from jaxllm.plots import lm_efficiency

if __name__ == "__main__":
  figures.cli(lm_efficiency.plot, "lm_efficiency.png", __doc__)
